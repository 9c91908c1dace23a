#include "net/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace sluice::net {

namespace {
constexpr int kMaxEvents = 256;
constexpr uint32_t kReadEvents = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr uint32_t kWriteEvents = EPOLLOUT | EPOLLHUP | EPOLLERR;
}  // namespace

EventLoop::EventLoop(int index) : index_(index) {
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wakefd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wakefd_ < 0) {
    throw std::runtime_error(std::string("cannot create an event loop: ") + std::strerror(errno));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake-up descriptor
  ::epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
}

EventLoop::~EventLoop() {
  join();
  // Whatever is still registered or scheduled dies with the loop (after its thread is gone).
  timers_.clear();
  posted_.clear();
  for (Slot* s : dead_) delete s;
  dead_.clear();
  while (live_ != nullptr) {  // their descriptors belong to their (now released) owners
    Slot* next = live_->next;
    delete live_;
    live_ = next;
  }
  ::close(wakefd_);
  ::close(epfd_);
}

void EventLoop::post(std::function<void()> task) {
  bool first;
  {
    std::lock_guard lock(mu_);
    first = posted_.empty();
    posted_.push_back(std::move(task));
  }
  if (first) wake();
}

void EventLoop::wake() {
  uint64_t one = 1;
  ssize_t n = ::write(wakefd_, &one, sizeof one);
  (void)n;  // EAGAIN: the counter is already non-zero, the loop will wake anyway
}

EventLoop::Slot* EventLoop::add(int fd, IoWatcher* watcher, std::shared_ptr<void> owner) {
  auto* slot = new Slot;
  slot->fd = fd;
  slot->watcher = watcher;
  slot->owner = std::move(owner);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = slot;
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    // Not a pollable descriptor (cannot happen for sockets): report it as an error on first use.
    slot->readable = slot->writable = true;
  }
  slot->next = live_;
  if (live_ != nullptr) live_->prev = slot;
  live_ = slot;
  return slot;
}

void EventLoop::remove(Slot* slot) {
  if (slot == nullptr || slot->dead) return;
  epoll_event ev{};
  ::epoll_ctl(epfd_, EPOLL_CTL_DEL, slot->fd, &ev);
  slot->dead = true;
  slot->watcher = nullptr;
  if (slot->prev != nullptr) slot->prev->next = slot->next;
  if (slot->next != nullptr) slot->next->prev = slot->prev;
  if (live_ == slot) live_ = slot->next;
  slot->prev = slot->next = nullptr;
  dead_.push_back(slot);  // its owner reference goes at the end of this turn
}

void EventLoop::wantRead(Slot* slot) {
  if (slot->dead) return;
  slot->want_read = true;
  if (slot->readable && !slot->queued) {
    slot->queued = true;
    ready_.push_back(slot);
  }
}

void EventLoop::wantWrite(Slot* slot) {
  if (slot->dead) return;
  slot->want_write = true;
  if (slot->writable && !slot->queued) {
    slot->queued = true;
    ready_.push_back(slot);
  }
}

// Dead slots are freed at the end of a turn, except those still in the ready list (queued for
// the next turn), which go at the end of that one.
void EventLoop::freeDead() {
  size_t keep = 0;
  for (Slot* s : dead_) {
    if (s->queued) {
      dead_[keep++] = s;
    } else {
      delete s;
    }
  }
  dead_.resize(keep);
}

EventLoop::TimerId EventLoop::runAfter(std::chrono::milliseconds delay, std::function<void()> fn) {
  TimerId id = next_timer_++;
  TimePoint at = now() + delay;
  timers_.emplace(std::make_pair(at, id), std::move(fn));
  timer_at_.emplace(id, at);
  return id;
}

void EventLoop::cancelTimer(TimerId id) {
  auto it = timer_at_.find(id);
  if (it == timer_at_.end()) return;
  timers_.erase({it->second, id});
  timer_at_.erase(it);
}

void EventLoop::release(TimerId& timer, Slot*& slot, int& fd) {
  if (timer != 0) cancelTimer(timer);
  timer = 0;
  if (slot != nullptr) remove(slot);
  slot = nullptr;
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void EventLoop::start() {
  thread_ = std::thread([this] {
    thread_id_ = std::this_thread::get_id();
    run();
  });
}

void EventLoop::stop() {
  stop_ = true;
  wake();
}

void EventLoop::drainAndJoin(std::chrono::milliseconds limit) {
  draining_ = true;
  wake();
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (thread_.joinable() && !stop_ && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop();
  join();
}

void EventLoop::join() {
  if (thread_.joinable()) thread_.join();
}

int EventLoop::nextTimeoutMs() const {
  if (timers_.empty()) return -1;
  auto left = timers_.begin()->first.first - now();
  if (left <= TimePoint::duration::zero()) return 0;
  // Round up, so that a timer is never run before its time.
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > 60000 ? 60000 : int(ms);
}

void EventLoop::run() {
  while (!stop_) {
    int timeout = ready_.empty() ? nextTimeoutMs() : 0;
    if (draining_) {
      bool idle;
      {
        std::lock_guard lock(mu_);
        idle = posted_.empty();
      }
      if (idle && live_ == nullptr && timers_.empty() && ready_.empty()) {
        stop_ = true;
        break;
      }
      if (timeout < 0 || timeout > 5) timeout = 5;  // re-check the drain condition
    }
    turn(timeout);
  }
  for (Slot* s : ready_) s->queued = false;
  ready_.clear();
  freeDead();
}

void EventLoop::turn(int timeout_ms) {
  epoll_event events[kMaxEvents];
  int n = ::epoll_wait(epfd_, events, kMaxEvents, timeout_ms);
  bool posted = false;
  for (int i = 0; i < n; ++i) {
    auto* slot = static_cast<Slot*>(events[i].data.ptr);
    if (slot == nullptr) {
      posted = true;
      continue;
    }
    if (slot->dead) continue;
    uint32_t e = events[i].events;
    if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) slot->hangup = true;
    if (e & kReadEvents) {
      slot->readable = true;
      if (slot->want_read) {
        slot->want_read = false;
        slot->watcher->onReadable();
        if (slot->dead) continue;
      }
    }
    if (e & kWriteEvents) {
      slot->writable = true;
      if (slot->want_write) {
        slot->want_write = false;
        slot->watcher->onWritable();
      }
    }
  }
  if (posted) {
    uint64_t count;
    ssize_t r = ::read(wakefd_, &count, sizeof count);
    (void)r;
  }
  runPosted();
  runTimers();
  runReady();
  freeDead();
}

void EventLoop::runPosted() {
  {
    std::lock_guard lock(mu_);
    if (posted_.empty()) return;
    running_.swap(posted_);
  }
  for (auto& task : running_) task();
  running_.clear();
}

void EventLoop::runTimers() {
  if (timers_.empty()) return;
  TimePoint t = now();
  while (!timers_.empty() && timers_.begin()->first.first <= t) {
    auto node = timers_.extract(timers_.begin());
    timer_at_.erase(node.key().second);
    node.mapped()();
  }
}

// Slots whose wanted read or write became possible outside an epoll event (the readiness was
// already known). A slot added while this batch runs waits for the next turn, so one busy
// connection cannot starve the others.
void EventLoop::runReady() {
  if (ready_.empty()) return;
  running_ready_.swap(ready_);
  for (Slot* slot : running_ready_) {
    slot->queued = false;
    if (slot->dead) continue;
    if (slot->want_read && slot->readable) {
      slot->want_read = false;
      slot->watcher->onReadable();
      if (slot->dead) continue;
    }
    if (slot->want_write && slot->writable) {
      slot->want_write = false;
      slot->watcher->onWritable();
      if (slot->dead) continue;
    }
    // Still waiting (readiness went away meanwhile): the next edge delivers it.
  }
  running_ready_.clear();
}

}  // namespace sluice::net
