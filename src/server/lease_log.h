// The leak detector's log lines (hold_warn_threshold, HikariCP's leak detection): run by the
// janitor's periodic task on each worker loop, never by the data path. When a client has held
// its server longer than the threshold, one warning names the client (id, application_name,
// user, address), how long, what it is doing (running a query, or idle in transaction: holding
// the server while sending nothing) and its last statement; when it gives the server back, one
// line says so. Transaction and statement pools only (a session-mode client holds its server by
// design). Stateless; the memory is LoopClients::leases; on `lc.loop` only.
#pragma once

#include "common/clock.h"
#include "config/config.h"
#include "session/session_context.h"

namespace sluice::server {

void checkLeases(session::LoopClients& lc, TimePoint t, const config::Settings& s);

}  // namespace sluice::server
