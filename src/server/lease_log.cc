#include "server/lease_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

#include "admin/pool_views.h"
#include "common/log.h"
#include "session/client_session.h"

namespace sluice::server {

namespace {
double secondsBetween(TimePoint a, TimePoint b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

void checkLeases(session::LoopClients& lc, TimePoint t, const config::Settings& s) {
  if (s.hold_warn_threshold.count() <= 0 && lc.leases.reported() == 0) return;
  std::vector<diagnostics::Lease> holding;
  std::unordered_map<uint64_t, session::ClientSession*> by_id;
  for (session::ClientSession* c : lc.clients) {
    if (c->isAdmin() || !c->server() || c->closing() ||
        c->poolMode() == config::PoolMode::kSession) {
      continue;
    }
    holding.push_back({c->id(), c->serverSince()});
    by_id.emplace(c->id(), c);
  }
  auto scan = lc.leases.scan(t, s.hold_warn_threshold, holding);
  for (const auto& lease : scan.overdue) {
    session::ClientSession* c = by_id.at(lease.client_id);
    const pool::ServerConn* server = c->server();
    std::string_view state = admin::transactionState(*server, *c);
    bool idle_in_tx = state.rfind("idle in transaction", 0) == 0;
    std::string doing =
        idle_in_tx ? fmt::format("{} for {:.1f} s: it holds the server while sending nothing",
                                 state, secondsBetween(c->lastActivityAt(), t))
                   : std::string(state);
    SLOG_WARN(
        "{} application_name '{}' has held a server (backend pid {}) for {:.1f} s, past "
        "hold_warn_threshold ({:g} s); {}; last statement: \"{}\"",
        c->prefix(), c->applicationName(), server->backendPid(), secondsBetween(lease.since, t),
        s.hold_warn_threshold.count() / 1000.0, doing, c->lastStatement());
    auto& shard = c->pool()->shard(lc.loop->index());
    (idle_in_tx ? shard.hold_warnings_idle_in_transaction : shard.hold_warnings_active).add();
    lc.leases.remember(lease.client_id,
                       fmt::format("{} application_name '{}'", c->prefix(), c->applicationName()));
  }
  for (const auto& end : scan.ended) {
    bool gone = std::none_of(lc.clients.begin(), lc.clients.end(), [&](auto* c) {
      return c->id() == end.lease.client_id && !c->closing();
    });
    SLOG_INFO(
        "{} {} its server after holding it about {:.1f} s (it was reported past "
        "hold_warn_threshold)",
        end.who, gone ? "disconnected and released" : "gave back",
        secondsBetween(end.lease.since, t));
  }
}

}  // namespace sluice::server
