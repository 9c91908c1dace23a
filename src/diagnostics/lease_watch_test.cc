#include "diagnostics/lease_watch.h"

#include <gtest/gtest.h>

namespace sluice::diagnostics {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(LeaseWatchTest, ReportsALeaseOncePastTheThresholdAndOnceWhenItEnds) {
  LeaseWatch w;
  TimePoint t0{};
  std::vector<Lease> holding = {{7, t0}, {8, t0 + seconds(4)}};
  auto s = w.scan(t0 + seconds(4), seconds(5), holding);
  EXPECT_TRUE(s.overdue.empty());
  s = w.scan(t0 + seconds(5), seconds(5), holding);
  ASSERT_EQ(s.overdue.size(), 1u);
  EXPECT_EQ(s.overdue[0].client_id, 7u);
  w.remember(7, "[C7 ...]");
  // Still held: not reported again.
  s = w.scan(t0 + seconds(8), seconds(5), holding);
  EXPECT_TRUE(s.overdue.empty() && s.ended.empty());
  // Client 8 passes it later; client 7 gives its server back.
  s = w.scan(t0 + seconds(9), seconds(5), {{8, t0 + seconds(4)}});
  ASSERT_EQ(s.overdue.size(), 1u);
  EXPECT_EQ(s.overdue[0].client_id, 8u);
  ASSERT_EQ(s.ended.size(), 1u);
  EXPECT_EQ(s.ended[0].lease.client_id, 7u);
  EXPECT_EQ(s.ended[0].who, "[C7 ...]");
  EXPECT_EQ(w.reported(), 1u);
}

TEST(LeaseWatchTest, ANewLeaseOfTheSameClientEndsTheOldOne) {
  LeaseWatch w;
  TimePoint t0{};
  w.scan(t0 + seconds(2), seconds(1), {{1, t0}});
  // Between two scans the client released and took another server.
  auto s = w.scan(t0 + seconds(3), seconds(1), {{1, t0 + seconds(3)}});
  ASSERT_EQ(s.ended.size(), 1u);
  EXPECT_EQ(s.ended[0].lease.since, t0);
  EXPECT_TRUE(s.overdue.empty());  // the new lease is young
  s = w.scan(t0 + seconds(5), seconds(1), {{1, t0 + seconds(3)}});
  EXPECT_EQ(s.overdue.size(), 1u);
}

TEST(LeaseWatchTest, ZeroThresholdWarnsNothingButStillEndsReportedLeases) {
  LeaseWatch w;
  TimePoint t0{};
  w.scan(t0 + seconds(10), seconds(1), {{1, t0}});
  auto s = w.scan(t0 + seconds(11), milliseconds(0), {{2, t0}});
  EXPECT_TRUE(s.overdue.empty());
  EXPECT_EQ(s.ended.size(), 1u);
  EXPECT_EQ(w.reported(), 0u);
}

std::string msg(char type, std::string_view body) {
  std::string m(1, type);
  uint32_t len = uint32_t(body.size() + 4);
  for (int i = 3; i >= 0; --i) m += char((len >> (8 * i)) & 0xff);
  return m + std::string(body);
}

TEST(StatementTextTest, QueryAndParseTextCutAtMax) {
  using namespace std::string_literals;
  EXPECT_EQ(statementText(msg('Q', "SELECT 1\0"s), 200), "SELECT 1");
  EXPECT_EQ(statementText(msg('Q', "SELECT 12345\0"s), 6), "SELECT");
  EXPECT_EQ(statementText(msg('P', "s1\0UPDATE t SET x = $1\0\0\0"s), 200), "UPDATE t SET x = $1");
  EXPECT_EQ(statementText(msg('P', "\0BEGIN\0\0\0"s), 200), "BEGIN");
  // Only part of the message has arrived.
  EXPECT_EQ(statementText(msg('Q', "SELECT 1\0"s).substr(0, 9), 200), "SELE");
  EXPECT_EQ(statementText(msg('P', "name_not_done"s), 200), "");
  EXPECT_EQ(statementText(msg('B', "\0s1\0"s), 200), "");
  EXPECT_EQ(statementText("Q", 200), "");
}

}  // namespace
}  // namespace sluice::diagnostics
