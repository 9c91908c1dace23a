// `sluice stress`: waves of concurrent connections against a PostgreSQL endpoint (sluice,
// PgBouncer or PostgreSQL itself), each one connect + login + query (+ a hold, optionally
// inside a transaction) + disconnect, with a report per wave. One thread: non-blocking sockets
// and poll(2). Runs in the calling thread; not re-entrant.
#pragma once

#include <string>

namespace sluice::tools {

struct StressOptions {
  std::string url;  // postgres://user:password@host:port/db
  int requests = 50;
  int waves = 10;
  int delay_ms = 1000;
  std::string query = "SELECT 1";
  int hold_ms = 0;
  bool in_transaction = false;
  std::string ops;        // http://host:port of sluice's http_listen; "" = none
  std::string json_path;  // "" = no JSON file
  int timeout_ms = 10000;
};

// Prints the report to stdout, the live progress line to stderr when it is a terminal. Returns
// the exit code: 0 when every request succeeded, 1 when some failed, 2 for bad options.
int runStress(const StressOptions& opts);

}  // namespace sluice::tools
