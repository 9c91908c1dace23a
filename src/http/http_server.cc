#include "http/http_server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/log.h"
#include "http/cidr_set.h"
#include "http/metrics.h"
#include "http/probes.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SLUICE_TSAN 1
#endif
#endif
#if defined(SLUICE_TSAN) || defined(__SANITIZE_THREAD__)
// Debian's libcpp-httplib.so is not instrumented: TSan sees only the libc calls it makes
// (memcmp, memcpy) and none of its synchronization (the fast path of its function-local
// statics), and reports races between its request threads that cannot happen. Ignore the
// accesses of calls made from inside that library; sluice's own handlers stay checked.
extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:libcpp-httplib.so\n";
}
#endif

namespace sluice::http {

namespace {

// When the connection a request thread is working on was accepted: its deadline starts there,
// so time spent queued behind slow connections counts too.
thread_local TimePoint t_accepted_at;

// httplib's ThreadPool, plus the accept time of each connection.
class StampedPool final : public httplib::TaskQueue {
 public:
  explicit StampedPool(size_t n) {
    for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back({now(), std::move(fn)});
    }
    cv_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  struct Job {
    TimePoint accepted_at;
    std::function<void()> fn;
  };
  void work() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return shutdown_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // shutting down, queue drained
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      t_accepted_at = job.accepted_at;
      job.fn();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;   // GUARDED_BY(mu_)
  bool shutdown_ = false;  // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

void addressOf(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r != 0) return;
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

// A connection's socket with one deadline for everything (httplib's own stream only bounds
// each read and write, so a client dribbling a byte a second could hold a thread forever) and
// a cap on the bytes read.
class DeadlineStream final : public httplib::Stream {
 public:
  DeadlineStream(int fd, TimePoint deadline) : fd_(fd), deadline_(deadline) {}

  bool is_readable() const override { return pos_ < end_ || wait(POLLIN); }
  bool is_writable() const override { return wait(POLLOUT); }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ == end_) {
      if (read_total_ >= kMaxRequestBytes || !wait(POLLIN)) return -1;
      size_t want = std::min(sizeof buf_, kMaxRequestBytes - read_total_);
      ssize_t n;
      do {
        n = ::recv(fd_, buf_, want, 0);
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      read_total_ += size_t(n);
      pos_ = 0;
      end_ = size_t(n);
    }
    size_t n = std::min(size, end_ - pos_);
    std::memcpy(ptr, buf_ + pos_, n);
    pos_ += n;
    return ssize_t(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!wait(POLLOUT)) return -1;
    ssize_t n;
    do {
      n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    addressOf(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    addressOf(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  bool wait(short events) const {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - now()).count();
      if (left <= 0) return false;
      pollfd p{fd_, events, 0};
      int r = ::poll(&p, 1, int(std::min<long long>(left, INT_MAX)));
      if (r < 0 && errno == EINTR) continue;
      return r > 0;  // an error or hang-up also wakes it; the recv or send then reports it
    }
  }

  int fd_;
  TimePoint deadline_;
  size_t read_total_ = 0;
  char buf_[4096];
  size_t pos_ = 0, end_ = 0;
};

// httplib's Server with our connection handling: one request per connection, under a deadline.
class OpsServer final : public httplib::Server {
 private:
  bool process_and_close_socket(socket_t sock) override {
    TimePoint deadline = t_accepted_at + kConnectionDeadline;
    if (now() < deadline) {
      DeadlineStream strm(sock, deadline);
      bool closed = false;
      process_request(strm, /*close_connection=*/true, closed, nullptr);
    }
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return true;
  }
};

void reply(httplib::Response& res, int status, const std::string& body, const char* type) {
  res.status = status;
  res.set_content(body, type);
  res.set_header("Cache-Control", "no-store");
}

constexpr const char* kJson = "application/json";

}  // namespace

class HttpServer::Impl {
 public:
  explicit Impl(session::SessionContext* ctx) : ctx_(ctx) {}

  void start(const std::string& listen) {
    std::string host;
    int port = 0;
    parseListen(listen, &host, &port);
    svr_.new_task_queue = [] { return new StampedPool(kRequestThreads); };
    // httplib's default also sets SO_REUSEPORT, which would let a second sluice bind the same
    // port silently; only SO_REUSEADDR (restart while old connections linger).
    svr_.set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    svr_.set_payload_max_length(kMaxRequestBytes);
    svr_.set_tcp_nodelay(true);

    svr_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      ProbeResult r = health(*ctx_);
      reply(res, r.status, r.body, kJson);
    });
    svr_.Get("/readyz", [this](const httplib::Request& req, httplib::Response& res) {
      if (!allowed(req, res)) return;
      ProbeResult r = readiness(*ctx_);
      reply(res, r.status, r.body, kJson);
    });
    svr_.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (!allowed(req, res)) return;
      auto usage = gatherUsage(ctx_, kGatherTimeout);
      reply(res, 200, renderMetrics(*ctx_, usage ? &*usage : nullptr),
            "text/plain; version=0.0.4; charset=utf-8");
    });
    svr_.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "internal error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          SLOG_WARN("http: {}", what);
          reply(res, 500, nlohmann::json{{"error", what}}.dump(), kJson);
        });

    if (!svr_.bind_to_port(host, port)) {
      throw std::runtime_error(fmt::format(
          "cannot listen on http_listen = {}: the address is in use or not local", listen));
    }
    thread_ = std::thread([this] {
      svr_.listen_after_bind();
      done_.store(true);
    });
    SLOG_INFO("http: serving /health, /readyz, /metrics on {}", listen);
  }

  void stop() {
    if (!thread_.joinable()) return;
    // httplib's stop() does nothing until listen_after_bind() has marked it running.
    while (!svr_.is_running() && !done_.load()) std::this_thread::sleep_for(Millis(1));
    svr_.stop();
    thread_.join();
  }

 private:
  static void parseListen(const std::string& listen, std::string* host, int* port) {
    size_t colon = listen.rfind(':');
    auto bad = [&] {
      return std::runtime_error(fmt::format(
          "http_listen = '{}': expected addr:port, such as 127.0.0.1:9127 or [::1]:9127", listen));
    };
    if (colon == std::string::npos) throw bad();
    *host = listen.substr(0, colon);
    std::string digits = listen.substr(colon + 1);
    if (digits.empty()) throw bad();
    char* end = nullptr;
    long p = std::strtol(digits.c_str(), &end, 10);
    if (end == nullptr || *end != '\0' || p < 1 || p > 65535) throw bad();
    *port = int(p);
    if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
      *host = host->substr(1, host->size() - 2);
    }
    if (host->empty() || *host == "*") *host = "0.0.0.0";
  }

  // ops_allow of the current snapshot, parsed again only when it changes.
  bool allowed(const httplib::Request& req, httplib::Response& res) {
    auto cfg = ctx_->pools->config();
    std::shared_ptr<const CidrSet> set;
    {
      std::lock_guard lock(allow_mu_);
      if (!allow_ || allow_entries_ != cfg->settings.ops_allow) {
        std::vector<std::string> errors;
        allow_ = std::make_shared<const CidrSet>(CidrSet::parse(cfg->settings.ops_allow, &errors));
        allow_entries_ = cfg->settings.ops_allow;
        for (const auto& e : errors) SLOG_WARN("ops_allow: {} ignored", e);
      }
      set = allow_;
    }
    if (set->contains(req.remote_addr)) return true;
    reply(res, 403,
          nlohmann::json{{"error", "forbidden: " + req.remote_addr + " is not in ops_allow"}}.dump(
              -1, ' ', false, nlohmann::json::error_handler_t::replace),
          kJson);
    return false;
  }

  session::SessionContext* ctx_;
  OpsServer svr_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::mutex allow_mu_;
  std::shared_ptr<const CidrSet> allow_;    // GUARDED_BY(allow_mu_)
  std::vector<std::string> allow_entries_;  // GUARDED_BY(allow_mu_)
};

HttpServer::HttpServer(session::SessionContext* ctx) : impl_(std::make_unique<Impl>(ctx)) {}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start(const std::string& listen) { impl_->start(listen); }

void HttpServer::stop() { impl_->stop(); }

}  // namespace sluice::http
