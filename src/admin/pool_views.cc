#include "admin/pool_views.h"

#include <algorithm>

#include "session/client_session.h"

namespace sluice::admin {

PoolTotals& PoolTotals::operator+=(const PoolTotals& o) {
  xact_count += o.xact_count;
  query_count += o.query_count;
  bytes_received += o.bytes_received;
  bytes_sent += o.bytes_sent;
  xact_time_us += o.xact_time_us;
  query_time_us += o.query_time_us;
  wait_time_us += o.wait_time_us;
  client_logins += o.client_logins;
  server_connects += o.server_connects;
  server_login_failures += o.server_login_failures;
  for (size_t i = 0; i < disconnects.size(); ++i) disconnects[i] += o.disconnects[i];
  hold_warnings_active += o.hold_warnings_active;
  hold_warnings_idle_in_transaction += o.hold_warnings_idle_in_transaction;
  for (size_t i = 0; i < pins.size(); ++i) pins[i] += o.pins[i];
  pins_ended += o.pins_ended;
  for (const auto& [k, n] : o.server_errors) server_errors[k] += n;
  for (const auto& [k, n] : o.sluice_errors) sluice_errors[k] += n;
  return *this;
}

uint64_t HistogramTotals::count() const {
  uint64_t n = 0;
  for (uint64_t b : buckets) n += b;
  return n;
}

PoolTotals sumShards(const pool::Pool& pool) {
  PoolTotals t;
  for (const auto& s : pool.shards()) {
    t.xact_count += s->xact_count.get();
    t.query_count += s->query_count.get();
    t.bytes_received += s->bytes_received.get();
    t.bytes_sent += s->bytes_sent.get();
    t.xact_time_us += s->xact_time_us.get();
    t.query_time_us += s->query_time_us.get();
    t.wait_time_us += s->wait_time_us.get();
    t.client_logins += s->client_logins.get();
    t.server_connects += s->server_connects.get();
    t.server_login_failures += s->server_login_failures.get();
    for (size_t i = 0; i < t.disconnects.size(); ++i) t.disconnects[i] += s->disconnects[i].get();
    t.hold_warnings_active += s->hold_warnings_active.get();
    t.hold_warnings_idle_in_transaction += s->hold_warnings_idle_in_transaction.get();
    for (size_t i = 0; i < t.pins.size(); ++i) t.pins[i] += s->pins[i].get();
    t.pins_ended += s->pins_ended.get();
    s->server_errors.forEach([&](const std::string& k, uint64_t n) { t.server_errors[k] += n; });
    s->sluice_errors.forEach([&](const std::string& k, uint64_t n) { t.sluice_errors[k] += n; });
  }
  return t;
}

HistogramTotals sumHistogram(const pool::Pool& pool, stats::Histogram pool::PoolShard::*which) {
  HistogramTotals h;
  for (const auto& s : pool.shards()) {
    const stats::Histogram& one = (*s).*which;
    for (size_t i = 0; i < h.buckets.size(); ++i) h.buckets[i] += one.bucket(i);
    h.sum_seconds += one.sumSeconds();
  }
  return h;
}

std::array<uint64_t, stats::kNumCloseReasons> poollessDisconnects(
    const session::SessionContext& ctx) {
  std::array<uint64_t, stats::kNumCloseReasons> out{};
  for (const auto& lc : ctx.loops) {
    for (size_t i = 0; i < out.size(); ++i) out[i] += lc->disconnects[i].get();
  }
  return out;
}

AppUsage& AppUsage::operator+=(const AppUsage& o) {
  clients += o.clients;
  servers_held += o.servers_held;
  idle_in_transaction += o.idle_in_transaction;
  longest_hold_s = std::max(longest_hold_s, o.longest_hold_s);
  hold_seconds_total += o.hold_seconds_total;
  return *this;
}

Usage& Usage::operator+=(const Usage& o) {
  for (const auto& [k, u] : o.apps) apps[k] += u;
  for (const auto& [k, u] : o.pools) pools[k] += u;
  return *this;
}

const char* transactionState(const pool::ServerConn& s, const session::ClientSession& c) {
  if (c.state() == session::ClientSession::State::kSyncing || c.owed() > 0) return "active";
  switch (s.txStatus()) {
    case 'T':
      return "idle in transaction";
    case 'E':
      return "idle in transaction (aborted)";
    default:
      return "idle";
  }
}

Usage usageOnLoop(session::LoopClients& lc) {
  using S = session::ClientSession::State;
  Usage out;
  TimePoint t = now();
  for (const auto& [app, held] : lc.closed_app_hold_s) out.apps[app].hold_seconds_total += held;
  for (session::ClientSession* c : lc.clients) {
    S st = c->state();
    if (c->isAdmin() || st == S::kStartup || st == S::kAuth || st == S::kClosed) continue;
    AppUsage one;
    one.clients = 1;
    one.hold_seconds_total = c->heldSecondsTotal();
    if (const pool::ServerConn* s = c->server()) {
      one.servers_held = 1;
      if (std::string_view(transactionState(*s, *c)).rfind("idle in transaction", 0) == 0) {
        one.idle_in_transaction = 1;
      }
      TimePoint since = c->serverSince() != TimePoint{} ? c->serverSince() : c->requestStartedAt();
      if (since != TimePoint{}) {
        one.longest_hold_s = std::max(0.0, std::chrono::duration<double>(t - since).count());
        one.hold_seconds_total += one.longest_hold_s;
      }
    }
    out.apps[c->applicationName()] += one;
    out.pools[{c->database(), c->pool() ? c->pool()->user() : c->user()}] += one;
  }
  return out;
}

}  // namespace sluice::admin
