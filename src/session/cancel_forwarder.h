// CancelForwarder: sends one CancelRequest to PostgreSQL on a connection of its own (to the same
// address as the server connection it concerns) and calls `done` once PostgreSQL has closed that
// connection, the attempt failed, or 10 s passed. Lives on one loop, owned by its registration.
#pragma once

#include <sys/socket.h>

#include <functional>
#include <memory>
#include <string>

#include "net/event_loop.h"

namespace sluice::session {

class CancelForwarder : public net::IoWatcher,
                        public std::enable_shared_from_this<CancelForwarder> {
 public:
  // `peer` is the server connection's address (getpeername of its socket).
  static void start(net::EventLoop* loop, const sockaddr_storage& peer, socklen_t peer_len,
                    std::string packet, std::function<void()> done);

  void onReadable() override;  // PostgreSQL answered (it only ever closes): finished
  void onWritable() override;  // connected: send the request

 private:
  CancelForwarder(net::EventLoop* loop, std::string packet, std::function<void()> done)
      : loop_(loop), packet_(std::move(packet)), done_(std::move(done)) {}
  void finish();

  net::EventLoop* loop_;
  std::string packet_;
  std::function<void()> done_;
  int fd_ = -1;
  net::EventLoop::Slot* slot_ = nullptr;
  net::EventLoop::TimerId timer_ = 0;
  bool sent_ = false;
};

}  // namespace sluice::session
