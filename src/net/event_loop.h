// EventLoop: one worker thread running its own epoll reactor. Every client and server
// connection belongs to exactly one loop and is touched only from its thread; other threads reach
// it with post(). Owned by the App; lives for the whole process.
//
// A connection registers its descriptor once (edge-triggered, read and write) and then says when
// it wants to read or write; the loop remembers readiness it has seen, so a read that is wanted
// while data is known to be waiting runs at once (from the ready list, later in the same turn)
// and a wait costs no syscall. There is no allocation, lock or type-erased handler per I/O: this
// is what the hot path of a pooler is made of (see docs/architecture.md, "What makes the hot path
// fast"). Timers are a small ordered map (logins and timeouts, not the data path); posted tasks
// are a locked vector and an eventfd.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/clock.h"

namespace sluice::net {

// Implemented by whatever owns a registered descriptor. Called on the owning loop only.
class IoWatcher {
 public:
  virtual ~IoWatcher() = default;
  virtual void onReadable() = 0;  // a wanted read can proceed (data, EOF or an error is there)
  virtual void onWritable() = 0;  // a wanted write can proceed (room, or an error is there)
};

class EventLoop {
 public:
  // One registration of a descriptor with this loop. Owned by the loop; the watcher keeps a
  // pointer until it calls remove(), after which the slot is dead and freed at the end of the
  // loop's turn (events already fetched for it are dropped, never delivered to a stale watcher).
  struct Slot {
    int fd = -1;
    IoWatcher* watcher = nullptr;
    std::shared_ptr<void> owner;  // keeps the watcher alive while registered
    Slot* prev = nullptr;         // the loop's list of registered slots (intrusive: no node
    Slot* next = nullptr;         // allocation per connection)
    bool readable = false;        // seen readable and not since drained
    // The peer closed or reset (EPOLLRDHUP/HUP/ERR seen): EOF or the error stays readable for
    // good and no further edge will announce it, so the slot never counts as drained again.
    bool hangup = false;
    bool writable = false;
    bool want_read = false;
    bool want_write = false;
    bool queued = false;  // in the ready list
    bool dead = false;
  };

  explicit EventLoop(int index);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  int index() const { return index_; }
  bool inLoop() const { return std::this_thread::get_id() == thread_id_; }

  // Any thread.
  void post(std::function<void()> task);

  // Loop thread only.
  Slot* add(int fd, IoWatcher* watcher, std::shared_ptr<void> owner);
  void remove(Slot* slot);  // deregisters; the descriptor stays open (the caller closes it)
  // Calls onReadable() once the descriptor is readable: later in this turn if it already is.
  void wantRead(Slot* slot);
  void wantWrite(Slot* slot);
  // The last read or write found nothing (EAGAIN) or was short: wait for the next edge. A short
  // read after a hang-up is not empty: the EOF (or error) behind the data is still to be read, and
  // its edge has already been delivered with the data's.
  static void drained(Slot* slot) {
    if (!slot->hangup) slot->readable = false;
  }
  // Bytes may be waiting though no edge will say so (a reader left them): try the next read.
  static void mayBeReadable(Slot* slot) { slot->readable = true; }
  static void full(Slot* slot) { slot->writable = false; }
  using TimerId = uint64_t;
  TimerId runAfter(std::chrono::milliseconds delay, std::function<void()> fn);
  void cancelTimer(TimerId id);
  // A connection's end: cancels its timer, deregisters and closes its descriptor (any of them
  // may already be gone), and resets all three.
  void release(TimerId& timer, Slot*& slot, int& fd);

  void start();
  void stop();  // ends the loop at its next turn
  // Lets the loop run until nothing is registered, scheduled or posted, at most `limit`, then
  // stops it and joins, so that no connection outlives its loop's thread.
  void drainAndJoin(std::chrono::milliseconds limit);
  void join();

 private:
  void run();
  void turn(int timeout_ms);
  void runPosted();
  void runTimers();
  void runReady();
  void freeDead();
  int nextTimeoutMs() const;
  void wake();

  int index_;
  int epfd_ = -1;
  int wakefd_ = -1;  // eventfd: posted work is waiting
  std::thread thread_;
  std::thread::id thread_id_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> draining_{false};

  std::mutex mu_;
  std::vector<std::function<void()>> posted_;   // GUARDED_BY(mu_)
  std::vector<std::function<void()>> running_;  // loop thread: the batch being run

  // Loop thread only.
  Slot* live_ = nullptr;      // registered slots, most recent first
  std::vector<Slot*> ready_;  // slots whose wanted read or write can run now
  std::vector<Slot*> running_ready_;
  std::vector<Slot*> dead_;  // removed this turn; freed at its end
  std::map<std::pair<TimePoint, TimerId>, std::function<void()>> timers_;
  std::unordered_map<TimerId, TimePoint> timer_at_;
  TimerId next_timer_ = 1;
};

}  // namespace sluice::net
