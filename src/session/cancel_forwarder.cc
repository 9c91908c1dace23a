#include "session/cancel_forwarder.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cerrno>

namespace sluice::session {

namespace {
constexpr std::chrono::milliseconds kCancelTimeout{10000};
}  // namespace

void CancelForwarder::start(net::EventLoop* loop, const sockaddr_storage& peer, socklen_t peer_len,
                            std::string packet, std::function<void()> done) {
  std::shared_ptr<CancelForwarder> f(new CancelForwarder(loop, std::move(packet), std::move(done)));
  // A failure is reported from a fresh task, never from inside the caller.
  auto fail = [loop, f] { loop->post([f] { f->finish(); }); };
  f->fd_ = ::socket(peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (f->fd_ < 0) return fail();
  int rc = ::connect(f->fd_, reinterpret_cast<const sockaddr*>(&peer), peer_len);
  if (rc != 0 && errno != EINPROGRESS) return fail();
  f->slot_ = loop->add(f->fd_, f.get(), f);
  f->timer_ = loop->runAfter(kCancelTimeout, [f] { f->finish(); });
  loop->wantWrite(f->slot_);
}

void CancelForwarder::onWritable() {
  if (sent_ || fd_ < 0) return;
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return finish();
  ssize_t n = ::send(fd_, packet_.data(), packet_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n != ssize_t(packet_.size())) return finish();  // 16 bytes into an empty socket
  sent_ = true;
  loop_->wantRead(slot_);
}

void CancelForwarder::onReadable() {
  char c;
  ssize_t n = ::recv(fd_, &c, 1, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    net::EventLoop::drained(slot_);
    loop_->wantRead(slot_);
    return;
  }
  finish();  // PostgreSQL closes the connection once it has processed the request
}

void CancelForwarder::finish() {
  loop_->release(timer_, slot_, fd_);
  if (done_) {
    auto done = std::move(done_);
    done_ = nullptr;
    done();
  }
}

}  // namespace sluice::session
