// AdaptiveLimit: how many server connections a pool should have in use at once
// (pool_size_mode = adaptive), learned from how long transactions take. A gradient limiter in the
// manner of Netflix's concurrency-limits (Gradient2) with Vegas' idea of a base latency: while
// transactions take about as long as the least they take, PostgreSQL serves without queueing and
// the limit may grow (by about its square root per window); when they take longer, work is
// queueing inside PostgreSQL (CPU, locks, I/O) and the limit shrinks in proportion. The limit
// starts at the minimum, so that the first windows measure the base latency: the lowest window
// average seen. Every kProbeEvery one window runs at the minimum again and its average becomes
// the base, so that a database that became slower for good is measured again. Pure (fed a clock);
// not thread-safe: the owning Pool guards it with its mutex.
#pragma once

#include <algorithm>
#include <cmath>

#include "common/clock.h"

namespace sluice::overload {

class AdaptiveLimit {
 public:
  static constexpr Millis kWindow{200};   // one decision per window ...
  static constexpr int kMinSamples = 10;  // ... with at least this many transactions
  static constexpr Millis kProbeEvery{30000};
  static constexpr double kTolerance = 1.5;  // latency up to 1.5x the base counts as no queueing
  static constexpr double kSmoothing = 0.3;  // how far one window moves the limit

  AdaptiveLimit(int min, int max) { configure(min, max); }
  void configure(int min, int max) {
    min_ = std::max(1, min);
    max_ = std::max(min_, max);
    if (limit_ == 0) limit_ = min_;  // start low: the first windows measure the base latency
    limit_ = std::clamp(limit_, double(min_), double(max_));
  }

  // A transaction held a server for `seconds`, ending at `t`, with `in_use` servers lent out.
  void sample(TimePoint t, double seconds, int in_use) {
    // A probe measures at the minimum concurrency: transactions that ran beside more
    // (started before the limit came down) do not count.
    if (probing_ && in_use > min_) return;
    if (window_start_ == TimePoint{}) window_start_ = t;
    sum_ += seconds;
    ++count_;
    peak_in_use_ = std::max(peak_in_use_, in_use);
    if (t - window_start_ < kWindow || count_ < kMinSamples) return;
    double avg = sum_ / count_;
    window_start_ = t;
    sum_ = 0;
    count_ = 0;
    int peak = peak_in_use_;
    peak_in_use_ = 0;
    if (probing_) {
      // The base again, as PostgreSQL serves now without queueing; then back to the old limit.
      probing_ = false;
      base_ = avg;
      base_since_ = t;
      limit_ = saved_limit_;
      return;
    }
    if (base_ <= 0) {
      base_ = avg;
      base_since_ = t;
    } else {
      base_ = std::min(base_, avg);
    }
    double gradient = std::clamp(kTolerance * base_ / avg, 0.5, 1.0);
    double target = limit_ * gradient;
    // Grow only when the limit was what held the pool back (its servers were all in use).
    if (gradient >= 1.0 && peak >= int(limit_)) target += std::sqrt(limit_);
    limit_ = std::clamp(limit_ + kSmoothing * (target - limit_), double(min_), double(max_));
    if (t - base_since_ >= kProbeEvery) {
      // Probe (as BBR's ProbeRTT does): one window at the minimum, so that a database that
      // became slower for good is not held to a base it no longer has.
      probing_ = true;
      saved_limit_ = limit_;
      limit_ = min_;
    }
  }

  int limit() const { return int(std::lround(limit_)); }
  double baseSeconds() const { return base_; }

 private:
  int min_ = 1;
  int max_ = 1;
  double limit_ = 0;
  double base_ = 0;  // seconds
  TimePoint base_since_{};
  bool probing_ = false;
  double saved_limit_ = 0;
  TimePoint window_start_{};
  double sum_ = 0;
  int count_ = 0;
  int peak_in_use_ = 0;
};

}  // namespace sluice::overload
