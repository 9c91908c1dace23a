#include "tools/stress.h"

#include <fmt/format.h>
#include <httplib.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include "tools/pg_connection.h"
#include "tools/pg_url.h"
#include "tools/stress_report.h"

namespace sluice::tools {

namespace {

using Clock = std::chrono::steady_clock;

double msBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One request of a wave: its connection and where it is in connect, [BEGIN,] query, [hold,]
// [COMMIT,] disconnect.
struct Request {
  enum class Step { kLogin, kBegin, kQuery, kHold, kCommit, kDone };
  std::unique_ptr<PgConnection> conn;
  Step step = Step::kLogin;
  Clock::time_point start;
  Clock::time_point deadline;
  Clock::time_point hold_until;
  double latency_ms = -1;
  std::optional<Failure> failure;
};

const char* stepText(Request::Step s) {
  switch (s) {
    case Request::Step::kLogin:
      return "logging in";
    case Request::Step::kBegin:
      return "running BEGIN";
    case Request::Step::kQuery:
      return "running the query";
    case Request::Step::kHold:
      return "holding";
    case Request::Step::kCommit:
      return "running COMMIT";
    case Request::Step::kDone:
      return "done";
  }
  std::abort();
}

class WaveRunner {
 public:
  WaveRunner(const StressOptions& opts, const PgUrl& url, const Endpoint& ep, bool progress)
      : opts_(opts), url_(url), ep_(ep), progress_(progress) {}

  WaveResult run(int wave) {
    auto wave_start = Clock::now();
    std::vector<Request> reqs(size_t(opts_.requests));
    ClientProtocol::Login login{url_.user, url_.password, url_.dbname, url_.params};
    for (auto& r : reqs) {
      r.conn = std::make_unique<PgConnection>(login);
      r.start = Clock::now();
      r.deadline = r.start + std::chrono::milliseconds(opts_.timeout_ms);
      r.conn->connect(ep_);
    }
    int done = 0, ok = 0, failed = 0;
    std::vector<pollfd> fds;
    std::vector<Request*> polled;
    auto last_progress = Clock::time_point{};
    while (done < opts_.requests) {
      auto now = Clock::now();
      for (auto& r : reqs) {
        if (r.step == Request::Step::kDone) continue;
        advance(r, now);
        if (r.step == Request::Step::kDone) {
          ++done;
          r.failure ? ++failed : ++ok;
        }
      }
      if (progress_ && now - last_progress > std::chrono::milliseconds(100)) {
        last_progress = now;
        std::fprintf(stderr, "\r%s\033[K",
                     formatProgress(wave, opts_.waves, done, opts_.requests, ok, failed).c_str());
        std::fflush(stderr);
      }
      if (done == opts_.requests) break;
      // Sleep until a socket is ready, or the nearest deadline or hold end.
      fds.clear();
      polled.clear();
      auto wake = now + std::chrono::milliseconds(progress_ ? 100 : 1000);
      for (auto& r : reqs) {
        if (r.step == Request::Step::kDone) continue;
        wake = std::min(wake, r.step == Request::Step::kHold ? r.hold_until : r.deadline);
        if (short ev = r.conn->pollEvents()) {
          fds.push_back({r.conn->fd(), ev, 0});
          polled.push_back(&r);
        }
      }
      auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count();
      int n = ::poll(fds.data(), fds.size(), int(std::max<int64_t>(0, wait_ms) + 1));
      if (n > 0) {
        for (size_t i = 0; i < fds.size(); ++i) polled[i]->conn->onEvents(fds[i].revents);
      }
    }
    if (progress_) {
      std::fprintf(stderr, "\r\033[K");
      std::fflush(stderr);
    }
    std::vector<double> latencies;
    std::vector<Failure> failures;
    for (auto& r : reqs) {
      if (r.failure) {
        failures.push_back(*r.failure);
      } else {
        latencies.push_back(r.latency_ms);
      }
    }
    return makeWave(wave, opts_.requests, msBetween(wave_start, Clock::now()), std::move(latencies),
                    failures);
  }

 private:
  void finish(Request& r, std::optional<Failure> failure) {
    r.failure = std::move(failure);
    r.conn->close();
    r.step = Request::Step::kDone;
  }

  // Moves r along as far as its connection allows at `now`.
  void advance(Request& r, Clock::time_point now) {
    PgConnection& c = *r.conn;
    if (c.failed()) {
      Failure f = *c.protocol().failure();
      if (r.step == Request::Step::kHold || r.step == Request::Step::kCommit) {
        f.message += " (after the query, while " + std::string(stepText(r.step)) + ")";
      }
      finish(r, std::move(f));
      return;
    }
    if (c.ready() && r.step != Request::Step::kLogin && r.step != Request::Step::kHold &&
        c.protocol().result().error) {
      finish(r, *c.protocol().result().error);
      return;
    }
    switch (r.step) {
      case Request::Step::kLogin:
        if (!c.ready()) break;
        r.step = opts_.in_transaction ? Request::Step::kBegin : Request::Step::kQuery;
        c.query(opts_.in_transaction ? "BEGIN" : opts_.query);
        return;
      case Request::Step::kBegin:
        if (!c.ready()) break;
        r.step = Request::Step::kQuery;
        c.query(opts_.query);
        return;
      case Request::Step::kQuery:
        if (!c.ready()) break;
        r.latency_ms = msBetween(r.start, now);
        if (opts_.hold_ms > 0) {
          r.step = Request::Step::kHold;
          r.hold_until = now + std::chrono::milliseconds(opts_.hold_ms);
          r.deadline = r.hold_until + std::chrono::milliseconds(opts_.timeout_ms);
          return;
        }
        [[fallthrough]];
      case Request::Step::kHold:
        if (r.step == Request::Step::kHold && now < r.hold_until) return;
        if (opts_.in_transaction) {
          r.step = Request::Step::kCommit;
          c.query("COMMIT");
          return;
        }
        finish(r, std::nullopt);
        return;
      case Request::Step::kCommit:
        if (!c.ready()) break;
        finish(r, std::nullopt);
        return;
      case Request::Step::kDone:
        return;
    }
    if (now >= r.deadline) {
      finish(r, Failure{"",
                        fmt::format("timeout: no answer within {} ms (--timeout) while {}",
                                    opts_.timeout_ms, stepText(r.step)),
                        true});
    }
  }

  const StressOptions& opts_;
  const PgUrl& url_;
  const Endpoint& ep_;
  bool progress_;
};

OpsHealth fetchReadyz(const std::string& base) {
  OpsHealth h;
  httplib::Client cli(base);
  cli.set_connection_timeout(2, 0);
  cli.set_read_timeout(2, 0);
  auto res = cli.Get("/readyz");
  if (!res) {
    h.error = fmt::format("cannot read {}/readyz: {}", base, httplib::to_string(res.error()));
    return h;
  }
  auto parsed = parseReadyz(res->status, res->body);
  if (!parsed) {
    h.error = fmt::format("{}/readyz: {}", base, parsed.message());
    return h;
  }
  return std::move(parsed.value());
}

// Many connections at once need as many descriptors: raise the soft limit to the hard one.
Status ensureDescriptors(int needed) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return Status::ok();
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
    (void)::getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rlim_t(needed) + 32 > rl.rlim_cur) {
    return Status::error(fmt::format(
        "--requests {} needs {} file descriptors and the limit is {} (raise it with ulimit -n)",
        needed, needed + 32, rl.rlim_cur));
  }
  return Status::ok();
}

}  // namespace

int runStress(const StressOptions& opts) {
  const char* env_user = std::getenv("USER");
  auto url = parsePgUrl(opts.url, env_user ? env_user : "");
  if (!url) {
    std::cerr << "sluice stress: " << url.message() << "\n";
    return 2;
  }
  if (opts.requests < 1 || opts.waves < 1 || opts.delay_ms < 0 || opts.hold_ms < 0 ||
      opts.timeout_ms < 1) {
    std::cerr << "sluice stress: --requests, --waves and --timeout must be at least 1, --delay "
                 "and --hold-ms at least 0\n";
    return 2;
  }
  if (!opts.ops.empty() && opts.ops.rfind("http://", 0) != 0) {
    std::cerr << "sluice stress: --ops " << opts.ops
              << " must be http://host:port (sluice's http_listen)\n";
    return 2;
  }
  if (Status st = ensureDescriptors(opts.requests); !st) {
    std::cerr << "sluice stress: " << st.message() << "\n";
    return 2;
  }
  auto ep = resolveEndpoint(url->host, url->port);
  if (!ep) {
    std::cerr << "sluice stress: " << ep.message() << "\n";
    return 2;
  }
  bool progress = ::isatty(STDERR_FILENO) == 1;
  std::string hold;
  if (opts.hold_ms > 0) {
    hold = fmt::format(", holding {} ms{}", opts.hold_ms,
                       opts.in_transaction ? " inside a transaction" : "");
  } else if (opts.in_transaction) {
    hold = ", inside a transaction";
  }
  std::cout << fmt::format(
      "sluice stress: {} ({}): {} of {} connections{}; query: {}{}; timeout {} ms\n",
      url->redacted(), ep->text, opts.waves == 1 ? "1 wave" : fmt::format("{} waves", opts.waves),
      opts.requests, opts.waves == 1 ? "" : fmt::format(", {} ms apart", opts.delay_ms), opts.query,
      hold, opts.timeout_ms);
  std::cout.flush();

  WaveRunner runner(opts, *url, *ep, progress);
  std::vector<WaveResult> waves;
  for (int w = 1; w <= opts.waves; ++w) {
    if (w > 1 && opts.delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(opts.delay_ms));
    }
    WaveResult r = runner.run(w);
    if (!opts.ops.empty()) r.ops = fetchReadyz(opts.ops);
    std::cout << formatWave(r, opts.waves);
    std::cout.flush();
    waves.push_back(std::move(r));
  }
  StressSummary summary = summarize(waves);
  std::cout << formatSummary(summary);
  std::cout.flush();

  if (!opts.json_path.empty()) {
    nlohmann::json j = {{"url", url->redacted()},
                        {"endpoint", ep->text},
                        {"options",
                         {{"requests", opts.requests},
                          {"waves", opts.waves},
                          {"delay_ms", opts.delay_ms},
                          {"query", opts.query},
                          {"hold_ms", opts.hold_ms},
                          {"in_transaction", opts.in_transaction},
                          {"timeout_ms", opts.timeout_ms},
                          {"ops", opts.ops}}},
                        {"waves", nlohmann::json::array()},
                        {"summary", toJson(summary)}};
    for (const auto& w : waves) j["waves"].push_back(toJson(w));
    std::ofstream f(opts.json_path);
    f << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    if (!f) {
      std::cerr << "sluice stress: cannot write --json " << opts.json_path << "\n";
      return 2;
    }
  }
  return summary.failed == 0 ? 0 : 1;
}

}  // namespace sluice::tools
