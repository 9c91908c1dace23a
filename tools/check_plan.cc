#include "tools/check_plan.h"

#include <fmt/format.h>

#include <algorithm>

namespace sluice::tools {

namespace {

Bound minBound(Bound a, Bound b) {
  if (!a) return b;
  if (!b) return a;
  return std::min(*a, *b);
}

Bound addBound(Bound a, Bound b) {
  if (!a || !b) return std::nullopt;
  return *a + *b;
}

Bound capOf(int limit) { return limit > 0 ? Bound(limit) : std::nullopt; }

std::string durText(config::Duration d) {
  auto ms = d.count();
  if (ms % 1000 == 0) return fmt::format("{} s", ms / 1000);
  return fmt::format("{} ms", ms);
}

std::string serverKey(const config::Config& cfg, const config::DatabaseEntry& db) {
  if (db.host.empty()) {
    std::string dir = cfg.settings.unix_socket_dir.empty() ? "/tmp" : cfg.settings.unix_socket_dir;
    return fmt::format("{}:{}", dir, db.port);
  }
  return fmt::format("{}:{}", db.host, db.port);
}

int userMaxConnections(const config::Config& cfg, const std::string& user) {
  const config::UserEntry* u = cfg.findUser(user);
  return u && u->max_user_connections ? *u->max_user_connections
                                      : cfg.settings.max_user_connections;
}

std::string plural(int64_t n, const char* one, const char* many) {
  return fmt::format("{} {}", n, n == 1 ? one : many);
}

}  // namespace

std::string boundText(const Bound& b) { return b ? std::to_string(*b) : "unbounded"; }

Bound DatabasePlan::worst() const {
  Bound sum = any_user ? Bound() : Bound(0);
  for (const auto& p : pools) sum = addBound(sum, p.worst());
  return minBound(sum, capOf(max_db_connections));
}

std::vector<DatabasePlan> planDatabases(
    const config::Config& cfg, const std::vector<std::string>& auth_file_users,
    const std::map<std::string, std::set<std::string>>& login_roles_by_server) {
  const auto& s = cfg.settings;
  std::vector<DatabasePlan> plans;
  for (const auto& db : cfg.databases) {
    if (db.name == "*") continue;
    DatabasePlan p;
    p.name = db.name;
    p.server = serverKey(cfg, db);
    p.dbname = db.dbname.empty() ? db.name : db.dbname;
    p.max_db_connections = db.max_db_connections ? *db.max_db_connections : s.max_db_connections;
    auto roles_it = login_roles_by_server.find(p.server);
    const std::set<std::string>* roles =
        roles_it == login_roles_by_server.end() ? nullptr : &roles_it->second;
    std::vector<std::string> users;
    if (!db.user.empty()) {
      users = {db.user};
    } else {
      bool any = !s.auth_user.empty() || !db.auth_user.empty() || s.auth_file.empty();
      if (any && roles) {
        users.assign(roles->begin(), roles->end());  // auth_query can find any login role
      } else {
        users = auth_file_users;
        p.any_user = any;
      }
    }
    for (const auto& u : users) {
      if (roles && !roles->count(u)) {
        p.skipped_users.push_back(u);
        continue;
      }
      const config::UserEntry* ue = cfg.findUser(u);
      PoolPlan pool;
      pool.database = db.name;
      pool.user = u;
      pool.pool_size = ue && ue->pool_size ? *ue->pool_size
                       : db.pool_size      ? *db.pool_size
                                           : s.default_pool_size;
      pool.reserve_pool_size = db.reserve_pool_size ? *db.reserve_pool_size : s.reserve_pool_size;
      p.pools.push_back(std::move(pool));
    }
    plans.push_back(std::move(p));
  }
  return plans;
}

std::vector<ServerVerdict> judgeServers(const config::Config& cfg,
                                        const std::vector<DatabasePlan>& plans,
                                        const std::map<std::string, ServerFacts>& facts,
                                        int instances) {
  std::vector<ServerVerdict> out;
  for (const auto& plan : plans) {
    auto it = std::find_if(out.begin(), out.end(),
                           [&](const ServerVerdict& v) { return v.server == plan.server; });
    if (it == out.end()) {
      out.push_back({});
      it = out.end() - 1;
      it->server = plan.server;
    }
    it->databases.push_back(&plan);
  }
  for (auto& v : out) {
    Bound by_db = 0;
    bool any_user = false;
    std::map<std::string, int64_t> per_user;  // this server's pools of each user
    std::vector<const PoolPlan*> pools;
    for (const DatabasePlan* d : v.databases) {
      by_db = addBound(by_db, d->worst());
      any_user = any_user || d->any_user;
      for (const auto& p : d->pools) {
        per_user[p.user] += p.worst();
        pools.push_back(&p);
      }
    }
    Bound by_user = any_user ? Bound() : Bound(0);
    std::map<std::string, Bound> user_worst;
    for (const auto& [user, n] : per_user) {
      user_worst[user] = minBound(n, capOf(userMaxConnections(cfg, user)));
      by_user = addBound(by_user, user_worst[user]);
    }
    v.worst_per_instance = minBound(by_db, by_user);
    v.worst_total = v.worst_per_instance ? Bound(*v.worst_per_instance * instances) : std::nullopt;
    std::string times = instances == 1 ? "" : fmt::format(" x {} instances", instances);

    auto f = facts.find(v.server);
    if (f == facts.end()) continue;
    v.facts = f->second;
    const ServerFacts& sf = f->second;
    int usable = sf.usable();
    std::string slots = fmt::format(
        "{} usable slots (max_connections {} - superuser_reserved_connections {}{})", usable,
        sf.max_connections, sf.superuser_reserved_connections,
        sf.reserved_connections ? fmt::format(" - reserved_connections {}", sf.reserved_connections)
                                : "");
    if (!v.worst_total) {
      std::vector<std::string> open;
      for (const DatabasePlan* d : v.databases) {
        if (!d->worst()) open.push_back(d->name);
      }
      v.exhausts = true;
      v.problems.push_back(fmt::format(
          "server {}: worst case unbounded > {}: database {} creates a pool for any user a "
          "client names (auth_user/auth_query or no auth_file) and has no max_db_connections; "
          "set max_db_connections (at most {} per database{})",
          v.server, slots, fmt::join(open, ", "),
          std::max<int64_t>(0, usable / instances / int64_t(v.databases.size())),
          instances == 1 ? "" : " with " + std::to_string(instances) + " instances"));
    } else if (*v.worst_total > usable) {
      v.exhausts = true;
      std::stable_sort(pools.begin(), pools.end(), [](const PoolPlan* a, const PoolPlan* b) {
        return a->worst() > b->worst();
      });
      std::vector<std::string> named;
      for (size_t i = 0; i < pools.size() && i < 5; ++i) {
        named.push_back(fmt::format("{}/{} {} (pool_size {} + reserve_pool_size {})",
                                    pools[i]->database, pools[i]->user, pools[i]->worst(),
                                    pools[i]->pool_size, pools[i]->reserve_pool_size));
      }
      if (pools.size() > 5) named.push_back(fmt::format("and {} more", pools.size() - 5));
      v.problems.push_back(fmt::format(
          "server {}: worst case {} server connections{} > {}: pools {}; "
          "lower pool_size/default_pool_size, cap each database with max_db_connections = {}, "
          "or raise max_connections to at least {}",
          v.server, *v.worst_total,
          instances == 1 ? "" : fmt::format(" ({} per instance{})", *v.worst_per_instance, times),
          slots, fmt::join(named, ", "),
          std::max<int64_t>(0, usable / instances / int64_t(v.databases.size())),
          *v.worst_total + sf.superuser_reserved_connections + sf.reserved_connections));
    } else {
      v.notes.push_back(fmt::format("worst case {} server connections{} of {}: fits ({} to spare)",
                                    *v.worst_total, times, slots, usable - *v.worst_total));
      if (*v.worst_total + sf.in_use > usable) {
        v.notes.push_back(fmt::format(
            "warning: {} connections are in use now (other clients, or this sluice if it runs): "
            "with them only {} slots remain for a worst case of {}",
            sf.in_use, usable - sf.in_use, *v.worst_total));
      }
    }
    for (const auto& [user, limit] : sf.rolconnlimit) {
      auto uw = user_worst.find(user);
      if (uw == user_worst.end() || !uw->second) continue;
      int64_t need = *uw->second * instances;
      if (need > limit) {
        v.problems.push_back(fmt::format(
            "role {}: worst case {} server connections{} > its rolconnlimit {} (ALTER ROLE {} "
            "CONNECTION LIMIT {}), lower its pools or set max_user_connections = {}",
            user, need, times, limit, user, need, limit / instances));
      }
    }
    for (const DatabasePlan* d : v.databases) {
      auto dl = sf.datconnlimit.find(d->dbname);
      Bound w = d->worst();
      if (dl == sf.datconnlimit.end()) continue;
      if (!w || *w * instances > dl->second) {
        v.problems.push_back(fmt::format(
            "database {}: worst case {} server connections{} > datconnlimit {} of {}; set "
            "max_db_connections = {} or raise the limit (ALTER DATABASE {} CONNECTION LIMIT ...)",
            d->name, w ? std::to_string(*w * instances) : "unbounded", times, dl->second, d->dbname,
            dl->second / instances, d->dbname));
      }
    }
  }
  return out;
}

std::vector<std::string> timeoutFindings(const config::Config& cfg) {
  const auto& s = cfg.settings;
  std::vector<std::string> out;
  auto connect_and_retry = s.server_connect_timeout + s.server_login_retry;
  if (s.query_wait_timeout.count() > 0 && s.query_wait_timeout < connect_and_retry) {
    out.push_back(fmt::format(
        "warning: query_wait_timeout ({}) is shorter than server_connect_timeout ({}) + "
        "server_login_retry ({}) = {}: when a server login fails or hangs, waiting clients time "
        "out before sluice has retried once; raise query_wait_timeout above {} or lower "
        "server_connect_timeout / server_login_retry",
        durText(s.query_wait_timeout), durText(s.server_connect_timeout),
        durText(s.server_login_retry), durText(connect_and_retry), durText(connect_and_retry)));
  }
  if (s.server_lifetime.count() > 0 && s.server_idle_timeout.count() > 0 &&
      s.server_lifetime < s.server_idle_timeout) {
    out.push_back(fmt::format(
        "warning: server_lifetime ({}) is shorter than server_idle_timeout ({}): servers are "
        "recycled by age before they could ever be closed for idleness, so server_idle_timeout "
        "does nothing; make server_idle_timeout shorter than server_lifetime",
        durText(s.server_lifetime), durText(s.server_idle_timeout)));
  }
  bool reserve = s.reserve_pool_size > 0;
  for (const auto& db : cfg.databases) reserve = reserve || db.reserve_pool_size.value_or(0) > 0;
  if (reserve && s.query_wait_timeout.count() > 0 &&
      s.reserve_pool_timeout >= s.query_wait_timeout) {
    out.push_back(fmt::format(
        "warning: reserve_pool_timeout ({}) is not shorter than query_wait_timeout ({}): clients "
        "give up before the reserve pool is ever used; make reserve_pool_timeout shorter",
        durText(s.reserve_pool_timeout), durText(s.query_wait_timeout)));
  }
  bool transaction_mode = s.pool_mode == config::PoolMode::kTransaction;
  for (const auto& db : cfg.databases) {
    transaction_mode = transaction_mode || db.pool_mode == config::PoolMode::kTransaction;
  }
  for (const auto& u : cfg.users) {
    transaction_mode = transaction_mode || u.pool_mode == config::PoolMode::kTransaction;
  }
  if (transaction_mode && s.idle_transaction_timeout.count() == 0) {
    out.push_back(
        "advice: idle_transaction_timeout is 0 (disabled) with transaction pooling: a client "
        "that stays idle inside a transaction (an HTTP or AI call between BEGIN and COMMIT) "
        "holds its server for as long as it likes and its pool's other clients wait; set "
        "idle_transaction_timeout (e.g. 30 s) so such a client is ended with a clear error");
  }
  if (s.query_wait_timeout.count() == 0) {
    out.push_back(
        "advice: query_wait_timeout is 0: clients wait for a server forever when the pool is "
        "saturated; set it (PgBouncer's default is 120 s) so they get an error they can retry");
  }
  return out;
}

std::string littlesLawAdvice(const std::string& database, int pool_size,
                             const DatabaseActivity& a) {
  double rate = a.seconds > 0 ? double(a.transactions) / a.seconds : 0;
  if (a.ms_per_transaction && *a.ms_per_transaction > 0 && a.transactions > 0) {
    double ms = *a.ms_per_transaction;
    return fmt::format(
        "{}: {} in {:.0f} s ({:.2f}/s), {:.2f} ms each on average (active + idle in "
        "transaction, pg_stat_database): a pool of {} serves at most {} * 1000 / {:.2f} = {:.0f} "
        "transactions/s per instance (Little's law); the measured rate keeps {:.2f} server "
        "connections busy on average",
        database, plural(a.transactions, "transaction", "transactions"), a.seconds, rate, ms,
        pool_size, pool_size, ms, pool_size * 1000.0 / ms, rate * ms / 1000.0);
  }
  if (rate > 0) {
    return fmt::format(
        "{}: {:.2f} transactions/s measured (pg_stat_database), transaction time unknown: a pool "
        "of {} saturates when transactions take longer than {} * 1000 / {:.2f} = {:.0f} ms "
        "(Little's law)",
        database, rate, pool_size, pool_size, rate, pool_size * 1000.0 / rate);
  }
  return fmt::format(
      "{}: no transactions recorded yet; a pool of {} at T ms per transaction serves at most {} "
      "* 1000 / T transactions/s (e.g. {:.0f}/s at 50 ms)",
      database, pool_size, pool_size, pool_size * 1000.0 / 50);
}

}  // namespace sluice::tools
