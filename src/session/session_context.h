// SessionContext: what every ClientSession shares: the pools, the cancel registry, global client
// counts and the admin console. Owned by the App, outlives every session; members are
// thread-safe (atomics, or classes with their own locks).
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "auth/hba.h"
#include "common/clock.h"
#include "diagnostics/lease_watch.h"
#include "net/buffer.h"
#include "net/event_loop.h"
#include "pool/pool_registry.h"
#include "session/cancel_registry.h"
#include "stats/close_reason.h"
#include "stats/counter.h"

namespace sluice::session {

class ClientSession;

// Answers the admin console's SQL. Implemented in src/admin; called on the session's loop.
class AdminHandler {
 public:
  virtual ~AdminHandler() = default;
  // Answers `sql` by calling `reply` exactly once, on the session's loop, with the complete
  // reply (rows, CommandComplete or ErrorResponse) without ReadyForQuery. It may answer later:
  // rows about clients and servers are gathered from every loop by posted tasks.
  virtual void execute(const std::shared_ptr<ClientSession>& session, const std::string& sql,
                       std::function<void(std::string)> reply) = 0;
};

// Per-loop state: the clients that live on that loop (for the janitor and SHOW CLIENTS).
struct LoopClients {
  net::EventLoop* loop = nullptr;
  std::unordered_set<ClientSession*> clients;  // touched only on `loop`
  // This loop's copy of the current config snapshot, refreshed by the janitor, so the data path
  // reads settings without taking the registry's lock. Touched only on `loop`.
  std::shared_ptr<const config::Config> cfg;
  net::BufferPool buffers;   // read buffers lent to this loop's clients while they have data
  std::string rw_to_server;  // the prepared-statement rewriter's output, reused by every client
  std::string rw_to_client;
  // Closes of clients that never reached a pool (bad startup, unknown database, ...).
  std::array<stats::Counter, stats::kNumCloseReasons> disconnects;
  // The leak detector's memory of this loop's clients (hold_warn_threshold); janitor task only.
  diagnostics::LeaseWatch leases;
  // Server hold time of this loop's clients that have closed, per application_name (the live
  // ones keep their own); read by the metrics gather task on this loop. Touched only on `loop`.
  std::map<std::string, double> closed_app_hold_s;
  // When this loop last ran the janitor's periodic task (steady clock, ns since its epoch):
  // written on `loop`, read by the HTTP thread, which reports the loop stalled after 2 s.
  std::atomic<int64_t> heartbeat_ns{
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count()};
};

struct SessionContext {
  pool::PoolRegistry* pools = nullptr;
  CancelRegistry cancels;
  AdminHandler* admin = nullptr;
  std::vector<std::unique_ptr<LoopClients>> loops;  // indexed by EventLoop::index()
  std::atomic<int> client_count{0};                 // for max_client_conn
  std::atomic<int> pending_logins{0};               // accepted, not yet authenticated
  std::atomic<bool> shutting_down{false};
  // Logins are refused (57P03): set by a shutdown that waits only for transactions (SIGINT,
  // SHUTDOWN, a second SIGTERM). A shutdown that waits for clients (SIGTERM) still logs in the
  // connections its listener accepted before it closed, as in a rolling restart.
  std::atomic<bool> refuse_logins{false};
  std::atomic<uint64_t> next_client_id{1};

  // auth_hba_file's rules while auth_type = hba (nullptr otherwise), swapped by the App at
  // reload; a login copies the pointer once, under the short lock.
  std::shared_ptr<const auth::HbaRules> hba() const {
    std::lock_guard lock(hba_mu_);
    return hba_;
  }
  void setHba(std::shared_ptr<const auth::HbaRules> rules) {
    std::lock_guard lock(hba_mu_);
    hba_ = std::move(rules);
  }

 private:
  mutable std::mutex hba_mu_;
  std::shared_ptr<const auth::HbaRules> hba_;
};

}  // namespace sluice::session
