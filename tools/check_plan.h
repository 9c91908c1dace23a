// The arithmetic of `sluice check`: which pools a configuration can create, their worst-case
// server connections against a PostgreSQL server's usable slots and role/database limits,
// timeouts that contradict each other, and Little's-law advice. Pure functions over a loaded
// Config and the facts read from PostgreSQL (no I/O); thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"

namespace sluice::tools {

// A count that may be unbounded (nullopt), e.g. pools for any user a client names.
using Bound = std::optional<int64_t>;
std::string boundText(const Bound& b);  // "12" or "unbounded"

// What one PostgreSQL server said about itself (one per host:port).
struct ServerFacts {
  int max_connections = 0;
  int superuser_reserved_connections = 0;
  int reserved_connections = 0;             // PostgreSQL 16+, else 0
  int in_use = 0;                           // client backends other than the check's own
  std::map<std::string, int> rolconnlimit;  // login roles with a limit (>= 0), not superusers
  std::map<std::string, int> datconnlimit;  // databases with a limit (>= 0)
  std::set<std::string> login_roles;        // roles with rolcanlogin
  int usable() const {
    return max_connections - superuser_reserved_connections - reserved_connections;
  }
};

// pg_stat_database of one database, for Little's law.
struct DatabaseActivity {
  int64_t transactions = 0;  // xact_commit + xact_rollback
  double seconds = 0;        // since stats_reset (or server start)
  // Milliseconds a transaction holds a backend on average (active_time +
  // idle_in_transaction_time over transactions, PostgreSQL 14+); nullopt when unknown.
  std::optional<double> ms_per_transaction;
};

struct PoolPlan {
  std::string database;
  std::string user;
  int pool_size = 0;
  int reserve_pool_size = 0;
  int worst() const { return pool_size + reserve_pool_size; }
};

struct DatabasePlan {
  std::string name;    // the [databases] key
  std::string server;  // "host:port" as configured
  std::string dbname;  // on the server
  std::vector<PoolPlan> pools;
  // Pools may exist for users not enumerable here (auth_user/auth_query, or no auth_file):
  // without a max_db_connections cap the worst case is unbounded.
  bool any_user = false;
  std::vector<std::string> skipped_users;  // auth_file users that are no login role on the server
  int max_db_connections = 0;              // 0 = none
  Bound worst() const;
};

// The pools `cfg` can create for each [databases] entry except "*", for the given auth_file
// users. `login_roles` (per server, when known) drops users that cannot log in there and, with
// auth_query, stands for "any user".
std::vector<DatabasePlan> planDatabases(
    const config::Config& cfg, const std::vector<std::string>& auth_file_users,
    const std::map<std::string, std::set<std::string>>& login_roles_by_server);

struct ServerVerdict {
  std::string server;
  std::vector<const DatabasePlan*> databases;
  Bound worst_per_instance;  // min(sum of databases' worst, sum of users' worst)
  Bound worst_total;         // times instances
  std::optional<ServerFacts> facts;
  bool exhausts = false;              // worst_total > usable slots
  std::vector<std::string> problems;  // exhaustion, role and database limits; each names numbers
  std::vector<std::string> notes;
};
std::vector<ServerVerdict> judgeServers(const config::Config& cfg,
                                        const std::vector<DatabasePlan>& plans,
                                        const std::map<std::string, ServerFacts>& facts,
                                        int instances);

// Settings that contradict each other or leave a known hole; each names both settings, their
// values and what to change. Advice is prefixed "advice: ", contradictions "warning: ".
std::vector<std::string> timeoutFindings(const config::Config& cfg);

// Little's law for one database's pools: how many transactions per second the pool can serve
// at the measured transaction time, and what the measured rate needs.
std::string littlesLawAdvice(const std::string& database, int pool_size, const DatabaseActivity& a);

}  // namespace sluice::tools
