#include "overload/adaptive_limit.h"

#include <gtest/gtest.h>

namespace sluice::overload {
namespace {

// Feeds `windows` windows of 20 transactions of `seconds` each, all servers busy.
TimePoint feed(AdaptiveLimit& l, TimePoint t, int windows, double seconds) {
  for (int w = 0; w < windows; ++w) {
    for (int i = 0; i < 20; ++i) {
      t += Millis(11);
      l.sample(t, seconds, l.limit());
    }
  }
  return t;
}

TEST(AdaptiveLimitTest, GrowsWhileLatencyStaysAtItsBase) {
  AdaptiveLimit l(2, 40);
  EXPECT_EQ(l.limit(), 2);  // starts low, to measure the base
  feed(l, TimePoint{} + Millis(1), 60, 0.005);
  EXPECT_EQ(l.limit(), 40);
}

TEST(AdaptiveLimitTest, ShrinksWhenTransactionsQueueInsidePostgres) {
  AdaptiveLimit l(2, 40);
  TimePoint t = feed(l, TimePoint{} + Millis(1), 60, 0.005);
  int before = l.limit();
  t = feed(l, t, 20, 0.050);  // ten times slower: work queues in PostgreSQL
  EXPECT_LT(l.limit(), before / 2);
  EXPECT_GE(l.limit(), 2);
  feed(l, t, 200, 0.005);  // the burst is over
  EXPECT_EQ(l.limit(), 40);
}

TEST(AdaptiveLimitTest, DoesNotGrowWhenTheLimitIsNotWhatHoldsThePoolBack) {
  AdaptiveLimit l(1, 40);
  TimePoint t = TimePoint{} + Millis(1);
  for (int i = 0; i < 2000; ++i) {
    t += Millis(11);
    l.sample(t, 0.005, 1);  // one server in use at a time
  }
  EXPECT_LE(l.limit(), 2);
}

TEST(AdaptiveLimitTest, ProbesTheBaseAgainSoASlowerDatabaseIsNotSqueezedForever) {
  AdaptiveLimit l(2, 40);
  TimePoint t = feed(l, TimePoint{} + Millis(1), 60, 0.005);
  t = feed(l, t, 200, 0.050);        // slower for good (a bigger table, a colder cache)
  EXPECT_GT(l.baseSeconds(), 0.04);  // measured again at the probe after kProbeEvery
  t = feed(l, t, 300, 0.050);
  EXPECT_EQ(l.limit(), 40);
}

}  // namespace
}  // namespace sluice::overload
