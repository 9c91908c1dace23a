#include "tools/stress_report.h"

#include <gtest/gtest.h>

namespace sluice::tools {
namespace {

TEST(Percentile, NearestRank) {
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_EQ(percentile(v, 50), 50);
  EXPECT_EQ(percentile(v, 95), 95);
  EXPECT_EQ(percentile(v, 99), 99);
  EXPECT_EQ(percentile(v, 100), 100);
  EXPECT_EQ(percentile({}, 50), 0);
  EXPECT_EQ(percentile({7}, 99), 7);
  // 10 values: p95 is the 10th (ceil(9.5)), p50 the 5th.
  std::vector<double> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(percentile(ten, 50), 5);
  EXPECT_EQ(percentile(ten, 95), 10);
}

TEST(Percentile, SummarySortsItsInput) {
  LatencySummary s = summarizeLatencies({9, 1, 5, 3, 7});
  EXPECT_EQ(s.count, 5u);
  EXPECT_EQ(s.p50, 5);
  EXPECT_EQ(s.p99, 9);
  EXPECT_EQ(s.max, 9);
  EXPECT_EQ(summarizeLatencies({}).count, 0u);
}

TEST(FailureGroups, BySqlstateAndMessageMostFrequentFirst) {
  std::vector<Failure> f = {
      {"57014", "query_wait_timeout", true},
      {"", "timeout: no answer within 10 ms (--timeout) while logging in", true},
      {"57014", "query_wait_timeout", true},
      {"53300", "too many clients", true},
      {"57014", "other message", true}};
  auto g = groupFailures(f);
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0].sqlstate, "57014");
  EXPECT_EQ(g[0].message, "query_wait_timeout");
  EXPECT_EQ(g[0].count, 2);
  // Ties in (sqlstate, message) order: "" < "53300" < "57014".
  EXPECT_EQ(g[1].sqlstate, "");
  EXPECT_EQ(g[2].sqlstate, "53300");
  EXPECT_EQ(g[3].message, "other message");
  auto merged = mergeFailureGroups({g[0], g[2], {"53300", "too many clients", 5}});
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_EQ(merged[0].sqlstate, "53300");
  EXPECT_EQ(merged[0].count, 6);
}

TEST(StressReport, WaveAndSummaryText) {
  WaveResult w1 = makeWave(1, 4, 12.5, {1.0, 2.0, 3.0}, {{"57014", "query_wait_timeout", true}});
  WaveResult w2 = makeWave(2, 4, 10, {4.0, 5.0, 6.0, 200.0}, {});
  OpsHealth ops;
  ops.http_status = 200;
  ops.status = "degraded";
  ops.pools.push_back({"appdb/alice", 5, 0, 5, 3, 100, 812});
  w2.ops = ops;
  std::string t1 = formatWave(w1, 2);
  EXPECT_EQ(t1,
            "wave 1/2: 3 ok, 1 failed in 12.5 ms; latency ms p50 2.0 p95 3.0 p99 3.0 max 3.0\n"
            "       1 x 57014  query_wait_timeout\n");
  std::string t2 = formatWave(w2, 2);
  EXPECT_NE(t2.find("wave 2/2: 4 ok, 0 failed"), std::string::npos) << t2;
  EXPECT_NE(t2.find("max 200\n"), std::string::npos) << t2;
  EXPECT_NE(t2.find("ops: /readyz 200 degraded"), std::string::npos) << t2;
  EXPECT_NE(t2.find("pool appdb/alice: total 5 idle 0 active 5 waiting 3 utilization 100% max "
                    "wait 812 ms"),
            std::string::npos)
      << t2;
  StressSummary s = summarize({w1, w2});
  EXPECT_EQ(s.requests, 8);
  EXPECT_EQ(s.ok, 7);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.latency.count, 7u);
  EXPECT_EQ(s.latency.p50, 4.0);
  EXPECT_EQ(s.latency.max, 200.0);
  EXPECT_EQ(formatSummary(s),
            "summary: 2 waves, 8 requests, 7 ok, 1 failed (12.5%); latency ms p50 4.0 p95 200 "
            "p99 200 max 200\n"
            "       1 x 57014  query_wait_timeout\n");
  auto j = toJson(w2);
  EXPECT_EQ(j["ok"], 4);
  EXPECT_EQ(j["ops"]["pools"][0]["waiting"], 3);
  EXPECT_EQ(toJson(s)["failures"][0]["sqlstate"], "57014");
}

TEST(StressReport, NoSuccessSaysSo) {
  WaveResult w = makeWave(1, 1, 5, {}, {{"", "refused", true}});
  EXPECT_NE(formatWave(w, 1).find("latency: no successful request"), std::string::npos);
  EXPECT_NE(formatWave(w, 1).find("-----  refused"), std::string::npos);
}

TEST(StressReport, Progress) {
  EXPECT_EQ(formatProgress(2, 10, 5, 10, 4, 1, 10), "wave 2/10 [=====     ] 5/10 ok 4 failed 1");
}

TEST(Readyz, ParsesSluiceBody) {
  auto h =
      parseReadyz(503, R"({"status":"unavailable","timestamp":"x","pools":[{"poolName":"appdb/u",
      "database":"appdb","user":"u","totalCount":3,"idleCount":1,"activeCount":2,
      "waitingCount":4,"utilizationPercent":40.0,"maxWaitMs":17}]})");
  ASSERT_TRUE(h) << h.message();
  EXPECT_EQ(h->http_status, 503);
  EXPECT_EQ(h->status, "unavailable");
  ASSERT_EQ(h->pools.size(), 1u);
  EXPECT_EQ(h->pools[0].name, "appdb/u");
  EXPECT_EQ(h->pools[0].total, 3);
  EXPECT_EQ(h->pools[0].waiting, 4);
  EXPECT_EQ(h->pools[0].max_wait_ms, 17);
  EXPECT_FALSE(parseReadyz(200, "<html>"));
  EXPECT_FALSE(parseReadyz(200, "{}"));
}

}  // namespace
}  // namespace sluice::tools
