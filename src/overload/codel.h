// Codel: tells a pool when its wait queue is standing (CoDel, Nichols and Jacobson 2012, as
// adapted for request queues: Facebook's "adaptive LIFO with CoDel"). A queue that drains now and
// then is fine, however long it gets; a queue in which even the luckiest waiter of a whole
// interval waited longer than the target is standing, and waiting longer only makes every
// answer late. While it stands, the pool serves newest first and fails waiters older than a short
// deadline, so fresh requests succeed while stale ones fail fast instead of all timing out.
// Pure (fed a clock by its caller); not thread-safe: the owning Pool guards it with its mutex.
#pragma once

#include "common/clock.h"

namespace sluice::overload {

class Codel {
 public:
  // A target of zero turns it off: the queue never counts as standing.
  Codel(Millis target, Millis interval) : target_(target), interval_(interval) {}
  void configure(Millis target, Millis interval) {
    target_ = target;
    interval_ = interval;
  }

  // A waiter was served at `t` after waiting `waited` (the janitor also reports the oldest
  // waiter's wait so far, so that a queue nobody leaves counts too). Returns whether the queue
  // is standing now: every sample for at least one interval was above the target.
  bool sample(TimePoint t, Millis waited) {
    if (target_.count() <= 0 || waited < target_) {
      // Someone went through quickly: whatever queue there was drains.
      above_since_ = {};
      return standing_ = false;
    }
    if (above_since_ == TimePoint{}) above_since_ = t;
    if (t - above_since_ >= interval_) standing_ = true;
    return standing_;
  }
  // The queue emptied: nothing stands.
  void onEmpty() {
    above_since_ = {};
    standing_ = false;
  }
  bool standing() const { return standing_; }
  Millis target() const { return target_; }

 private:
  Millis target_;
  Millis interval_;
  TimePoint above_since_{};  // since when every sample was above the target ({}: not)
  bool standing_ = false;
};

}  // namespace sluice::overload
