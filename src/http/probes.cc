#include "http/probes.h"

#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

namespace sluice::http {

using nlohmann::json;

ProbeResult health(const session::SessionContext& ctx) {
  int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  int64_t limit = std::chrono::duration_cast<std::chrono::nanoseconds>(kStallAfter).count();
  json stalled = json::array();
  for (size_t i = 0; i < ctx.loops.size(); ++i) {
    if (now_ns - ctx.loops[i]->heartbeat_ns.load(std::memory_order_relaxed) > limit) {
      stalled.push_back(i);
    }
  }
  if (stalled.empty()) return {200, json{{"status", "ok"}}.dump()};
  return {503, json{{"status", "unhealthy"}, {"stalled_loops", stalled}}.dump()};
}

ProbeResult readiness(const session::SessionContext& ctx) {
  std::string ts = isoTimestamp(std::chrono::system_clock::now());
  bool paused = ctx.pools->pausedAll();
  bool unavailable = ctx.shutting_down.load() || paused;
  bool degraded = false;
  json pools = json::array();
  for (const auto& p : ctx.pools->all()) {
    pool::PoolStats st = p->stats();
    pool::Pool::LoginHealth login = p->loginHealth();
    double utilization = st.pool_size > 0 ? 100.0 * st.active / st.pool_size : 0.0;
    json j = {{"poolName", p->name()},
              {"database", st.database},
              {"user", st.user},
              {"totalCount", st.total},
              {"idleCount", st.idle},
              {"activeCount", st.active},
              {"waitingCount", st.waiting},
              {"utilizationPercent", std::round(utilization * 10) / 10},
              {"maxWaitMs", static_cast<long long>(std::llround(st.max_wait_s * 1000))},
              {"timestamp", ts}};
    if (login.down) {
      // Logins keep failing: clients of this pool are failed fast until one succeeds.
      unavailable = true;
      j["down"] = true;
      j["lastLoginError"] = login.last_error;
    } else if (login.consecutive_failures > 0 &&
               now() - login.last_error_at < kLoginFailureWindow) {
      // The last login attempt failed, recently. PostgreSQL full (53300) leaves the pool
      // serving with the servers it has: degraded. Anything else means the database is down or
      // refuses sluice. A successful login clears it; so does a minute without attempts.
      if (login.busy) {
        degraded = true;
      } else {
        unavailable = true;
      }
      j["lastLoginError"] = login.last_error;
    }
    if (st.warming) {
      // min_pool_size is not open yet since start: clients would wait for logins.
      unavailable = true;
      j["warming"] = true;
    }
    if (st.standing) {
      degraded = true;
      j["queueStanding"] = true;
    }
    if (st.paused || p->disabled()) {
      // PAUSE, KILL or DISABLE from the admin console: this database serves nobody new.
      unavailable = true;
      j["paused"] = st.paused;
      j["disabled"] = p->disabled();
    }
    if (st.waiting > 0) degraded = true;
    pools.push_back(std::move(j));
  }
  const char* status = unavailable ? "unavailable" : degraded ? "degraded" : "ok";
  json body = {{"status", status}, {"timestamp", ts}, {"pools", std::move(pools)}};
  if (paused) body["paused"] = true;
  // replace: a server's error text need not be valid UTF-8.
  return {unavailable ? 503 : 200, body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

}  // namespace sluice::http
