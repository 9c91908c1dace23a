#include "tools/pg_connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "protocol/wire.h"

namespace sluice::tools {

Result<Endpoint> resolveEndpoint(const std::string& host, int port) {
  Endpoint ep;
  if (!host.empty() && host[0] == '/') {
    std::string path = fmt::format("{}/.s.PGSQL.{}", host, port);
    sockaddr_un un{};
    if (path.size() >= sizeof un.sun_path) {
      return Status::error("unix socket path too long: " + path);
    }
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
    std::memcpy(&ep.addr, &un, sizeof un);
    ep.len = sizeof un;
    ep.text = path;
    return ep;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? "localhost" : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return Status::error(fmt::format("cannot resolve host \"{}\": {}", host, gai_strerror(rc)));
  }
  std::memcpy(&ep.addr, res->ai_addr, res->ai_addrlen);
  ep.len = res->ai_addrlen;
  char buf[INET6_ADDRSTRLEN] = "?";
  if (res->ai_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr, buf, sizeof buf);
    ep.text = fmt::format("{}:{}", buf, port);
  } else {
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(res->ai_addr)->sin6_addr, buf,
                sizeof buf);
    ep.text = fmt::format("[{}]:{}", buf, port);
  }
  ::freeaddrinfo(res);
  return ep;
}

PgConnection::~PgConnection() { closeSocket(); }

void PgConnection::closeSocket() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void PgConnection::connect(const Endpoint& ep) {
  endpoint_ = ep.text;
  fd_ = ::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    protocol_.onEof(fmt::format("cannot create a socket: {}", std::strerror(errno)));
    return;
  }
  if (ep.addr.ss_family != AF_UNIX) {
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  protocol_.start(out_);
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) == 0) {
    flush();
    return;
  }
  if (errno == EINPROGRESS || errno == EAGAIN) {
    // EAGAIN: a unix socket whose listen queue is full; retried through POLLOUT like TCP.
    connecting_ = true;
    return;
  }
  abort(fmt::format("cannot connect to {}: {}", endpoint_, std::strerror(errno)));
}

short PgConnection::pollEvents() const {
  if (fd_ < 0) return 0;
  if (connecting_) return POLLOUT;
  return short(POLLIN | (out_.empty() ? 0 : POLLOUT));
}

void PgConnection::flush() {
  while (fd_ >= 0 && !out_.empty()) {
    ssize_t n = ::send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL);
    if (n > 0) {
      out_.erase(0, size_t(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    abort(fmt::format("write to {} failed: {}", endpoint_, std::strerror(errno)));
    return;
  }
}

void PgConnection::onEvents(short revents) {
  if (fd_ < 0 || revents == 0) return;
  if (connecting_) {
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      abort(fmt::format("cannot connect to {}: {}", endpoint_, std::strerror(err)));
      return;
    }
    connecting_ = false;
  }
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    char buf[16384];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        in_.append(buf, size_t(n));
        if (size_t(n) < sizeof buf) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      // EOF or a reset: what arrived before it still counts (a FATAL error, typically).
      protocol_.onData(in_, out_);
      protocol_.onEof(
          n == 0 ? fmt::format("{} closed the connection", endpoint_)
                 : fmt::format("read from {} failed: {}", endpoint_, std::strerror(errno)));
      closeSocket();
      return;
    }
    protocol_.onData(in_, out_);
    if (failed()) {
      closeSocket();
      return;
    }
  }
  flush();
}

void PgConnection::query(std::string_view sql) {
  protocol_.sendQuery(sql, out_);
  flush();
}

void PgConnection::close() {
  if (fd_ >= 0 && !connecting_ && !failed()) {
    std::string bye;
    protocol::appendTerminate(bye);
    (void)::send(fd_, bye.data(), bye.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  closeSocket();
}

void PgConnection::abort(std::string_view message) {
  protocol_.onEof(message);
  closeSocket();
}

Result<std::vector<QueryResult>> runQueries(const Endpoint& ep, ClientProtocol::Login login,
                                            const std::vector<std::string>& queries,
                                            std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  auto deadline = Clock::now() + timeout;
  PgConnection conn(std::move(login));
  conn.connect(ep);
  std::vector<QueryResult> results;
  size_t next = 0;
  bool sent = false;
  auto describe = [](const Failure& f) {
    return f.sqlstate.empty() ? f.message : f.sqlstate + " " + f.message;
  };
  while (!conn.failed()) {
    if (conn.ready()) {
      if (sent) {
        const QueryResult& r = conn.protocol().result();
        if (r.error) return Status::error(describe(*r.error));
        results.push_back(r);
      }
      if (next == queries.size()) {
        conn.close();
        return results;
      }
      conn.query(queries[next++]);
      sent = true;
      continue;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      conn.abort(fmt::format("no answer from {} within {} ms", ep.text, timeout.count()));
      break;
    }
    pollfd p{conn.fd(), conn.pollEvents(), 0};
    int n = ::poll(&p, 1, int(left.count()));
    if (n < 0 && errno != EINTR) {
      conn.abort(fmt::format("poll failed: {}", std::strerror(errno)));
      break;
    }
    if (n > 0) conn.onEvents(p.revents);
  }
  return Status::error(describe(*conn.protocol().failure()));
}

}  // namespace sluice::tools
