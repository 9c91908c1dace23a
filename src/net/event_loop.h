// EventLoop: one worker thread running one single-threaded asio::io_context. Every client and
// server connection belongs to exactly one loop and is touched only from its thread; other
// threads reach it with post(). Owned by the App; lives for the whole process.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <functional>
#include <thread>
#include <utility>

namespace sluice::net {

class EventLoop {
 public:
  // Sockets and timers of a loop are used only on its thread, so asio's per-descriptor locks are
  // switched off (UNSAFE_IO); the scheduler stays locked because other threads post().
  explicit EventLoop(int index)
      : index_(index), ctx_(ASIO_CONCURRENCY_HINT_UNSAFE_IO), guard_(asio::make_work_guard(ctx_)) {}
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  int index() const { return index_; }
  asio::io_context& context() { return ctx_; }
  bool inLoop() const { return std::this_thread::get_id() == thread_id_; }

  template <typename F>
  void post(F&& f) {
    asio::post(ctx_, std::forward<F>(f));
  }

  void start() {
    thread_ = std::thread([this] {
      thread_id_ = std::this_thread::get_id();
      ctx_.run();
    });
  }
  void stop() {
    guard_.reset();
    ctx_.stop();
  }
  // Lets the loop run until its outstanding work is done (sockets closed, handlers run), at
  // most `limit`, then stops it; so that no handler holding a connection outlives the loop.
  void drainAndJoin(std::chrono::milliseconds limit) {
    guard_.reset();
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!ctx_.stopped() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ctx_.stop();
    join();
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  int index_;
  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
  std::thread::id thread_id_;
};

}  // namespace sluice::net
