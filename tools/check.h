// `sluice check CONFIG`: validates a configuration, reads the limits of every PostgreSQL server
// it points at, and prints a sizing report (see check_plan.h for the arithmetic). Runs in the
// calling thread, one blocking connection at a time.
#pragma once

#include <string>

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

}  // namespace sluice::tools
