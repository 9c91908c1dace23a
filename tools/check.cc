#include "tools/check.h"

#include <fmt/format.h>

#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "tools/check_plan.h"
#include "tools/pg_connection.h"

namespace sluice::tools {

namespace {

// Tried users per database at most: each failed attempt is a failed login in PostgreSQL's log.
constexpr size_t kMaxLoginAttempts = 4;

int toInt(const std::optional<std::string>& v) { return v ? std::atoi(v->c_str()) : 0; }

const std::vector<std::string> kServerQueries = {
    "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections'),"
    " coalesce(current_setting('reserved_connections', true), '0'),"
    " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    " AND pid <> pg_backend_pid())",
    "SELECT rolname, rolconnlimit, rolsuper, rolcanlogin FROM pg_roles",
    "SELECT datname, datconnlimit FROM pg_database",
    // to_jsonb: the columns differ between versions (active_time is 14+).
    "SELECT to_jsonb(d)::text, extract(epoch from now() - coalesce(d.stats_reset,"
    " pg_postmaster_start_time()))::float8 FROM pg_stat_database d"
    " WHERE datname = current_database()"};

ServerFacts factsFrom(const std::vector<QueryResult>& r) {
  ServerFacts f;
  if (!r[0].rows.empty() && r[0].rows[0].size() == 4) {
    const auto& row = r[0].rows[0];
    f.max_connections = toInt(row[0]);
    f.superuser_reserved_connections = toInt(row[1]);
    f.reserved_connections = toInt(row[2]);
    f.in_use = toInt(row[3]);
  }
  for (const auto& row : r[1].rows) {
    if (row.size() != 4 || !row[0]) continue;
    bool super = row[2] && *row[2] == "t";
    bool login = row[3] && *row[3] == "t";
    if (login) f.login_roles.insert(*row[0]);
    int limit = toInt(row[1]);
    if (login && !super && limit >= 0) f.rolconnlimit[*row[0]] = limit;
  }
  for (const auto& row : r[2].rows) {
    if (row.size() != 2 || !row[0]) continue;
    int limit = toInt(row[1]);
    if (limit >= 0) f.datconnlimit[*row[0]] = limit;
  }
  return f;
}

DatabaseActivity activityFrom(const QueryResult& r) {
  DatabaseActivity a;
  if (r.rows.empty() || r.rows[0].size() != 2 || !r.rows[0][0]) return a;
  auto j = nlohmann::json::parse(*r.rows[0][0], nullptr, false);
  if (j.is_discarded()) return a;
  auto num = [&](const char* k) -> double {
    return j.contains(k) && j[k].is_number() ? j[k].get<double>() : 0.0;
  };
  a.transactions = int64_t(num("xact_commit") + num("xact_rollback"));
  a.seconds = r.rows[0][1] ? std::atof(r.rows[0][1]->c_str()) : 0;
  if (j.contains("active_time") && a.transactions > 0) {
    a.ms_per_transaction =
        (num("active_time") + num("idle_in_transaction_time")) / double(a.transactions);
  }
  return a;
}

struct Candidate {
  std::string user;
  std::string secret;
};

// Who `sluice check` can log in as for a [databases] entry: its forced user, or auth_file users
// whose secret can answer a password request (plain text, or md5 for md5 authentication; a
// SCRAM secret cannot log in without the client's proof). Admin users last.
std::vector<Candidate> candidatesFor(const config::Config& cfg, const config::DatabaseEntry& db,
                                     const config::UserList& users) {
  std::vector<Candidate> out;
  auto usable = [](const std::string& s) {
    return protocol::secretKind(s) != protocol::SecretKind::kScram;
  };
  if (!db.user.empty()) {
    std::string secret = db.password;
    if (secret.empty()) {
      if (const std::string* s = users.find(db.user)) secret = *s;
    }
    if (usable(secret)) out.push_back({db.user, secret});
    return out;
  }
  std::vector<Candidate> admins;
  const auto& admin_users = cfg.settings.admin_users;
  for (const auto& [user, secret] : users.secrets) {
    if (!usable(secret)) continue;
    bool admin = std::find(admin_users.begin(), admin_users.end(), user) != admin_users.end();
    (admin ? admins : out).push_back({user, db.password.empty() ? secret : db.password});
  }
  out.insert(out.end(), admins.begin(), admins.end());
  return out;
}

}  // namespace

Survey surveyDatabases(const config::Config& cfg, const config::UserList& users, int timeout_ms,
                       const std::string& application_name, const LoginGate* gate) {
  Survey sv;
  const auto& s = cfg.settings;
  for (const auto& db : cfg.databases) {
    if (db.name == "*") {
      sv.lines.push_back(fmt::format(
          "database *: fallback entry, a pool per database name a client asks for; not sized "
          "(cap with max_user_connections)"));
      continue;
    }
    std::string dbname = db.dbname.empty() ? db.name : db.dbname;
    std::string host =
        db.host.empty() ? (s.unix_socket_dir.empty() ? "/tmp" : s.unix_socket_dir) : db.host;
    std::string server = fmt::format("{}:{}", host, db.port);
    auto ep = resolveEndpoint(host, db.port);
    if (!ep) {
      sv.unreachable.push_back(fmt::format("database {}: {}", db.name, ep.message()));
      continue;
    }
    std::vector<Candidate> cands = candidatesFor(cfg, db, users);
    if (cands.empty()) {
      sv.unreachable.push_back(
          fmt::format("database {}: no user to log in as: {} (a SCRAM secret cannot log in; give "
                      "sluice check a userlist with a plain or md5 secret, or use --no-connect)",
                      db.name,
                      db.user.empty() ? "the auth_file has no plain or md5 secret"
                                      : "no plain or md5 password for user \"" + db.user + "\""));
      continue;
    }
    std::vector<std::string> tried;
    bool ok = false;
    for (size_t i = 0; i < cands.size() && i < kMaxLoginAttempts; ++i) {
      ClientProtocol::Login login{
          cands[i].user, cands[i].secret, dbname, {{"application_name", application_name}}};
      if (gate) gate->enter(db.name);
      auto res = runQueries(*ep, login, kServerQueries, std::chrono::milliseconds(timeout_ms));
      if (gate) gate->leave(db.name);
      if (!res) {
        tried.push_back(fmt::format("{}: {}", cands[i].user, res.message()));
        continue;
      }
      sv.lines.push_back(fmt::format("database {}: connected to {}/{} as {}", db.name, ep->text,
                                     dbname, cands[i].user));
      if (!sv.facts.count(server)) {
        sv.facts[server] = factsFrom(*res);
        sv.login_roles[server] = sv.facts[server].login_roles;
      }
      sv.activity[db.name] = activityFrom((*res)[3]);
      ok = true;
      break;
    }
    if (!ok) {
      sv.unreachable.push_back(fmt::format("database {}: cannot connect to {}/{}: tried {}",
                                           db.name, ep->text, dbname, fmt::join(tried, "; ")));
    }
  }
  return sv;
}

std::vector<std::string> budgetProblems(const config::Config& cfg, const config::UserList& users,
                                        int timeout_ms, std::vector<std::string>* unreachable,
                                        const LoginGate* gate) {
  Survey sv = surveyDatabases(cfg, users, timeout_ms, "sluice budget_check", gate);
  std::vector<std::string> auth_users;
  for (const auto& [u, secret] : users.secrets) auth_users.push_back(u);
  std::vector<DatabasePlan> plans = planDatabases(cfg, auth_users, sv.login_roles);
  std::vector<std::string> out;
  for (const auto& v : judgeServers(cfg, plans, sv.facts, 1)) {
    for (const auto& p : v.problems) out.push_back(v.server + ": " + p);
  }
  if (unreachable) *unreachable = std::move(sv.unreachable);
  return out;
}

int runCheck(const CheckOptions& opts) {
  std::shared_ptr<const config::Config> cfg;
  config::UserList users;
  try {
    cfg = config::loadConfig(opts.config_path);
    if (!cfg->settings.auth_file.empty()) users = config::loadUserList(cfg->settings.auth_file);
  } catch (const config::ConfigError& e) {
    std::cerr << "sluice check: configuration error: " << e.what() << "\n";
    return 2;
  }
  if (opts.instances < 1) {
    std::cerr << "sluice check: --instances must be at least 1\n";
    return 2;
  }
  const auto& s = cfg->settings;
  std::vector<std::string> auth_users;
  for (const auto& [u, secret] : users.secrets) auth_users.push_back(u);

  std::cout << fmt::format(
      "sluice check {}{}\n", cfg->path,
      opts.instances == 1 ? "" : fmt::format(" (--instances {})", opts.instances));
  std::cout << fmt::format("config: ok: {} [databases] entries, {} auth_file users, pool_mode {}\n",
                           cfg->databases.size(), auth_users.size(),
                           config::poolModeName(s.pool_mode));
  for (const auto& w : cfg->warnings) std::cout << "warning: " << w << "\n";

  Survey sv;
  if (opts.connect) sv = surveyDatabases(*cfg, users, opts.timeout_ms, "sluice check", nullptr);
  for (const auto& line : sv.lines) std::cout << line << "\n";
  auto& facts = sv.facts;
  auto& login_roles = sv.login_roles;
  auto& activity = sv.activity;
  auto& unreachable = sv.unreachable;
  std::vector<DatabasePlan> plans = planDatabases(*cfg, auth_users, login_roles);
  std::vector<ServerVerdict> verdicts = judgeServers(*cfg, plans, facts, opts.instances);

  std::cout << "\npools (worst case server connections per sluice instance):\n";
  for (const auto& d : plans) {
    for (const auto& p : d.pools) {
      std::cout << fmt::format("  {}/{}: pool_size {} + reserve_pool_size {} = {}\n", p.database,
                               p.user, p.pool_size, p.reserve_pool_size, p.worst());
    }
    if (d.any_user) {
      std::cout << fmt::format("  {}/<any user>: a pool per user a client names (auth_query)\n",
                               d.name);
    }
    if (!d.skipped_users.empty()) {
      std::cout << fmt::format("  {}: not counted, no login role on the server: {}\n", d.name,
                               fmt::join(d.skipped_users, ", "));
    }
    std::cout << fmt::format("  database {} ({} on {}): worst case {}{}\n", d.name, d.dbname,
                             d.server, boundText(d.worst()),
                             d.max_db_connections > 0
                                 ? fmt::format(" (max_db_connections {})", d.max_db_connections)
                                 : "");
  }

  std::cout << "\nservers:\n";
  bool failed = false;
  for (const auto& v : verdicts) {
    if (v.facts) {
      std::cout << fmt::format(
          "  {}: max_connections {}, superuser_reserved_connections {}{}, usable {}, in use now "
          "{}\n",
          v.server, v.facts->max_connections, v.facts->superuser_reserved_connections,
          v.facts->reserved_connections
              ? fmt::format(", reserved_connections {}", v.facts->reserved_connections)
              : "",
          v.facts->usable(), v.facts->in_use);
    } else {
      std::cout << fmt::format("  {}: worst case {} per instance; limits not read ({})\n", v.server,
                               boundText(v.worst_per_instance),
                               opts.connect ? "could not connect" : "--no-connect");
    }
    for (const auto& n : v.notes) std::cout << "    " << n << "\n";
    for (const auto& p : v.problems) {
      std::cout << "    error: " << p << "\n";
      failed = true;
    }
  }
  for (const auto& u : unreachable) std::cout << "  warning: " << u << "\n";

  std::vector<std::string> findings = timeoutFindings(*cfg);
  if (!findings.empty()) {
    std::cout << "\ntimeouts:\n";
    for (const auto& f : findings) std::cout << "  " << f << "\n";
  }
  if (!activity.empty()) {
    std::cout << "\nthroughput (Little's law):\n";
    for (const auto& d : plans) {
      auto a = activity.find(d.name);
      if (a == activity.end()) continue;
      int pool_size = d.pools.empty() ? s.default_pool_size : d.pools.front().pool_size;
      std::cout << "  " << littlesLawAdvice(d.name, pool_size, a->second) << "\n";
    }
  }
  if (failed) {
    std::cout << "\nresult: this configuration can exhaust the database (see error: above)\n";
    return 1;
  }
  std::cout << fmt::format("\nresult: ok{}\n",
                           unreachable.empty() ? "" : " (some databases could not be checked)");
  return 0;
}

}  // namespace sluice::tools
