// HttpServer: GET /health, /readyz and /metrics on `http_listen`, served by cpp-httplib on
// threads of its own (one accepting, kRequestThreads answering), never on a worker loop, so
// nothing an HTTP client does can delay pooling. Each connection carries one request and has
// one deadline from accept to its last byte written, and a request is capped in size: a slow,
// silent or oversized client holds one request thread for at most the deadline.
//
// /health is open; /readyz and /metrics answer only peers inside ops_allow (read from the
// current config snapshot at each request), others get 403.
//
// Owned by the App; start() and stop() are called on the control thread. The handlers read
// only thread-safe state (see probes.h and metrics.h).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "session/session_context.h"

namespace sluice::http {

inline constexpr std::chrono::seconds kConnectionDeadline{5};
inline constexpr size_t kMaxRequestBytes = size_t{16} * 1024;
inline constexpr size_t kRequestThreads = 4;
// How long /metrics waits for the worker loops' per-application answers.
inline constexpr std::chrono::milliseconds kGatherTimeout{1000};

class HttpServer {
 public:
  explicit HttpServer(session::SessionContext* ctx);
  ~HttpServer();  // stops
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds `listen` ("127.0.0.1:9127", "[::1]:9127", "*:9127" for every IPv4 address) and
  // starts serving. Throws std::runtime_error naming the address when it cannot.
  void start(const std::string& listen);
  // Stops accepting and waits for the requests in progress (each bounded by the deadline).
  void stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::http
