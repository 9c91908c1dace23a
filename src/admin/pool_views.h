// Read-only views over the pools and the worker loops, shared by the admin console (SHOW STATS)
// and the HTTP endpoints (/metrics, /readyz): a pool's statistics shards summed, and what the
// clients of one loop hold, per application_name. Plain values; the functions say where they
// may run.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "pool/pool.h"
#include "session/session_context.h"
#include "stats/close_reason.h"
#include "stats/counter.h"

namespace sluice::session {
class ClientSession;
}

namespace sluice::admin {

// One pool's counters, summed over its per-loop shards (PgBouncer's PgStats and more).
struct PoolTotals {
  uint64_t xact_count = 0;
  uint64_t query_count = 0;
  uint64_t bytes_received = 0;  // from clients
  uint64_t bytes_sent = 0;      // to clients
  uint64_t xact_time_us = 0;
  uint64_t query_time_us = 0;
  uint64_t wait_time_us = 0;
  uint64_t client_logins = 0;
  uint64_t server_connects = 0;
  uint64_t server_login_failures = 0;
  std::array<uint64_t, stats::kNumCloseReasons> disconnects{};
  uint64_t hold_warnings_active = 0;
  uint64_t hold_warnings_idle_in_transaction = 0;
  std::array<uint64_t, protocol::kNumSessionStates> pins{};  // by protocol::sessionStateIndex
  uint64_t pins_ended = 0;                                   // pinned clients that disconnected
  std::map<std::string, uint64_t> server_errors;             // by SQLSTATE
  std::map<std::string, uint64_t> sluice_errors;

  PoolTotals& operator+=(const PoolTotals& o);
};

// A histogram summed over shards: per-bucket counts (not cumulative), the last one +Inf.
struct HistogramTotals {
  std::array<uint64_t, stats::Histogram::kBounds.size() + 1> buckets{};
  double sum_seconds = 0;
  uint64_t count() const;
};

// Any thread: the shards are single-writer relaxed atomics (values may lag a little).
PoolTotals sumShards(const pool::Pool& pool);
HistogramTotals sumHistogram(const pool::Pool& pool, stats::Histogram pool::PoolShard::*which);
// Closes of clients that never reached a pool, over every loop. Any thread.
std::array<uint64_t, stats::kNumCloseReasons> poollessDisconnects(
    const session::SessionContext& ctx);

// What the clients of one application_name hold, on one loop (then summed over loops).
struct AppUsage {
  uint64_t clients = 0;              // logged-in clients, console sessions excluded
  uint64_t servers_held = 0;         // servers lent to them right now
  uint64_t idle_in_transaction = 0;  // of those, idle inside a transaction
  double longest_hold_s = 0;         // the longest current hold
  double hold_seconds_total = 0;     // all their holds so far, closed clients' and current ones

  AppUsage& operator+=(const AppUsage& o);
};
using AppUsageMap = std::map<std::string, AppUsage>;  // application_name -> usage

// The same per pool ((database, user) -> usage) and per application_name, from one loop or summed.
struct Usage {
  AppUsageMap apps;
  std::map<std::pair<std::string, std::string>, AppUsage> pools;
  Usage& operator+=(const Usage& o);
};

// Runs on lc.loop only (reads its ClientSessions).
Usage usageOnLoop(session::LoopClients& lc);

// PostgreSQL's pg_stat_activity words for what a held server is doing: "active", "idle",
// "idle in transaction", "idle in transaction (aborted)". On the server's loop.
const char* transactionState(const pool::ServerConn& server, const session::ClientSession& client);

}  // namespace sluice::admin
