// App: the process. Owns the config snapshot, the worker loops, the pools, the listeners, the
// janitor and the signal handling. Runs its own control loop on the main thread (accepting,
// signals, janitor, reload); client and server connections live on the worker loops.
#pragma once

#include <asio.hpp>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "admin/admin_console.h"
#include "config/config.h"
#include "http/http_server.h"
#include "net/event_loop.h"
#include "pool/pool_registry.h"
#include "server/monitor.h"
#include "session/session_context.h"

namespace sluice::server {

class App : public admin::ControlPlane {
 public:
  explicit App(std::string config_path);
  ~App();
  // Runs until shutdown; returns the process exit code.
  int run();
  // Work for a thread of its own once the pools exist and the ports listen (main's budget
  // check); the thread is joined before the pools go away.
  void onStarted(std::function<void(pool::PoolRegistry&)> fn) { on_started_ = std::move(fn); }

  // Control operations (admin console, signals). Thread-safe: they post to the control loop.
  void requestReload();
  void requestShutdown(bool wait_for_clients);
  std::string reload();  // on the control loop; returns a message
  // admin::ControlPlane
  void reloadConfigAsync(std::function<void(std::string)> done) override;
  void shutdown(bool wait_for_clients) override { requestShutdown(wait_for_clients); }
  void setConfigAsync(std::string key, std::string value,
                      std::function<void(std::string)> done) override;
  session::SessionContext& context() { return ctx_; }
  pool::PoolRegistry& pools() { return *pools_; }
  const std::vector<std::unique_ptr<net::EventLoop>>& loops() const { return loops_; }
  TimePoint startedAt() const { return started_at_; }

 private:
  void listen();
  void acceptTcp(std::shared_ptr<asio::ip::tcp::acceptor> acc);
  void acceptUnix(std::shared_ptr<asio::local::stream_protocol::acceptor> acc);
  void handOffTcp(asio::ip::tcp::socket sock);  // peer address, TCP_NODELAY, handOff
  void handOff(int fd, std::string peer);       // a worker loop creates the session
  void scheduleJanitor();
  void janitorTick();
  // Tells pools with waiting clients which application_names hold their servers (their errors
  // name them); asks the worker loops, about once a second.
  void nameHolders();
  void waitSignals();
  void shutdownTick();
  void closeListeners();

  std::string config_path_;
  std::shared_ptr<const config::Config> cfg_;
  asio::io_context control_{1};
  asio::signal_set signals_{control_};
  asio::steady_timer janitor_timer_{control_};
  std::vector<std::unique_ptr<net::EventLoop>> loops_;
  std::unique_ptr<pool::PoolRegistry> pools_;
  std::function<void(pool::PoolRegistry&)> on_started_;
  std::jthread started_thread_;  // after pools_: destroyed (joined) first
  session::SessionContext ctx_;
  std::unique_ptr<admin::AdminConsole> admin_;
  std::unique_ptr<http::HttpServer> http_;  // when http_listen is set
  PoolMonitor monitor_;
  std::vector<std::shared_ptr<asio::ip::tcp::acceptor>> tcp_acceptors_;
  std::vector<std::shared_ptr<asio::local::stream_protocol::acceptor>> unix_acceptors_;
  std::string unix_socket_path_;
  uint64_t unix_socket_ino_ = 0;  // which socket file is ours (see run()'s exit)
  uint64_t unix_socket_dev_ = 0;
  size_t next_loop_ = 0;
  int janitor_ticks_ = 0;
  bool shutting_down_ = false;
  bool wait_for_clients_ = false;
  TimePoint started_at_;
  int exit_code_ = 0;
};

}  // namespace sluice::server
