// Probes: the JSON bodies and status codes of GET /health (liveness) and GET /readyz
// (readiness with per-pool numbers). Pure reads of thread-safe state (loop heartbeats,
// Pool::stats(), Pool::loginHealth(), the shutdown and pause flags); callable from any thread,
// never posts to a loop, so a stalled loop cannot stall the probe that reports it.
#pragma once

#include <chrono>
#include <string>

#include "session/session_context.h"

namespace sluice::http {

struct ProbeResult {
  int status = 200;
  std::string body;  // JSON
};

// A loop whose heartbeat is older than this is reported stalled.
inline constexpr std::chrono::seconds kStallAfter{2};

// 200 {"status":"ok"} while every worker loop has ticked within kStallAfter; otherwise 503
// {"status":"unhealthy","stalled_loops":[index, ...]}.
ProbeResult health(const session::SessionContext& ctx);

// A pool whose last server login failed less than this ago makes /readyz unavailable.
inline constexpr std::chrono::seconds kLoginFailureWindow{60};

// {"status":"ok|degraded|unavailable","timestamp":ISO8601,"pools":[...]}: 503 "unavailable"
// while shutting down or paused (PAUSE; a pool paused by PAUSE db or KILL db, or of a database
// disabled by DISABLE, carries "paused"/"disabled"), or while a pool's last server login failed
// within kLoginFailureWindow (its database is unreachable or refuses sluice; a pool with such a
// failure carries "lastLoginError", a pool failing clients fast "down"), or while a pool is still
// opening its min_pool_size servers since start ("warming"); 200 "degraded" while some pool has
// clients waiting, its wait queue standing ("queueStanding") or PostgreSQL full (53300); else
// 200 "ok".
ProbeResult readiness(const session::SessionContext& ctx);

}  // namespace sluice::http
