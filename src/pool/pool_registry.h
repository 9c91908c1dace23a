// PoolRegistry: every Pool, keyed by (database, user), created on first use from the current
// config snapshot, plus the budgets shared between pools (max_db_connections per database,
// max_user_connections per user). Owned by the App. Thread-safe: pools_ and the budgets each
// sit behind one short mutex; lock order is Pool::mu_ before budget_mu_.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"
#include "net/event_loop.h"
#include "net/tls.h"
#include "pool/pool.h"

namespace sluice::pool {

class PoolRegistry {
 public:
  explicit PoolRegistry(std::vector<net::EventLoop*> loops);

  // Swaps in a new snapshot; existing pools take their new settings. The TLS contexts are built
  // from the snapshot's files first: a certificate or key that does not load throws
  // config::ConfigError naming the setting, and nothing changes.
  void setConfig(std::shared_ptr<const config::Config> cfg,
                 std::shared_ptr<const config::UserList> users);
  std::shared_ptr<const config::Config> config() const;
  std::shared_ptr<const config::UserList> userList() const;
  // The context for accepting TLS from clients; nullptr when client_tls_sslmode is disable.
  std::shared_ptr<const net::TlsContext> clientTls() const;

  // The pool for a client of `database` logged in as `user`; nullptr and a message when the
  // database is not configured.
  std::shared_ptr<Pool> get(const std::string& database, const std::string& user,
                            std::string* error);
  std::vector<std::shared_ptr<Pool>> all() const;
  // Upkeep, every tick of the App's janitor: every pool's janitor runs (it keeps min_pool_size
  // open), the pool whose client has waited longest first (shared budgets go to it).
  void janitor();

  // Budgets across pools. Callers hold the requesting pool's mutex.
  bool tryTakeBudget(const std::string& db, const std::string& user, int max_db, int max_user);
  void releaseBudget(const std::string& db, const std::string& user);
  // Server logins in flight per database, at most `limit` (server_connect_parallelism). Any
  // thread; callers may hold a pool's mutex.
  bool tryTakeLoginSlot(const std::string& db, int limit);
  void releaseLoginSlot(const std::string& db);
  // A slot of a budget shared by several pools freed: the pool whose client has waited longest
  // among those sharing db's or user's budget gets to connect (PgBouncer serves such pools in a
  // fixed order and can starve all but the first). Call without any pool's mutex.
  void growLongestWaiting(const std::string& db, const std::string& user);
  // How many pools have clients waiting on a full shared budget; while none does, a release
  // need not look at other pools (the common case costs one atomic load).
  void noteBudgetBlocked(bool blocked) {
    budget_blocked_pools_.fetch_add(blocked ? 1 : -1, std::memory_order_relaxed);
  }
  bool anyBudgetBlocked() const {
    return budget_blocked_pools_.load(std::memory_order_relaxed) > 0;
  }
  // The oldest waiter among the other pools sharing db's or user's budget whose clients wait
  // for lack of a budget slot. Call without any pool's mutex.
  std::optional<TimePoint> oldestBlockedWaiter(const std::string& db, const std::string& user,
                                               const Pool* except);
  // Closes one idle server of another pool that shares db's or user's budget with `except`
  // (an empty db or user means that budget is not the one that is full).
  void evictIdleFor(const std::string& db, const std::string& user, const Pool* except);

  // The admin console's PAUSE/RESUME and DISABLE/ENABLE, by database name ("" = every database
  // for PAUSE). Applied to the pools that exist and to those created later. Each returns the
  // pools it touched.
  std::vector<std::shared_ptr<Pool>> setPaused(const std::string& database, bool paused);
  std::vector<std::shared_ptr<Pool>> setDisabled(const std::string& database, bool disabled);
  bool pausedAll() const;
  bool databasePaused(const std::string& database) const;  // by PAUSE db or KILL db
  bool databaseDisabled(const std::string& database) const;

  const std::vector<net::EventLoop*>& loops() const { return loops_; }
  uint64_t nextServerId() { return next_server_id_.fetch_add(1, std::memory_order_relaxed); }

 private:
  // Pools of databases with a forced user and min_pool_size are created with the config (by
  // setConfig), so that they warm up before any client comes; returns those it created.
  std::vector<std::shared_ptr<Pool>> createWarmPools();
  PoolSettings resolve(const config::Config& cfg, const config::UserList* users,
                       const std::string& database, const std::string& user) const;

  std::vector<net::EventLoop*> loops_;
  mutable std::mutex mu_;
  std::shared_ptr<const config::Config> cfg_;                                   // GUARDED_BY(mu_)
  std::shared_ptr<const config::UserList> users_;                               // GUARDED_BY(mu_)
  std::shared_ptr<const net::TlsContext> client_tls_;                           // GUARDED_BY(mu_)
  std::shared_ptr<const net::TlsContext> server_tls_;                           // GUARDED_BY(mu_)
  std::map<std::pair<std::string, std::string>, std::shared_ptr<Pool>> pools_;  // GUARDED_BY(mu_)
  bool paused_all_ = false;                                                     // GUARDED_BY(mu_)
  std::set<std::string> paused_dbs_;                                            // GUARDED_BY(mu_)
  std::set<std::string> disabled_dbs_;                                          // GUARDED_BY(mu_)
  std::mutex budget_mu_;
  std::map<std::string, int> db_used_;    // GUARDED_BY(budget_mu_)
  std::map<std::string, int> user_used_;  // GUARDED_BY(budget_mu_)
  std::map<std::string, int> logins_;     // GUARDED_BY(budget_mu_), per database
  std::atomic<uint64_t> next_server_id_{1};
  std::atomic<int> budget_blocked_pools_{0};
};

}  // namespace sluice::pool
