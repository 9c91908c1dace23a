// What `sluice stress` measures and how it is shown: latency percentiles, failures grouped by
// SQLSTATE and message, the pool health read from sluice's /readyz, per-wave lines, the final
// summary and the JSON document. Pure value types and functions; thread-safe.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tools/client_protocol.h"

namespace sluice::tools {

// Nearest-rank percentile (the smallest value with at least p% of the values at or below it) of
// values sorted ascending; 0 for none. p in (0, 100].
double percentile(const std::vector<double>& sorted, double p);

struct LatencySummary {
  size_t count = 0;
  double p50 = 0, p95 = 0, p99 = 0, max = 0;  // milliseconds
};
LatencySummary summarizeLatencies(std::vector<double> ms);

struct FailureGroup {
  std::string sqlstate;  // "" for failures seen by the client (timeout, refused, EOF)
  std::string message;
  int64_t count = 0;
};
// One group per (sqlstate, message); most frequent first, then by sqlstate and message.
std::vector<FailureGroup> groupFailures(const std::vector<Failure>& failures);
// Merges groups (of several waves) the same way.
std::vector<FailureGroup> mergeFailureGroups(const std::vector<FailureGroup>& groups);

// One pool of /readyz.
struct PoolHealth {
  std::string name;  // "db/user"
  int64_t total = 0, idle = 0, active = 0, waiting = 0;
  double utilization = 0;  // percent of pool_size in use
  int64_t max_wait_ms = 0;
};
struct OpsHealth {
  int http_status = 0;
  std::string status;  // ok, degraded, unavailable
  std::vector<PoolHealth> pools;
  std::string error;  // set when /readyz could not be read; the rest is then empty
};
// Parses sluice's /readyz body (see src/http/probes.h).
Result<OpsHealth> parseReadyz(int http_status, std::string_view body);

struct WaveResult {
  int wave = 0;  // 1-based
  int requests = 0;
  int ok = 0;
  int failed = 0;
  double elapsed_ms = 0;
  std::vector<double> latencies_ms;  // of the successful requests, connect to query result
  LatencySummary latency;
  std::vector<FailureGroup> failures;
  std::optional<OpsHealth> ops;
};
// Fills latency and failures from the raw outcomes.
WaveResult makeWave(int wave, int requests, double elapsed_ms, std::vector<double> latencies_ms,
                    const std::vector<Failure>& failures);

struct StressSummary {
  int waves = 0;
  int64_t requests = 0, ok = 0, failed = 0;
  LatencySummary latency;
  std::vector<FailureGroup> failures;
};
StressSummary summarize(const std::vector<WaveResult>& waves);

// "wave 3/10: 50 ok, 0 failed in 84 ms; latency ms p50 3.1 p95 8.0 p99 9.2 max 9.4" plus a line
// per failure group and the pool health lines; ends with a newline.
std::string formatWave(const WaveResult& w, int total_waves);
std::string formatSummary(const StressSummary& s);
// "[=====     ] 25/50 ok 24 failed 1" (no newline) for the live progress line.
std::string formatProgress(int wave, int total_waves, int done, int requests, int ok, int failed,
                           int width = 30);

nlohmann::json toJson(const WaveResult& w);
nlohmann::json toJson(const StressSummary& s);

}  // namespace sluice::tools
