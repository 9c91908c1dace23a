// PgConnection: one non-blocking client socket to PostgreSQL (or a pooler) driving a
// ClientProtocol, for the tools. The caller polls: pollEvents() says what to wait for, onEvents()
// does the I/O. Owned by one thread, not thread-safe. Closes its socket on destruction.
//
// runQueries() is the blocking convenience built on it (one connection, a few queries, one
// deadline) that `sluice check` uses.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"
#include "tools/client_protocol.h"

namespace sluice::tools {

// Where to connect: a resolved TCP address, or a unix socket path.
struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;  // "127.0.0.1:5432" or "/tmp/.s.PGSQL.5432", for messages
};
// host "/dir" means the unix socket dir/.s.PGSQL.port, as libpq; otherwise a name or address,
// resolved now (the first address getaddrinfo gives).
Result<Endpoint> resolveEndpoint(const std::string& host, int port);

class PgConnection {
 public:
  explicit PgConnection(ClientProtocol::Login login) : protocol_(std::move(login)) {}
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Starts a non-blocking connect and queues the startup packet. A failure to even start (no
  // descriptors left...) fails the protocol with the reason.
  void connect(const Endpoint& ep);
  int fd() const { return fd_; }
  // POLLIN and/or POLLOUT, 0 when closed.
  short pollEvents() const;
  // Does what `revents` allows: completes the connect, writes, reads, feeds the protocol.
  void onEvents(short revents);
  void query(std::string_view sql);
  // Sends Terminate (best effort, no waiting) and closes.
  void close();
  // Closes with a failure found by the caller (a deadline), unless already failed.
  void abort(std::string_view message);

  ClientProtocol& protocol() { return protocol_; }
  const ClientProtocol& protocol() const { return protocol_; }
  bool failed() const { return protocol_.state() == ClientProtocol::State::kFailed; }
  bool ready() const { return protocol_.state() == ClientProtocol::State::kReady; }

 private:
  void flush();
  void closeSocket();

  ClientProtocol protocol_;
  int fd_ = -1;
  bool connecting_ = false;
  std::string endpoint_;
  std::string in_;
  std::string out_;
};

// Logs in and runs `queries` one after another on one connection; the results in order, or the
// first failure (login or query) as "SQLSTATE message" / message. Everything within `timeout`.
Result<std::vector<QueryResult>> runQueries(const Endpoint& ep, ClientProtocol::Login login,
                                            const std::vector<std::string>& queries,
                                            std::chrono::milliseconds timeout);

}  // namespace sluice::tools
