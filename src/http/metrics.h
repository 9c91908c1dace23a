// Metrics: GET /metrics in the Prometheus text exposition format (0.0.4). Names carry units,
// counters end in _total; every metric is listed in docs/metrics.md.
//
// Pool metrics read thread-safe state only (Pool::stats() under the pool's short lock, the
// summed statistics shards, relaxed atomics). Per-application metrics need every loop's
// ClientSessions, which only their own loop may read: gatherUsage() posts a task to each
// loop and the calling (HTTP) thread waits for the answers with a deadline; a loop never waits.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "admin/pool_views.h"
#include "session/session_context.h"

namespace sluice::http {

// What every loop's clients hold, per application_name and per pool; nullopt if some loop did not
// answer within `timeout` (it is stalled: /health says which).
std::optional<admin::Usage> gatherUsage(session::SessionContext* ctx,
                                        std::chrono::milliseconds timeout);

// The whole exposition. `usage` null: the families gathered from the loops are left out.
std::string renderMetrics(const session::SessionContext& ctx, const admin::Usage* usage);

// At most this many application_name label values; the rest are summed into "(other)", so a
// client that invents names cannot grow the exposition without bound.
inline constexpr size_t kMaxApplicationNames = 100;

}  // namespace sluice::http
