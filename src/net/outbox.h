// Outbox: the bytes a connection still has to write, and the write-now-or-queue policy of the
// hot path. A write goes straight to the socket with one non-blocking send() when nothing is
// queued, so a relayed message is never copied and costs no asio operation; only what the
// kernel does not take is copied here and waits for the socket to become writable. An empty
// Outbox holds no memory, so idle connections cost nothing for it.
// Owned by one connection on one loop; not thread-safe. Pure apart from send(2).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sluice::net {

class Outbox {
 public:
  enum class Result {
    kDone,     // everything is written
    kBlocked,  // bytes are queued: wait for writability, then flush()
    kError,    // the socket failed (error() says how); queued bytes are dropped
  };

  // Sends `bytes` now if nothing is queued (queueing what the socket does not take), else
  // queues them behind the rest.
  Result write(int fd, std::string_view bytes);
  // Sends queued bytes.
  Result flush(int fd);
  // Queues without trying the socket (a write is already waiting for writability).
  void queue(std::string_view bytes) { buf_.append(bytes); }

  size_t pending() const { return buf_.size() - sent_; }
  bool empty() const { return pending() == 0; }
  int error() const { return error_; }  // errno of the failed send, for kError
  void clear();

 private:
  Result sendFrom(int fd, const char* p, size_t n, size_t* written);

  std::string buf_;  // queued bytes are [sent_, size)
  size_t sent_ = 0;
  int error_ = 0;
};

}  // namespace sluice::net
