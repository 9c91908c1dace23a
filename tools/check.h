// `sluice check CONFIG`: validates a configuration, reads the limits of every PostgreSQL server
// it points at, and prints a sizing report (see check_plan.h for the arithmetic). Runs in the
// calling thread, one blocking connection at a time.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"
#include "tools/check_plan.h"

namespace sluice::tools {

struct CheckOptions {
  std::string config_path;
  int instances = 1;      // sluice processes sharing these databases
  bool connect = true;    // false: --no-connect, config arithmetic only
  int timeout_ms = 5000;  // per connection
};

// Report on stdout, warnings and errors on stderr. Exit code: 0 fits, 1 the configuration can
// exhaust a database (or a role or database connection limit), 2 a configuration error.
int runCheck(const CheckOptions& opts);

// What connecting to every [databases] entry (except "*") told: each server's limits, each
// database's activity, progress lines for the report, and the entries that could not be read.
// Its connections carry `application_name`.
struct Survey {
  std::map<std::string, ServerFacts> facts;  // by "host:port"
  std::map<std::string, std::set<std::string>> login_roles;
  std::map<std::string, DatabaseActivity> activity;  // by [databases] name
  std::vector<std::string> lines;
  std::vector<std::string> unreachable;
};
// Around each login: a running sluice makes its own checks wait for a login slot of the
// database (server_connect_parallelism), so they never add to a login storm.
struct LoginGate {
  std::function<void(const std::string& database)> enter;
  std::function<void(const std::string& database)> leave;
};
Survey surveyDatabases(const config::Config& cfg, const config::UserList& users, int timeout_ms,
                       const std::string& application_name, const LoginGate* gate);

// The budget check of `sluice serve` (budget_check): the problems `sluice check` reports as
// errors for one instance (pools that can exceed a database's usable slots, or a role's or
// database's connection limit), each naming the numbers. Blocking; `unreachable` gets the
// databases that could not be read. Its connections are application_name "sluice budget_check".
std::vector<std::string> budgetProblems(const config::Config& cfg, const config::UserList& users,
                                        int timeout_ms, std::vector<std::string>* unreachable,
                                        const LoginGate* gate);

}  // namespace sluice::tools
