#include "server/app.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "admin/admin_console.h"
#include "admin/loop_gather.h"
#include "common/log.h"
#include "server/lease_log.h"
#include "session/client_session.h"

namespace sluice::server {

namespace {
constexpr auto kJanitorPeriod = std::chrono::milliseconds(100);

std::shared_ptr<const config::UserList> loadUsers(const config::Config& cfg) {
  if (cfg.settings.auth_file.empty()) return std::make_shared<config::UserList>();
  return std::make_shared<config::UserList>(config::loadUserList(cfg.settings.auth_file));
}

// auth_hba_file's rules when auth_type = hba, else nullptr. Throws ConfigError naming the file,
// line and what was expected.
std::shared_ptr<const auth::HbaRules> loadHbaRules(const config::Config& cfg) {
  if (cfg.settings.auth_type != config::AuthType::kHba) return nullptr;
  if (cfg.settings.auth_hba_file.empty()) {
    throw config::ConfigError(cfg.path +
                              ": auth_type = hba needs auth_hba_file (a pg_hba.conf-style file)");
  }
  auto rules = auth::loadHba(cfg.settings.auth_hba_file);
  if (!rules) throw config::ConfigError("auth_hba_file: " + rules.message());
  return std::make_shared<const auth::HbaRules>(std::move(*rules));
}
}  // namespace

App::App(std::string config_path) : config_path_(std::move(config_path)) {}

App::~App() = default;

int App::run() {
  cfg_ = config::loadConfig(config_path_);  // throws ConfigError: reported by main
  auto users = loadUsers(*cfg_);
  auto hba = loadHbaRules(*cfg_);
  const auto& s = cfg_->settings;
  initLogging(s.logfile, s.verbose);
  for (const auto& w : cfg_->warnings) SLOG_WARN("{}", w);
  if (hba) {
    for (const auto& w : hba->warnings) SLOG_WARN("{}", w);
  }
  ctx_.setHba(hba);

  // Many idle clients need many descriptors: take the hard limit.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  int workers = s.workers > 0 ? s.workers : int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<net::EventLoop*> raw;
  for (int i = 0; i < workers; ++i) {
    loops_.push_back(std::make_unique<net::EventLoop>(i));
    raw.push_back(loops_.back().get());
    auto lc = std::make_unique<session::LoopClients>();
    lc->loop = raw.back();
    lc->cfg = cfg_;
    ctx_.loops.push_back(std::move(lc));
  }
  pools_ = std::make_unique<pool::PoolRegistry>(raw);
  pools_->setConfig(cfg_, users);
  ctx_.pools = pools_.get();
  admin_ = std::make_unique<admin::AdminConsole>(&ctx_, this);
  ctx_.admin = admin_.get();

  // Signals first: once the port accepts, a SIGHUP must reload, not kill the process (asio
  // queues what arrives before control_ runs).
  waitSignals();
  if (!s.http_listen.empty()) {
    // Bound before the worker loops start, so that a bad address fails start-up cleanly, and
    // before the PostgreSQL port listens, so that whoever sees that port up finds /readyz too.
    http_ = std::make_unique<http::HttpServer>(&ctx_);
    http_->start(s.http_listen);
  }
  listen();
  if (on_started_) {
    started_thread_ = std::jthread([this, fn = std::move(on_started_)] { fn(*pools_); });
  }
  const std::string pidfile = s.pidfile;  // cfg_ (and `s`) may be replaced by a reload
  if (!pidfile.empty()) {
    std::ofstream(pidfile) << getpid() << "\n";
  }
  for (auto& l : loops_) l->start();
  started_at_ = now();
  SLOG_INFO("sluice {} started: {} worker threads, {} database entries", SLUICE_VERSION, workers,
            cfg_->databases.size());
  scheduleJanitor();
  control_.run();
  if (http_) http_->stop();  // before the loops it reads from go away

  // Close every connection on its own loop, then let the loops finish their handlers, so that
  // nothing that owns a socket or timer outlives its io_context.
  for (auto& p : pools_->all()) p->closeIdle("sluice is stopping");
  for (auto& lc : ctx_.loops) {
    session::LoopClients* l = lc.get();
    l->loop->post([l] {
      std::vector<std::shared_ptr<session::ClientSession>> clients;
      for (auto* c : l->clients) clients.push_back(c->shared_from_this());
      for (auto& c : clients) {
        c->closeWithError(stats::CloseReason::kShutdown, "sluice is shutting down");
      }
    });
  }
  for (auto& l : loops_) l->drainAndJoin(std::chrono::seconds(2));
  if (!unix_socket_path_.empty()) {
    // Only if the socket there is still ours: in a rolling restart the new process has bound the
    // same path (unlinking ours first), and removing its socket would cut it off.
    struct stat st {};
    if (::stat(unix_socket_path_.c_str(), &st) == 0 && st.st_ino == unix_socket_ino_ &&
        st.st_dev == unix_socket_dev_) {
      ::unlink(unix_socket_path_.c_str());
    }
  }
  if (!pidfile.empty()) ::unlink(pidfile.c_str());
  SLOG_INFO("sluice stopped");
  return exit_code_;
}

namespace {
// With so_reuseport, a second process can share the port during a rolling restart; when the old
// one closes its listener, Linux resets the connections still in that listener's accept queue
// unless net.ipv4.tcp_migrate_req = 1 (Linux 5.14+) moves them to another listener of the group.
void warnIfReuseportLosesConnections() {
  std::ifstream f("/proc/sys/net/ipv4/tcp_migrate_req");
  int value = -1;
  if (!(f >> value)) {
    SLOG_WARN(
        "so_reuseport is on but this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+): when a "
        "process sharing this port stops listening, connections still in its accept queue are "
        "reset");
    return;
  }
  if (value != 0) return;
  SLOG_WARN(
      "so_reuseport is on but net.ipv4.tcp_migrate_req is 0: when a process sharing this port "
      "stops listening (a rolling restart), connections still in its accept queue are reset; set "
      "sysctl -w net.ipv4.tcp_migrate_req=1 (see README, Rolling restart)");
}
}  // namespace

void App::listen() {
  const auto& s = cfg_->settings;
  if (s.so_reuseport) warnIfReuseportLosesConnections();
  if (!s.listen_addr.empty()) {
    std::vector<std::string> addrs;
    size_t start = 0;
    while (start <= s.listen_addr.size()) {
      size_t comma = s.listen_addr.find(',', start);
      std::string a = s.listen_addr.substr(
          start, comma == std::string::npos ? std::string::npos : comma - start);
      a.erase(0, a.find_first_not_of(" \t"));
      a.erase(a.find_last_not_of(" \t") + 1);
      if (!a.empty()) addrs.push_back(a);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    for (auto& a : addrs) {
      std::vector<asio::ip::tcp::endpoint> eps;
      if (a == "*") {
        eps.emplace_back(asio::ip::tcp::v4(), uint16_t(s.listen_port));
        eps.emplace_back(asio::ip::tcp::v6(), uint16_t(s.listen_port));
      } else {
        asio::ip::tcp::resolver r(control_);
        for (auto& e : r.resolve(a, std::to_string(s.listen_port))) eps.push_back(e.endpoint());
      }
      for (auto& ep : eps) {
        auto acc = std::make_shared<asio::ip::tcp::acceptor>(control_);
        acc->open(ep.protocol());
        acc->set_option(asio::socket_base::reuse_address(true));
        if (ep.address().is_v6()) acc->set_option(asio::ip::v6_only(true));
        if (s.so_reuseport) {
          int one = 1;
          ::setsockopt(acc->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        }
        asio::error_code ec;
        acc->bind(ep, ec);
        if (ec) {
          throw std::runtime_error(fmt::format("cannot listen on {}:{}: {}",
                                               ep.address().to_string(), ep.port(), ec.message()));
        }
        acc->listen(s.listen_backlog);
        SLOG_INFO("listening on {}:{}", ep.address().to_string(), ep.port());
        tcp_acceptors_.push_back(acc);
        acceptTcp(acc);
      }
    }
  }
  if (!s.unix_socket_dir.empty()) {
    std::string path = fmt::format("{}/.s.PGSQL.{}", s.unix_socket_dir, s.listen_port);
    std::string why;
    if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      why = fmt::format("the path is {} bytes and unix sockets allow {}", path.size(),
                        sizeof(sockaddr_un{}.sun_path) - 1);
    } else {
      ::unlink(path.c_str());
      asio::error_code ec;
      auto acc = std::make_shared<asio::local::stream_protocol::acceptor>(control_);
      asio::local::stream_protocol::endpoint ep(path);
      acc->open(ep.protocol(), ec);
      if (!ec) acc->bind(ep, ec);
      if (!ec) acc->listen(s.listen_backlog, ec);
      if (ec) {
        why = ec.message();
      } else {
        unix_socket_path_ = path;
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0) {
          unix_socket_ino_ = st.st_ino;
          unix_socket_dev_ = st.st_dev;
        }
        ::chmod(path.c_str(), mode_t(s.unix_socket_mode));
        SLOG_INFO("listening on unix:{}", path);
        unix_acceptors_.push_back(acc);
        acceptUnix(acc);
      }
    }
    if (!why.empty()) {
      std::string msg = fmt::format(
          "cannot listen on unix socket {}: {} (set unix_socket_dir to a "
          "shorter directory, or empty to disable it)",
          path, why);
      if (tcp_acceptors_.empty()) throw std::runtime_error(msg);
      SLOG_WARN("{}; continuing with TCP only", msg);
    }
  }
}

void App::acceptTcp(std::shared_ptr<asio::ip::tcp::acceptor> acc) {
  acc->async_accept([this, acc](const asio::error_code& ec, asio::ip::tcp::socket sock) {
    // A connection accepted just before the listener closed (a shutdown) is served or refused
    // with an error like any other; dropping it here would reset the client.
    if (!ec) handOffTcp(std::move(sock));
    if (ec == asio::error::operation_aborted || !acc->is_open()) return;
    acceptTcp(acc);
  });
}

void App::acceptUnix(std::shared_ptr<asio::local::stream_protocol::acceptor> acc) {
  acc->async_accept(
      [this, acc](const asio::error_code& ec, asio::local::stream_protocol::socket sock) {
        if (!ec) handOff(sock.release(), "unix");  // even if the listener closed meanwhile
        if (ec == asio::error::operation_aborted || !acc->is_open()) return;
        acceptUnix(acc);
      });
}

void App::handOffTcp(asio::ip::tcp::socket sock) {
  asio::error_code ec;
  auto ep = sock.remote_endpoint(ec);
  std::string peer = ec ? "?" : fmt::format("{}:{}", ep.address().to_string(), ep.port());
  sock.set_option(asio::ip::tcp::no_delay(true), ec);
  handOff(sock.release(), std::move(peer));
}

void App::handOff(int fd, std::string peer) {
  net::EventLoop* loop = loops_[next_loop_++ % loops_.size()].get();
  loop->post([this, loop, fd, peer = std::move(peer)]() mutable {
    auto client = std::make_shared<session::ClientSession>(&ctx_, loop, fd, std::move(peer));
    client->start();
  });
}

void App::scheduleJanitor() {
  janitor_timer_.expires_after(kJanitorPeriod);
  janitor_timer_.async_wait([this](const asio::error_code& ec) {
    if (ec) return;
    janitorTick();
    scheduleJanitor();
  });
}

void App::janitorTick() {
  pools_->janitor();
  if (shutting_down_) shutdownTick();
  if (janitor_ticks_ % 10 == 0) nameHolders();
  auto t0 = now();
  admin_->tick(t0);  // SHOW STATS' periods
  monitor_.tick(t0, pools_->config()->settings, *pools_);
  if (++janitor_ticks_ % 2 != 0) return;
  auto cfg = pools_->config();
  for (auto& lc : ctx_.loops) {
    session::LoopClients* l = lc.get();
    l->loop->post([l, cfg] {
      l->cfg = cfg;
      auto t = now();
      // The loop's heartbeat, for /health: it ran this task.
      l->heartbeat_ns.store(
          std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count(),
          std::memory_order_relaxed);
      // Copy: the janitor may close clients, which erases them from the set.
      std::vector<std::shared_ptr<session::ClientSession>> clients;
      clients.reserve(l->clients.size());
      for (auto* c : l->clients) clients.push_back(c->shared_from_this());
      for (auto& c : clients) c->janitor(t, cfg->settings);
      checkLeases(*l, t, cfg->settings);  // the leak detector (hold_warn_threshold)
    });
  }
}

void App::nameHolders() {
  // Only pools with clients waiting need names for their errors; ask the loops who holds what.
  bool anyone_waits = false;
  for (const auto& p : pools_->all()) anyone_waits |= p->stats().waiting > 0;
  if (!anyone_waits) return;
  using Held = std::map<std::pair<std::string, std::string>, std::map<std::string, int>>;
  admin::gatherLoops<Held>(
      &ctx_,
      [](session::LoopClients& lc) {
        Held held;
        for (session::ClientSession* c : lc.clients) {
          if (c->server() && c->pool() && !c->isAdmin()) {
            ++held[{c->database(), c->pool()->user()}][c->applicationName()];
          }
        }
        return held;
      },
      [pools = pools_.get()](std::vector<Held>& parts) {
        Held all;
        for (auto& part : parts) {
          for (auto& [pool, apps] : part) {
            for (auto& [app, n] : apps) all[pool][app] += n;
          }
        }
        for (const auto& p : pools->all()) {
          auto it = all.find({p->database(), p->user()});
          if (it == all.end()) {
            p->setHolders("");
            continue;
          }
          std::vector<std::pair<int, std::string>> rows;
          for (const auto& [app, n] : it->second) rows.emplace_back(n, app);
          std::sort(rows.rbegin(), rows.rend());
          std::string text;
          for (size_t i = 0; i < rows.size() && i < 3; ++i) {
            text += fmt::format("{}\"{}\" {}", i ? ", " : "", rows[i].second, rows[i].first);
          }
          if (rows.size() > 3) text += fmt::format(" and {} more", rows.size() - 3);
          p->setHolders(std::move(text));
        }
      });
}

void App::waitSignals() {
  signals_.add(SIGINT);
  signals_.add(SIGTERM);
  signals_.add(SIGHUP);
  signals_.async_wait([this](const asio::error_code& ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      SLOG_INFO("SIGHUP: {}", reload());
    } else if (sig == SIGINT) {
      SLOG_INFO("SIGINT: refuse new clients (57P03), let transactions finish, exit");
      requestShutdown(false);
    } else {
      SLOG_INFO("SIGTERM: stop accepting, wait for clients to disconnect, exit");
      if (shutting_down_ && wait_for_clients_) {
        // A second SIGTERM: stop waiting for clients, only for transactions.
        wait_for_clients_ = false;
        ctx_.refuse_logins.store(true);
      } else {
        requestShutdown(true);
      }
    }
    waitSignals();
  });
}

void App::reloadConfigAsync(std::function<void(std::string)> done) {
  asio::post(control_, [this, done = std::move(done)] { done(reload()); });
}

void App::setConfigAsync(std::string key, std::string value,
                         std::function<void(std::string)> done) {
  asio::post(
      control_, [this, key = std::move(key), value = std::move(value), done = std::move(done)] {
        try {
          auto cfg = config::withSetting(*cfg_, key, value);
          // SET auth_type = hba or SET auth_hba_file reads the file now; a bad one refuses the
          // SET and changes nothing.
          auto hba = loadHbaRules(*cfg);
          cfg_ = cfg;
          ctx_.setHba(hba);
          pools_->setConfig(cfg, pools_->userList());
          SLOG_INFO("SET {} = '{}': applied (until the next reload reads the file)", key, value);
          done("");
        } catch (const std::exception& e) {
          done(e.what());
        }
      });
}

void App::requestReload() {
  asio::post(control_, [this] { SLOG_INFO("RELOAD: {}", reload()); });
}

std::string App::reload() {
  try {
    auto cfg = config::loadConfig(config_path_);
    auto users = loadUsers(*cfg);
    for (const auto& w : cfg->warnings) SLOG_WARN("{}", w);
    // A bad auth_hba_file keeps the rules in force (a reload must not lock everyone out, nor
    // let everyone in); the rest of the file still applies.
    std::string hba_note;
    std::shared_ptr<const auth::HbaRules> hba;
    bool hba_ok = true;
    try {
      hba = loadHbaRules(*cfg);
    } catch (const config::ConfigError& e) {
      if (!ctx_.hba()) throw;  // no rules to keep: the whole reload fails
      hba_ok = false;
      hba_note = std::string("; keeping the previous hba rules: ") + e.what();
      SLOG_WARN("reload: keeping the previous hba rules: {}", e.what());
    }
    if (hba) {
      for (const auto& w : hba->warnings) SLOG_WARN("{}", w);
    }
    const auto& a = cfg_->settings;
    const auto& b = cfg->settings;
    std::vector<std::string> restart;
    if (a.listen_addr != b.listen_addr) restart.push_back("listen_addr");
    if (a.listen_port != b.listen_port) restart.push_back("listen_port");
    if (a.unix_socket_dir != b.unix_socket_dir) restart.push_back("unix_socket_dir");
    if (a.workers != b.workers) restart.push_back("workers");
    if (a.logfile != b.logfile) restart.push_back("logfile");
    if (a.http_listen != b.http_listen) restart.push_back("http_listen");
    cfg_ = cfg;
    pools_->setConfig(cfg, users);
    if (hba_ok) ctx_.setHba(hba);
    std::string msg = "configuration reloaded from " + cfg->path + hba_note;
    if (!restart.empty()) {
      msg += "; these changes need a restart to take effect:";
      for (auto& k : restart) msg += " " + k;
    }
    return msg;
  } catch (const std::exception& e) {
    return std::string("reload failed, keeping the old configuration: ") + e.what();
  }
}

void App::requestShutdown(bool wait_for_clients) {
  asio::post(control_, [this, wait_for_clients] {
    if (shutting_down_) return;
    shutting_down_ = true;
    wait_for_clients_ = wait_for_clients;
    ctx_.shutting_down.store(true);
    if (!wait_for_clients) {
      // SIGINT / SHUTDOWN: nothing takes over the port, so the listeners stay open until exit
      // and a new client gets 57P03 from the startup check. Closing them now would reset
      // whoever connects between the last accept and the close.
      ctx_.refuse_logins.store(true);
    } else {
      closeListeners();  // SIGTERM: a successor (so_reuseport) takes the new clients
    }
    shutdownTick();
  });
}

// Closing a listener resets the connections the kernel queued on it and nobody accepted (unless
// net.ipv4.tcp_migrate_req moves them to another listener of the port): take them first (they
// are served, or refused with 57P03), then close.
void App::closeListeners() {
  for (auto& a : tcp_acceptors_) {
    asio::error_code ec;
    a->non_blocking(true, ec);
    for (;;) {
      asio::ip::tcp::socket sock(control_);
      a->accept(sock, ec);
      if (ec) break;
      handOffTcp(std::move(sock));
    }
    a->close(ec);
  }
  for (auto& a : unix_acceptors_) {
    asio::error_code ec;
    a->non_blocking(true, ec);
    for (;;) {
      asio::local::stream_protocol::socket sock(control_);
      a->accept(sock, ec);
      if (ec) break;
      handOff(sock.release(), "unix");
    }
    a->close(ec);
  }
}

// While shutting down: clients without a server (and so without a transaction) are told and
// closed; clients inside a transaction keep their server until it ends. Exits when none is left.
void App::shutdownTick() {
  auto remaining = std::make_shared<std::atomic<int>>(0);
  auto pending = std::make_shared<std::atomic<int>>(int(ctx_.loops.size()));
  bool wait_clients = wait_for_clients_;
  bool refuse_logins = ctx_.refuse_logins.load();
  for (auto& lc : ctx_.loops) {
    session::LoopClients* l = lc.get();
    l->loop->post([this, l, remaining, pending, wait_clients, refuse_logins] {
      std::vector<std::shared_ptr<session::ClientSession>> clients;
      for (auto* c : l->clients) clients.push_back(c->shared_from_this());
      for (auto& c : clients) {
        using S = session::ClientSession::State;
        // Logging in counts as busy only while logins are still served (SIGTERM); after SIGINT
        // a client still logging in is refused now, not waited for.
        bool logging_in = c->state() == S::kStartup || c->state() == S::kAuth;
        bool busy =
            c->state() == S::kActive || c->state() == S::kSyncing || (logging_in && !refuse_logins);
        if (busy || wait_clients) {
          remaining->fetch_add(1);
          continue;
        }
        c->closeWithError(stats::CloseReason::kShutdown, "sluice is shutting down");
      }
      if (pending->fetch_sub(1) == 1 && remaining->load() == 0) {
        asio::post(control_, [this] {
          SLOG_INFO("no transactions left; exiting");
          control_.stop();
        });
      }
    });
  }
}

}  // namespace sluice::server
