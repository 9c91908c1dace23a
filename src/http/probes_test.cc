#include "http/probes.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace sluice::http {
namespace {

int64_t nsAgo(std::chrono::milliseconds ago) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             (Clock::now() - ago).time_since_epoch())
      .count();
}

TEST(Health, OkWhileEveryLoopTicks) {
  session::SessionContext ctx;
  for (int i = 0; i < 3; ++i) ctx.loops.push_back(std::make_unique<session::LoopClients>());
  ProbeResult r = health(ctx);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");
}

TEST(Health, NamesTheLoopsThatStalled) {
  session::SessionContext ctx;
  for (int i = 0; i < 3; ++i) ctx.loops.push_back(std::make_unique<session::LoopClients>());
  ctx.loops[1]->heartbeat_ns.store(nsAgo(Millis(2500)));
  ctx.loops[2]->heartbeat_ns.store(nsAgo(Millis(1500)));  // late, but within 2 s
  ProbeResult r = health(ctx);
  EXPECT_EQ(r.status, 503);
  auto body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body["status"], "unhealthy");
  EXPECT_EQ(body["stalled_loops"], nlohmann::json::array({1}));
}

TEST(IsoTimestamp, UtcWithMilliseconds) {
  std::chrono::system_clock::time_point t{std::chrono::milliseconds(1795972082123LL)};
  EXPECT_EQ(isoTimestamp(t), "2026-11-29T17:08:02.123Z");
}

}  // namespace
}  // namespace sluice::http
