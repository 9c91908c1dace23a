// The socket calls of the data path, made with syscall(2) directly. glibc's recv() and send() are
// thread-cancellation points and wrap every call in enabling and disabling asynchronous
// cancellation (about 150 instructions per transaction in callgrind); sluice never cancels
// threads, so it skips that. Same results and errno as recv()/send(). Thread-safe.
#pragma once

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>

namespace sluice::net {

inline ssize_t sysRecv(int fd, void* buf, size_t len, int flags) {
  return ::syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
}

inline ssize_t sysSend(int fd, const void* buf, size_t len, int flags) {
  return ::syscall(SYS_sendto, fd, buf, len, flags, nullptr, 0);
}

}  // namespace sluice::net
