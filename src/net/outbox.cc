#include "net/outbox.h"

#include <sys/socket.h>

#include <cerrno>

#include "net/sys.h"

namespace sluice::net {

namespace {
// A queue that grew past this (a slow reader of a large result) gives its memory back once it
// drains, instead of keeping its peak for the life of the connection.
constexpr size_t kKeepCapacity = size_t{64} * 1024;
}  // namespace

Outbox::Result Outbox::sendFrom(int fd, const char* p, size_t n, size_t* written) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = sysSend(fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      done += size_t(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    *written = done;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Result::kBlocked;
    error_ = r < 0 ? errno : EPIPE;
    return Result::kError;
  }
  *written = done;
  return Result::kDone;
}

Outbox::Result Outbox::write(int fd, std::string_view bytes) {
  if (error_ != 0) return Result::kError;
  if (!empty()) {
    queue(bytes);
    return flush(fd);
  }
  size_t written = 0;
  Result r = sendFrom(fd, bytes.data(), bytes.size(), &written);
  if (r == Result::kBlocked) {
    clear();
    buf_.append(bytes.substr(written));
  }
  return r;
}

Outbox::Result Outbox::flush(int fd) {
  if (error_ != 0) return Result::kError;
  if (empty()) return Result::kDone;
  size_t written = 0;
  Result r = sendFrom(fd, buf_.data() + sent_, pending(), &written);
  sent_ += written;
  if (r == Result::kError) {
    clear();
  } else if (empty()) {
    clear();
  } else if (sent_ > buf_.size() / 2) {
    buf_.erase(0, sent_);  // keep the queue from creeping through memory
    sent_ = 0;
  }
  return r;
}

void Outbox::clear() {
  if (buf_.capacity() > kKeepCapacity) {
    std::string().swap(buf_);
  } else {
    buf_.clear();
  }
  sent_ = 0;
}

}  // namespace sluice::net
