#include "tools/stress_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>

namespace sluice::tools {

using nlohmann::json;

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  double rank = std::ceil(p / 100.0 * double(sorted.size()));
  size_t idx = rank < 1 ? 0 : size_t(rank) - 1;
  return sorted[std::min(idx, sorted.size() - 1)];
}

LatencySummary summarizeLatencies(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  LatencySummary s;
  s.count = ms.size();
  if (ms.empty()) return s;
  s.p50 = percentile(ms, 50);
  s.p95 = percentile(ms, 95);
  s.p99 = percentile(ms, 99);
  s.max = ms.back();
  return s;
}

namespace {
std::vector<FailureGroup> sortedGroups(
    const std::map<std::pair<std::string, std::string>, int64_t>& counts) {
  std::vector<FailureGroup> out;
  out.reserve(counts.size());
  for (const auto& [key, n] : counts) out.push_back({key.first, key.second, n});
  std::stable_sort(out.begin(), out.end(), [](const FailureGroup& a, const FailureGroup& b) {
    return a.count > b.count;  // ties keep the map's (sqlstate, message) order
  });
  return out;
}

std::string fmtMs(double ms) {
  return ms >= 100 ? fmt::format("{:.0f}", ms) : fmt::format("{:.1f}", ms);
}

std::string latencyText(const LatencySummary& l) {
  if (l.count == 0) return "latency: no successful request";
  return fmt::format("latency ms p50 {} p95 {} p99 {} max {}", fmtMs(l.p50), fmtMs(l.p95),
                     fmtMs(l.p99), fmtMs(l.max));
}

std::string failureLines(const std::vector<FailureGroup>& groups) {
  std::string out;
  for (const auto& g : groups) {
    out += fmt::format("  {:>6} x {}  {}\n", g.count, g.sqlstate.empty() ? "-----" : g.sqlstate,
                       g.message);
  }
  return out;
}

json latencyJson(const LatencySummary& l) {
  return {{"count", l.count}, {"p50", l.p50}, {"p95", l.p95}, {"p99", l.p99}, {"max", l.max}};
}

json failuresJson(const std::vector<FailureGroup>& groups) {
  json a = json::array();
  for (const auto& g : groups) {
    a.push_back({{"sqlstate", g.sqlstate}, {"message", g.message}, {"count", g.count}});
  }
  return a;
}
}  // namespace

std::vector<FailureGroup> groupFailures(const std::vector<Failure>& failures) {
  std::map<std::pair<std::string, std::string>, int64_t> counts;
  for (const auto& f : failures) ++counts[{f.sqlstate, f.message}];
  return sortedGroups(counts);
}

std::vector<FailureGroup> mergeFailureGroups(const std::vector<FailureGroup>& groups) {
  std::map<std::pair<std::string, std::string>, int64_t> counts;
  for (const auto& g : groups) counts[{g.sqlstate, g.message}] += g.count;
  return sortedGroups(counts);
}

Result<OpsHealth> parseReadyz(int http_status, std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::error(
        fmt::format("/readyz answered {} with a body that is not JSON", http_status));
  }
  OpsHealth h;
  h.http_status = http_status;
  h.status = j.value("status", "");
  if (h.status.empty()) return Status::error("/readyz JSON has no \"status\"");
  if (j.contains("pools") && j["pools"].is_array()) {
    for (const auto& p : j["pools"]) {
      if (!p.is_object()) continue;
      PoolHealth ph;
      ph.name = p.value("poolName", p.value("database", "") + "/" + p.value("user", ""));
      ph.total = p.value("totalCount", int64_t(0));
      ph.idle = p.value("idleCount", int64_t(0));
      ph.active = p.value("activeCount", int64_t(0));
      ph.waiting = p.value("waitingCount", int64_t(0));
      ph.utilization = p.value("utilizationPercent", 0.0);
      ph.max_wait_ms = p.value("maxWaitMs", int64_t(0));
      h.pools.push_back(std::move(ph));
    }
  }
  return h;
}

WaveResult makeWave(int wave, int requests, double elapsed_ms, std::vector<double> latencies_ms,
                    const std::vector<Failure>& failures) {
  WaveResult w;
  w.wave = wave;
  w.requests = requests;
  w.ok = int(latencies_ms.size());
  w.failed = int(failures.size());
  w.elapsed_ms = elapsed_ms;
  w.latency = summarizeLatencies(latencies_ms);
  w.latencies_ms = std::move(latencies_ms);
  w.failures = groupFailures(failures);
  return w;
}

StressSummary summarize(const std::vector<WaveResult>& waves) {
  StressSummary s;
  s.waves = int(waves.size());
  std::vector<double> all;
  std::vector<FailureGroup> groups;
  for (const auto& w : waves) {
    s.requests += w.requests;
    s.ok += w.ok;
    s.failed += w.failed;
    all.insert(all.end(), w.latencies_ms.begin(), w.latencies_ms.end());
    groups.insert(groups.end(), w.failures.begin(), w.failures.end());
  }
  s.latency = summarizeLatencies(std::move(all));
  s.failures = mergeFailureGroups(groups);
  return s;
}

std::string formatWave(const WaveResult& w, int total_waves) {
  std::string out = fmt::format("wave {}/{}: {} ok, {} failed in {} ms; {}\n", w.wave, total_waves,
                                w.ok, w.failed, fmtMs(w.elapsed_ms), latencyText(w.latency));
  out += failureLines(w.failures);
  if (w.ops) {
    if (!w.ops->error.empty()) {
      out += fmt::format("  ops: {}\n", w.ops->error);
    } else {
      out += fmt::format("  ops: /readyz {} {}\n", w.ops->http_status, w.ops->status);
      for (const auto& p : w.ops->pools) {
        out += fmt::format(
            "    pool {}: total {} idle {} active {} waiting {} utilization {:.0f}% max wait {} "
            "ms\n",
            p.name, p.total, p.idle, p.active, p.waiting, p.utilization, p.max_wait_ms);
      }
    }
  }
  return out;
}

std::string formatSummary(const StressSummary& s) {
  double pct = s.requests > 0 ? 100.0 * double(s.failed) / double(s.requests) : 0;
  std::string out = fmt::format("summary: {} {}, {} requests, {} ok, {} failed ({:.1f}%); {}\n",
                                s.waves, s.waves == 1 ? "wave" : "waves", s.requests, s.ok,
                                s.failed, pct, latencyText(s.latency));
  out += failureLines(s.failures);
  return out;
}

std::string formatProgress(int wave, int total_waves, int done, int requests, int ok, int failed,
                           int width) {
  int filled = requests > 0 ? int(int64_t(done) * width / requests) : width;
  return fmt::format("wave {}/{} [{}{}] {}/{} ok {} failed {}", wave, total_waves,
                     std::string(size_t(filled), '='), std::string(size_t(width - filled), ' '),
                     done, requests, ok, failed);
}

json toJson(const WaveResult& w) {
  json j = {{"wave", w.wave},
            {"requests", w.requests},
            {"ok", w.ok},
            {"failed", w.failed},
            {"elapsed_ms", w.elapsed_ms},
            {"latency_ms", latencyJson(w.latency)},
            {"failures", failuresJson(w.failures)}};
  if (w.ops) {
    if (!w.ops->error.empty()) {
      j["ops"] = {{"error", w.ops->error}};
    } else {
      json pools = json::array();
      for (const auto& p : w.ops->pools) {
        pools.push_back({{"pool", p.name},
                         {"total", p.total},
                         {"idle", p.idle},
                         {"active", p.active},
                         {"waiting", p.waiting},
                         {"utilization_percent", p.utilization},
                         {"max_wait_ms", p.max_wait_ms}});
      }
      j["ops"] = {{"http_status", w.ops->http_status}, {"status", w.ops->status}, {"pools", pools}};
    }
  }
  return j;
}

json toJson(const StressSummary& s) {
  return {{"waves", s.waves},
          {"requests", s.requests},
          {"ok", s.ok},
          {"failed", s.failed},
          {"latency_ms", latencyJson(s.latency)},
          {"failures", failuresJson(s.failures)}};
}

}  // namespace sluice::tools
