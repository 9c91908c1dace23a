#include "http/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <future>
#include <memory>
#include <utility>
#include <vector>

#include "admin/loop_gather.h"
#include "protocol/session_state.h"
#include "stats/close_reason.h"

namespace sluice::http {

namespace {

using Labels = std::vector<std::pair<const char*, std::string>>;

// Appends families and samples; the caller emits every sample of a family right after it.
class Exposition {
 public:
  void family(const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                   type);
  }
  void sample(std::string_view name, const Labels& labels, uint64_t v) {
    head(name, labels);
    fmt::format_to(std::back_inserter(out_), " {}\n", v);
  }
  void sample(std::string_view name, const Labels& labels, int64_t v) {
    head(name, labels);
    fmt::format_to(std::back_inserter(out_), " {}\n", v);
  }
  void sample(std::string_view name, const Labels& labels, int v) {
    sample(name, labels, int64_t{v});
  }
  void sample(std::string_view name, const Labels& labels, double v) {
    head(name, labels);
    fmt::format_to(std::back_inserter(out_), " {}\n", v);
  }
  void histogram(const char* name, const Labels& labels, const admin::HistogramTotals& h) {
    const auto& bounds = stats::Histogram::kBounds;
    uint64_t cumulative = 0;
    std::string bucket = std::string(name) + "_bucket";
    for (size_t i = 0; i <= bounds.size(); ++i) {
      cumulative += h.buckets[i];
      Labels with_le = labels;
      with_le.emplace_back("le", i < bounds.size() ? fmt::format("{}", bounds[i]) : "+Inf");
      sample(bucket, with_le, cumulative);
    }
    sample(std::string(name) + "_sum", labels, h.sum_seconds);
    sample(std::string(name) + "_count", labels, cumulative);
  }
  std::string take() { return std::move(out_); }

 private:
  void head(std::string_view name, const Labels& labels) {
    out_.append(name);
    if (labels.empty()) return;
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) out_ += ',';
      out_ += labels[i].first;
      out_ += "=\"";
      for (char c : labels[i].second) {  // the format's three escapes
        if (c == '\\') {
          out_ += "\\\\";
        } else if (c == '"') {
          out_ += "\\\"";
        } else if (c == '\n') {
          out_ += "\\n";
        } else {
          out_ += c;
        }
      }
      out_ += '"';
    }
    out_ += '}';
  }
  std::string out_;
};

// One pool, read once per scrape.
struct PoolSample {
  Labels labels;
  pool::PoolStats st;
  admin::PoolTotals totals;
  admin::HistogramTotals wait, hold;
  int login_failures = 0;
};

}  // namespace

std::optional<admin::Usage> gatherUsage(session::SessionContext* ctx,
                                        std::chrono::milliseconds timeout) {
  // Shared with the loops: a loop that answers after the deadline still has a promise to keep.
  auto promise = std::make_shared<std::promise<admin::Usage>>();
  auto result = promise->get_future();
  admin::gatherLoops<admin::Usage>(
      ctx, [](session::LoopClients& lc) { return admin::usageOnLoop(lc); },
      [promise](std::vector<admin::Usage>& parts) {
        admin::Usage all;
        for (auto& part : parts) all += part;
        promise->set_value(std::move(all));
      });
  if (result.wait_for(timeout) != std::future_status::ready) return std::nullopt;
  return result.get();
}

std::string renderMetrics(const session::SessionContext& ctx, const admin::Usage* usage) {
  const admin::AppUsageMap* apps = usage ? &usage->apps : nullptr;
  Exposition e;
  e.family("sluice_up", "gauge", "1 while sluice serves");
  e.sample("sluice_up", {}, 1);
  e.family("sluice_info", "gauge", "Build information");
  e.sample("sluice_info", {{"version", SLUICE_VERSION}}, 1);
  e.family("sluice_client_connections", "gauge",
           "Client connections open, in any state (max_client_conn counts these)");
  e.sample("sluice_client_connections", {}, ctx.client_count.load(std::memory_order_relaxed));
  e.family("sluice_pending_logins", "gauge",
           "Client connections accepted and not yet authenticated (max_pending_logins caps them)");
  e.sample("sluice_pending_logins", {}, ctx.pending_logins.load(std::memory_order_relaxed));
  e.family("sluice_loop_heartbeat_age_seconds", "gauge",
           "Seconds since each worker loop last ran its periodic task (stalled above 2)");
  auto t = Clock::now();
  for (size_t i = 0; i < ctx.loops.size(); ++i) {
    std::chrono::nanoseconds beat(ctx.loops[i]->heartbeat_ns.load(std::memory_order_relaxed));
    double age = std::chrono::duration<double>(t.time_since_epoch() - beat).count();
    e.sample("sluice_loop_heartbeat_age_seconds", {{"loop", std::to_string(i)}},
             std::max(0.0, age));
  }

  std::vector<PoolSample> pools;
  for (const auto& p : ctx.pools->all()) {
    PoolSample s;
    s.st = p->stats();
    s.labels = {{"database", s.st.database}, {"user", s.st.user}};
    s.totals = admin::sumShards(*p);
    s.wait = admin::sumHistogram(*p, &pool::PoolShard::wait_seconds);
    s.hold = admin::sumHistogram(*p, &pool::PoolShard::hold_seconds);
    s.login_failures = p->loginHealth().consecutive_failures;
    pools.push_back(std::move(s));
  }
  auto perPool = [&](const char* name, const char* type, const char* help, auto value) {
    e.family(name, type, help);
    for (const auto& s : pools) e.sample(name, s.labels, value(s));
  };

  e.family("sluice_pool_server_connections", "gauge",
           "Server connections of the pool by state: active (lent to a client), idle, login");
  for (const auto& s : pools) {
    for (auto [state, n] : {std::pair{"active", s.st.active}, std::pair{"idle", s.st.idle},
                            std::pair{"login", s.st.login}}) {
      Labels l = s.labels;
      l.emplace_back("state", state);
      e.sample("sluice_pool_server_connections", l, n);
    }
  }
  perPool("sluice_pool_size", "gauge", "The pool's configured size (pool_size)",
          [](const PoolSample& s) { return s.st.pool_size; });
  perPool("sluice_pool_waiting_clients", "gauge", "Clients queued for a server",
          [](const PoolSample& s) { return s.st.waiting; });
  perPool("sluice_pool_max_wait_seconds", "gauge",
          "How long the longest-waiting client has waited so far",
          [](const PoolSample& s) { return s.st.max_wait_s; });
  perPool("sluice_pool_utilization_ratio", "gauge",
          "Active server connections / pool_size (above 1 with the reserve pool in use)",
          [](const PoolSample& s) {
            return s.st.pool_size > 0 ? double(s.st.active) / s.st.pool_size : 0.0;
          });
  perPool("sluice_pool_client_connections", "gauge", "Logged-in clients of the pool",
          [](const PoolSample& s) { return s.st.clients; });

  e.family("sluice_pool_wait_seconds", "histogram",
           "Time a client waited for a server at the start of a transaction (0 when one was "
           "free)");
  for (const auto& s : pools) e.histogram("sluice_pool_wait_seconds", s.labels, s.wait);
  e.family("sluice_pool_hold_seconds", "histogram",
           "How long a client held a server (per transaction in transaction mode, per session "
           "in session mode)");
  for (const auto& s : pools) e.histogram("sluice_pool_hold_seconds", s.labels, s.hold);

  auto us = [](uint64_t v) { return double(v) / 1e6; };
  perPool("sluice_pool_transactions_total", "counter", "Transactions completed",
          [](const PoolSample& s) { return s.totals.xact_count; });
  perPool("sluice_pool_transaction_seconds_total", "counter",
          "Time spent in transactions, idle in transaction included",
          [us](const PoolSample& s) { return us(s.totals.xact_time_us); });
  perPool("sluice_pool_queries_total", "counter", "Queries (Query and Sync messages) relayed",
          [](const PoolSample& s) { return s.totals.query_count; });
  perPool("sluice_pool_query_seconds_total", "counter", "Time from a query to its ReadyForQuery",
          [us](const PoolSample& s) { return us(s.totals.query_time_us); });
  perPool("sluice_pool_client_bytes_received_total", "counter", "Bytes received from clients",
          [](const PoolSample& s) { return s.totals.bytes_received; });
  perPool("sluice_pool_client_bytes_sent_total", "counter", "Bytes sent to clients",
          [](const PoolSample& s) { return s.totals.bytes_sent; });
  perPool("sluice_pool_client_logins_total", "counter", "Client logins to the pool",
          [](const PoolSample& s) { return s.totals.client_logins; });
  perPool("sluice_pool_server_logins_total", "counter", "Server logins started",
          [](const PoolSample& s) { return s.totals.server_connects; });
  perPool("sluice_pool_server_login_failures_total", "counter", "Server logins that failed",
          [](const PoolSample& s) { return s.totals.server_login_failures; });
  perPool("sluice_pool_server_login_consecutive_failures", "gauge",
          "Server logins failed in a row (0 after a success); above 0 /readyz answers 503 "
          "unless PostgreSQL was only full (53300)",
          [](const PoolSample& s) { return s.login_failures; });
  perPool("sluice_pool_database_down", "gauge",
          "1 while server logins keep failing and the pool fails its clients fast (08006)",
          [](const PoolSample& s) { return s.st.down ? 1 : 0; });
  perPool("sluice_pool_queue_standing", "gauge",
          "1 while CoDel finds the wait queue standing (newest served first, stale ones shed)",
          [](const PoolSample& s) { return s.st.standing ? 1 : 0; });
  perPool("sluice_pool_server_limit", "gauge",
          "Servers the pool may have in use at once: pool_size, or with pool_size_mode = adaptive "
          "the limit learned from transaction latency",
          [](const PoolSample& s) { return s.st.limit; });
  perPool("sluice_pool_warming", "gauge",
          "1 until the pool has opened its min_pool_size servers once since start",
          [](const PoolSample& s) { return s.st.warming ? 1 : 0; });

  e.family("sluice_pool_timeouts_total", "counter",
           "Clients closed because a timeout expired, by kind (the setting that expired)");
  for (const auto& s : pools) {
    for (size_t r = 0; r < stats::kNumCloseReasons; ++r) {
      const char* kind = stats::closeReasonTimeout(static_cast<stats::CloseReason>(r));
      if (!*kind) continue;
      Labels l = s.labels;
      l.emplace_back("kind", kind);
      e.sample("sluice_pool_timeouts_total", l, s.totals.disconnects[r]);
    }
  }
  e.family("sluice_pool_errors_total", "counter",
           "ErrorResponses sent to clients by SQLSTATE: relayed from PostgreSQL (source=server) "
           "or sluice's own (source=sluice); codes beyond the first 24 per loop count as other");
  for (const auto& s : pools) {
    for (const auto& [source, by_code] : {std::pair{"server", &s.totals.server_errors},
                                          std::pair{"sluice", &s.totals.sluice_errors}}) {
      for (const auto& [code, n] : *by_code) {
        Labels l = s.labels;
        l.emplace_back("sqlstate", code);
        l.emplace_back("source", source);
        e.sample("sluice_pool_errors_total", l, n);
      }
    }
  }
  e.family("sluice_pool_hold_warnings_total", "counter",
           "Server holds that passed hold_warn_threshold (the leak detector), by what the client "
           "was doing: running a query (active) or idle in transaction");
  for (const auto& s : pools) {
    for (auto [state, n] :
         {std::pair{"active", s.totals.hold_warnings_active},
          std::pair{"idle_in_transaction", s.totals.hold_warnings_idle_in_transaction}}) {
      Labels l = s.labels;
      l.emplace_back("state", state);
      e.sample("sluice_pool_hold_warnings_total", l, n);
    }
  }
  perPool("sluice_pool_pinned_clients", "gauge",
          "Clients pinned to their server for the rest of their session by session state "
          "transaction pooling cannot carry (session_state = pin)",
          [](const PoolSample& s) {
            uint64_t pins = 0;
            for (uint64_t n : s.totals.pins) pins += n;
            // Read one after the other: clamp a moment's skew.
            return std::max<int64_t>(0, int64_t(pins) - int64_t(s.totals.pins_ended));
          });
  e.family("sluice_pool_pins_total", "counter",
           "Clients pinned to their server by session state, by kind (the first state each "
           "client created)");
  for (const auto& s : pools) {
    for (size_t k = 0; k < protocol::kNumSessionStates; ++k) {
      Labels l = s.labels;
      l.emplace_back("kind", protocol::sessionStateLabel(protocol::SessionState(k + 1)));
      e.sample("sluice_pool_pins_total", l, s.totals.pins[k]);
    }
  }
  if (usage) {
    auto held = [&](const PoolSample& s) {
      auto it = usage->pools.find({s.st.database, s.st.user});
      return it == usage->pools.end() ? admin::AppUsage{} : it->second;
    };
    perPool("sluice_pool_servers_idle_in_transaction", "gauge",
            "Servers held by a client that is idle inside a transaction (sends nothing)",
            [&](const PoolSample& s) { return held(s).idle_in_transaction; });
    perPool("sluice_pool_longest_hold_seconds", "gauge",
            "How long the pool's longest current holder has held its server",
            [&](const PoolSample& s) { return held(s).longest_hold_s; });
  }

  e.family("sluice_client_disconnects_total", "counter",
           "Client connections closed, by reason (docs/metrics.md maps each to its SQLSTATE); "
           "without database and user for clients that never reached a pool");
  for (const auto& s : pools) {
    for (size_t r = 0; r < stats::kNumCloseReasons; ++r) {
      Labels l = s.labels;
      l.emplace_back("reason", stats::closeReasonToken(static_cast<stats::CloseReason>(r)));
      e.sample("sluice_client_disconnects_total", l, s.totals.disconnects[r]);
    }
  }
  auto poolless = admin::poollessDisconnects(ctx);
  for (size_t r = 0; r < stats::kNumCloseReasons; ++r) {
    e.sample("sluice_client_disconnects_total",
             {{"reason", stats::closeReasonToken(static_cast<stats::CloseReason>(r))}},
             poolless[r]);
  }

  if (apps) {
    // The largest users by clients, the rest summed.
    std::vector<std::pair<std::string, admin::AppUsage>> rows(apps->begin(), apps->end());
    if (rows.size() > kMaxApplicationNames) {
      std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
        return a.second.clients > b.second.clients;
      });
      admin::AppUsage other;
      for (size_t i = kMaxApplicationNames - 1; i < rows.size(); ++i) other += rows[i].second;
      rows.resize(kMaxApplicationNames - 1);
      rows.emplace_back("(other)", other);
    }
    auto perApp = [&](const char* name, const char* type, const char* help, auto value) {
      e.family(name, type, help);
      for (const auto& [app, u] : rows) e.sample(name, {{"application_name", app}}, value(u));
    };
    perApp("sluice_app_client_connections", "gauge",
           "Logged-in clients per application_name (duplicates show here)",
           [](const admin::AppUsage& u) { return u.clients; });
    perApp("sluice_app_servers_held", "gauge",
           "Server connections held right now by the application's clients",
           [](const admin::AppUsage& u) { return u.servers_held; });
    perApp("sluice_app_servers_idle_in_transaction", "gauge",
           "Of those, servers held idle inside a transaction (the client sends nothing)",
           [](const admin::AppUsage& u) { return u.idle_in_transaction; });
    perApp("sluice_app_server_hold_seconds_total", "counter",
           "Seconds the application's clients have held servers (closed clients included; "
           "rate() is how many servers it keeps busy)",
           [](const admin::AppUsage& u) { return u.hold_seconds_total; });
    perApp("sluice_app_longest_hold_seconds", "gauge",
           "How long the application's longest current holder has held its server",
           [](const admin::AppUsage& u) { return u.longest_hold_s; });
  }
  e.family("sluice_app_metrics_missing", "gauge",
           "1 when a worker loop did not answer in time and this scrape leaves out the "
           "per-application metrics");
  e.sample("sluice_app_metrics_missing", {}, apps ? 0 : 1);
  return e.take();
}

}  // namespace sluice::http
