// Pool: the server connections of one (database, user) pair across all worker loops, with the
// global limit, the idle lists and the wait queue. One per pair, owned by the PoolRegistry,
// shared by every loop. Thread-safe: all state sits behind mu_, a short lock that is never held
// across I/O (connects, writes and hand-offs are posted to loops after it is released).
//
// Counting: total_ counts every server that exists or is logging in, exactly once, from the
// moment a connect is launched until ServerConn::close(); so the limit is global and a connect
// that fails or times out stops counting at once (no phantom connections).
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "config/config.h"
#include "net/event_loop.h"
#include "overload/adaptive_limit.h"
#include "overload/codel.h"
#include "overload/wait_queue.h"
#include "pool/server_conn.h"
#include "protocol/session_state.h"
#include "protocol/wire.h"
#include "stats/close_reason.h"
#include "stats/counter.h"
#include "stats/sqlstate_counts.h"

namespace sluice::pool {

class PoolRegistry;

// A client that can wait for a server. Implemented by ClientSession.
class PoolClient {
 public:
  virtual ~PoolClient() = default;
  // Both run on the client's own loop. A server handed over may already be closed (it died
  // while moving); the client then asks again.
  virtual void onServerAssigned(std::shared_ptr<ServerConn> server) = 0;
  // `reason`: why, for the client's close (query_wait_timeout, a saturated or overloaded pool, an
  // unreachable database, a refused server login).
  virtual void onAcquireFailed(const protocol::ErrorInfo& error, stats::CloseReason reason) = 0;
  virtual net::EventLoop* clientLoop() const = 0;
};

// The pool's settings, resolved from a config snapshot (replaced on reload).
struct PoolSettings {
  config::PoolMode mode = config::PoolMode::kSession;
  int pool_size = 20;
  int min_pool_size = 0;
  int reserve_pool_size = 0;
  Millis reserve_pool_timeout{5000};
  Millis query_wait_timeout{120000};
  Millis server_lifetime{3600000};
  Millis server_idle_timeout{600000};
  Millis server_login_retry{15000};
  std::string server_reset_query = "DISCARD ALL";
  bool server_reset_query_always = false;
  bool server_round_robin = false;
  int max_db_connections = 0;
  int max_user_connections = 0;
  int server_connect_parallelism = 4;  // per database (the PoolRegistry counts)
  int max_waiting_clients = 0;         // 0 = unlimited
  int max_pinned_servers = -1;         // -1: half of pool_size (at least 1)
  bool adaptive = false;               // pool_size_mode = adaptive
  Millis codel_target{0};              // 0 = CoDel off
  Millis codel_interval{1000};
  Millis codel_deadline{1000};
  ServerLogin login;
};

struct PoolStats {
  std::string database;
  std::string user;
  config::PoolMode mode;
  int pool_size = 0;
  int total = 0;  // servers existing or logging in
  int idle = 0;
  int login = 0;
  int active = 0;   // lent to clients
  int waiting = 0;  // clients in the wait queue
  int clients = 0;  // logged-in clients of this pool
  double max_wait_s = 0;
  bool paused = false;    // PAUSE or KILL from the admin console: hands out no server
  bool warming = false;   // min_pool_size not reached yet since start (/readyz waits for it)
  bool standing = false;  // CoDel: the wait queue is standing (newest served first)
  bool down = false;      // server logins keep failing: waiting and new clients fail fast
  int limit = 0;          // servers that may be in use at once: pool_size, or the adaptive limit
  int stale = 0;          // servers from before the last RECONNECT/reload, closing when released
};

// Statistics of one pool written by one loop (a shard per loop; see stats/counter.h).
struct PoolShard {
  stats::Counter xact_count;      // transactions completed (ReadyForQuery back to idle)
  stats::Counter query_count;     // Query and Sync messages relayed
  stats::Counter bytes_received;  // from clients
  stats::Counter bytes_sent;      // to clients
  stats::Counter xact_time_us;
  stats::Counter query_time_us;
  stats::Counter wait_time_us;  // clients waiting for a server
  stats::Counter client_logins;
  stats::Counter server_connects;  // logins started
  stats::Counter server_login_failures;
  stats::Histogram wait_seconds;  // acquire time, 0 when a server was free
  stats::Histogram hold_seconds;  // how long a client held a server (transaction mode: per tx)
  std::array<stats::Counter, stats::kNumCloseReasons> disconnects;
  // Leases that passed hold_warn_threshold (the leak detector), by what the client was doing
  // then: running a query, or idle inside a transaction. Written by the loop's janitor task.
  stats::Counter hold_warnings_active;
  stats::Counter hold_warnings_idle_in_transaction;
  // Clients pinned to their server by session state transaction pooling cannot carry, by kind
  // (protocol::sessionStateIndex), and pinned clients gone since: the difference is how many
  // are pinned now. A client pins and leaves on its own loop, so both are this shard's.
  std::array<stats::Counter, protocol::kNumSessionStates> pins;
  stats::Counter pins_ended;
  // ErrorResponses clients received: relayed from PostgreSQL, and sluice's own.
  stats::SqlstateCounts server_errors;
  stats::SqlstateCounts sluice_errors;
};

class Pool : public std::enable_shared_from_this<Pool> {
 public:
  Pool(PoolRegistry* registry, std::string database, std::string user, PoolSettings settings,
       const std::vector<net::EventLoop*>& loops);

  struct AcquireResult {
    std::shared_ptr<ServerConn> server;  // set when an idle server on the caller's loop was free
    uint64_t wait_id = 0;                // otherwise the client waits under this id
  };
  // Called on the client's loop. Either returns a server at once, or queues the client and later
  // calls client->onServerAssigned / onAcquireFailed on its loop.
  AcquireResult acquire(const std::shared_ptr<PoolClient>& client, const std::string& fair_key);
  // Removes a waiting client; false if it was not waiting any more (a server is on its way).
  bool cancelWait(uint64_t wait_id);
  // Gives back a server with no transaction open, on the server's loop.
  // `t`: the caller's current time, when it has one (saves a clock read per transaction).
  void release(std::shared_ptr<ServerConn> server, TimePoint t = now());
  // Runs server_reset_query first (session mode, or server_reset_query_always), then releases;
  // a server whose reset fails is closed. `full`: the server carries session state (a pinned
  // client's), so DISCARD ALL must run too: it is the reset when server_reset_query is empty,
  // and runs after it when that query does not DISCARD ALL itself (DISCARD ALL cannot share a
  // query string with other statements).
  void resetAndRelease(std::shared_ptr<ServerConn> server, bool full = false);
  // Rolls back the transaction a client left open (idle_transaction_timeout), then releases the
  // server, through server_reset_query first when `then_reset` (session mode); a server whose
  // ROLLBACK fails is closed. On the server's loop.
  void rollbackAndRelease(std::shared_ptr<ServerConn> server, bool then_reset);
  // A server is closing (ServerConn::close): it leaves the idle list at once, though it counts
  // until onServerClosed().
  void forgetIdle(ServerConn* server);
  // Accounting when a server closes for any reason (called by ServerConn::close).
  void onServerClosed(ServerConn* server);

  // Periodic upkeep, from the janitor thread: idle timeouts and lifetimes, wait deadlines,
  // the reserve pool, min_pool_size, retries after failed logins.
  void janitor(TimePoint now);
  void applySettings(PoolSettings settings);
  PoolSettings settings() const;
  PoolStats stats() const;
  // Server logins that failed in a row (0 once one succeeds) and the last failure; for /readyz.
  struct LoginHealth {
    int consecutive_failures = 0;
    std::string last_error;
    TimePoint last_error_at{};
    bool busy = false;  // the last failure was 53300 (PostgreSQL is full): degraded, not down
    bool down = false;  // kDownAfterFailures unreachable failures in a row: clients fail fast
  };
  // Logins that fail in a row for a reason other than a full server (refused, timed out,
  // PostgreSQL starting or shutting down) before the pool counts its database as down.
  static constexpr int kDownAfterFailures = 3;
  // The longest pause between login attempts after failures (server_login_retry if shorter):
  // one login at a time every 2 s is gentle on a struggling server, and a database that comes
  // back is found within 2 s.
  static constexpr Millis kMaxLoginBackoff{2000};
  LoginHealth loginHealth() const;
  // ParameterStatus set PostgreSQL sent at the first login, replayed to clients at their login.
  std::vector<std::pair<std::string, std::string>> welcome() const;
  protocol::TrackedSet welcomeTracked() const;  // the tracked values among welcome()
  // An equal set seen before, shared (clients of one application mostly send the same values,
  // and servers then hold that same set: hand-overs compare pointers). Login path only.
  protocol::TrackedSet internTracked(const protocol::TrackedSet& set);
  bool hasWelcome() const;
  void learnScramClientKey(const std::array<uint8_t, 32>& key);
  // The user's secret found by auth_query (no auth_file entry, no password= in [databases]):
  // later server logins use it. The latest lookup wins (a changed password is picked up).
  void learnSecret(const std::string& secret);
  // Clients pinned to a server by session state (transaction and statement mode) may hold at
  // most maxPinnedServers() of the pool's servers, so that LISTEN sessions and the like cannot
  // starve its transactions. tryPin() takes a place if one is free; forcePin() takes one
  // regardless (the state already reached the server); unpin() when the client leaves.
  bool tryPin();
  void forcePin() { pinned_.fetch_add(1, std::memory_order_relaxed); }
  void unpin() { pinned_.fetch_sub(1, std::memory_order_relaxed); }
  int pinnedServers() const { return pinned_.load(std::memory_order_relaxed); }
  int maxPinnedServers() const;
  void clientJoined() { clients_.fetch_add(1, std::memory_order_relaxed); }
  void clientLeft() { clients_.fetch_sub(1, std::memory_order_relaxed); }
  // Closes every idle server and marks active ones to close on release (RECONNECT, reload).
  void closeIdle(const std::string& reason);
  // PAUSE / RESUME (the admin console, through the PoolRegistry). While paused the pool hands
  // out and opens no server: idle servers close now, lent ones when they come back, and clients
  // queue until RESUME. Its lifecycle is the waiting list and total_, so PAUSE is done when
  // stats().total reaches 0.
  void setPaused(bool paused);
  // DISABLE / ENABLE: new clients of the pool are refused at login (the session asks).
  void setDisabled(bool disabled) { disabled_.store(disabled, std::memory_order_relaxed); }
  bool disabled() const { return disabled_.load(std::memory_order_relaxed); }
  // The application_names holding this pool's servers, most first ("api 12, worker 3"), set by
  // the App from the worker loops about once a second while clients wait; named in the errors
  // of a saturated pool.
  void setHolders(std::string holders);
  // Since when the oldest client has waited (nullopt: nobody waits); for fairness across pools
  // that share a budget.
  std::optional<TimePoint> oldestWaiter() const;
  // The same, only while its clients wait because a shared budget is full.
  std::optional<TimePoint> oldestBlockedWaiter() const;
  // Launches connects for waiting clients, if the limits allow (a shared budget slot freed).
  void grow();

  // Closes the longest-idle server, if any, to free a shared budget slot for another pool.
  bool closeOneIdle(const std::string& reason);
  // The idle servers of loop `loop_index` at this moment (SHOW SERVERS). Only that loop may
  // read them, and only their loop-owned fields: a client on another loop may take one meanwhile.
  std::vector<std::shared_ptr<ServerConn>> idleServers(int loop_index) const {
    std::lock_guard lock(mu_);
    return idle_[size_t(loop_index)];
  }

  PoolShard& shard(int loop_index) { return *shards_[size_t(loop_index)]; }
  const std::vector<std::unique_ptr<PoolShard>>& shards() const { return shards_; }

  const std::string& database() const { return database_; }
  const std::string& user() const { return user_; }
  std::string name() const { return database_ + "/" + user_; }

 private:
  struct Waiter {
    std::shared_ptr<PoolClient> client;
  };
  // All *Locked functions require mu_.
  bool mayOpenLocked(bool reserve);
  void growLocked(net::EventLoop* loop, bool reserve);  // loop nullptr: round robin
  void launchConnectLocked(net::EventLoop* loop);
  void deliver(std::shared_ptr<PoolClient> client, std::shared_ptr<ServerConn> server);
  void onLoginDone(const std::shared_ptr<ServerConn>& server, Status st,
                   const std::string& sqlstate);
  void failWaiters(std::vector<std::shared_ptr<PoolClient>> clients, const protocol::ErrorInfo& e,
                   stats::CloseReason reason);
  std::string saturationMessageLocked() const;
  protocol::ErrorInfo unreachableErrorLocked() const;
  void backOffLocked();  // after a failed login: exponential, with jitter
  // After PostgreSQL refused a login as full (53300), one login at a time until one succeeds:
  // a full server gets a probe, not a round of server_connect_parallelism refusals. (Logins that
  // fail otherwise stay parallel: their failures are what tells a database that is down.)
  bool probingLocked() const { return last_failure_busy_ && login_ > 0; }
  int activeLocked() const { return total_ - idle_count_ - login_; }
  // pool_size_mode = adaptive: as many servers are in use (or logging in) as the limit allows.
  bool atAdaptiveLimitLocked() const {
    return settings_.adaptive && activeLocked() + login_ >= adaptive_.limit();
  }
  void serveWithinLimitLocked(
      std::vector<std::pair<std::shared_ptr<PoolClient>, std::shared_ptr<ServerConn>>>& out);
  void keepMinimumLocked();
  void setBudgetBlockedLocked(bool blocked);
  void removeIdleLocked(ServerConn* server);  // from its idle list, if it is in one  //
                                              // budget_blocked_, counted in the registry too

  PoolRegistry* registry_;
  const std::string database_;
  const std::string user_;
  std::vector<net::EventLoop*> loops_;
  std::vector<std::unique_ptr<PoolShard>> shards_;  // one per loop, fixed at construction

  mutable std::mutex mu_;
  PoolSettings settings_;                                       // GUARDED_BY(mu_)
  int total_ = 0;                                               // GUARDED_BY(mu_)
  int login_ = 0;                                               // GUARDED_BY(mu_)
  int idle_count_ = 0;                                          // GUARDED_BY(mu_)
  std::vector<std::vector<std::shared_ptr<ServerConn>>> idle_;  // per loop, MRU at back
  overload::WaitQueue<Waiter> waiters_;                         // GUARDED_BY(mu_)
  std::vector<std::pair<std::string, std::string>> welcome_;    // GUARDED_BY(mu_)
  protocol::TrackedSet welcome_tracked_;                        // GUARDED_BY(mu_)
  static constexpr size_t kMaxInternedTracked = 64;
  std::vector<protocol::TrackedSet> interned_tracked_;       // GUARDED_BY(mu_)
  bool has_welcome_ = false;                                 // GUARDED_BY(mu_)
  std::optional<std::array<uint8_t, 32>> scram_client_key_;  // GUARDED_BY(mu_)
  std::string learned_secret_;                               // GUARDED_BY(mu_)
  uint64_t generation_ = 0;     // bumped by closeIdle(); older servers close on release
  int current_generation_ = 0;  // servers of generation_ (GUARDED_BY(mu_)); the rest are stale
  bool paused_ = false;         // GUARDED_BY(mu_)
  std::atomic<bool> disabled_{false};
  std::atomic<bool> budget_shared_{false};  // max_db_connections or max_user_connections set
  std::string last_login_error_;            // GUARDED_BY(mu_)
  std::string last_login_sqlstate_;
  TimePoint last_login_error_at_{};
  int login_failures_ = 0;  // consecutive, any transient kind (the backoff's exponent)
  bool last_failure_busy_ = false;
  int unreachable_failures_ = 0;  // consecutive, not counting 53300 (a full server is up)
  bool down_ = false;
  std::chrono::system_clock::time_point down_since_{};  // the first failure of the streak
  TimePoint retry_at_{};                                // no new connect before this after failures
  TimePoint last_backoff_at_{};  // logins launched before it belong to the round that failed
  bool warmed_ = false;          // min_pool_size was reached once
  overload::Codel codel_{Millis(0), Millis(1000)};
  overload::AdaptiveLimit adaptive_{1, 20};  // used with settings_.adaptive
  std::string holders_;                      // see setHolders()
  uint64_t rng_ = 0x9e3779b97f4a7c15ULL;     // the backoff's jitter (xorshift)
  uint64_t next_wait_id_ = 1;
  bool budget_blocked_ = false;  // waiters could not get a connect because a shared budget is full
  size_t next_loop_ = 0;         // round robin for pre-warming
  std::atomic<int> clients_{0};
  std::atomic<int> pinned_{0};
};

}  // namespace sluice::pool
