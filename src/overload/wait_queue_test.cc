#include "overload/wait_queue.h"

#include <gtest/gtest.h>

#include "overload/codel.h"

namespace sluice::overload {
namespace {

TEST(WaitQueueTest, FifoWithinOneKey) {
  WaitQueue<int> q;
  TimePoint t0{};
  q.push(1, "app", t0, 10);
  q.push(2, "app", t0, 20);
  q.push(3, "app", t0, 30);
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(q.pop()->value, 10);
  EXPECT_EQ(q.pop()->value, 20);
  EXPECT_EQ(q.pop()->value, 30);
  EXPECT_FALSE(q.pop().has_value());
}

TEST(WaitQueueTest, KeysTakeTurnsSoAFloodCannotStarveOthers) {
  WaitQueue<int> q;
  TimePoint t0{};
  for (int i = 0; i < 100; ++i) q.push(i, "flood", t0, i);
  q.push(1000, "quiet", t0, 1000);
  EXPECT_EQ(q.pop()->key, "flood");
  EXPECT_EQ(q.pop()->key, "quiet");  // served second, not 101st
  EXPECT_EQ(q.pop()->value, 1);
}

TEST(WaitQueueTest, RemoveFromMiddleAndLastOfLane) {
  WaitQueue<int> q;
  TimePoint t0{};
  q.push(1, "a", t0, 1);
  q.push(2, "a", t0, 2);
  q.push(3, "b", t0, 3);
  ASSERT_TRUE(q.remove(2).has_value());
  EXPECT_FALSE(q.remove(2).has_value());
  ASSERT_TRUE(q.remove(3).has_value());
  EXPECT_FALSE(q.contains(3));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.pop()->value, 1);
  EXPECT_TRUE(q.empty());
}

TEST(WaitQueueTest, ArrivedBeforeAndOldest) {
  WaitQueue<int> q;
  TimePoint t0{};
  q.push(1, "a", t0 + Millis(10), 1);
  q.push(2, "b", t0 + Millis(5), 2);
  q.push(3, "a", t0 + Millis(30), 3);
  EXPECT_EQ(*q.oldest(), t0 + Millis(5));
  auto ids = q.arrivedBefore(t0 + Millis(20));
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<uint64_t>{1, 2}));
}

TEST(WaitQueueTest, NewestFirstWithinALaneKeepsTurnsAcrossLanes) {
  WaitQueue<int> q;
  TimePoint t0{};
  q.push(1, "a", t0, 1);
  q.push(2, "a", t0 + Millis(1), 2);
  q.push(3, "b", t0 + Millis(2), 3);
  q.push(4, "a", t0 + Millis(3), 4);
  EXPECT_EQ(q.pop(true)->id, 4u);  // lane a's newest
  EXPECT_EQ(q.pop(true)->id, 3u);  // then b's turn
  EXPECT_EQ(q.pop(true)->id, 2u);
  EXPECT_EQ(q.pop(false)->id, 1u);
  EXPECT_TRUE(q.empty());
}

TEST(CodelTest, StandsOnlyWhenEverySampleOfAnIntervalIsLate) {
  Codel c(Millis(50), Millis(1000));
  TimePoint t{};
  t += Millis(1);
  EXPECT_FALSE(c.sample(t, Millis(200)));  // late, but a burst may drain
  EXPECT_FALSE(c.sample(t + Millis(500), Millis(300)));
  EXPECT_FALSE(c.sample(t + Millis(900), Millis(10)));  // one quick serve: it drained
  EXPECT_FALSE(c.sample(t + Millis(1000), Millis(100)));
  EXPECT_FALSE(c.sample(t + Millis(1900), Millis(100)));
  EXPECT_TRUE(c.sample(t + Millis(2000), Millis(100)));  // late for a whole interval
  EXPECT_TRUE(c.standing());
  c.onEmpty();
  EXPECT_FALSE(c.standing());
  EXPECT_FALSE(c.sample(t + Millis(2100), Millis(100)));  // starts over
}

TEST(CodelTest, ZeroTargetIsOff) {
  Codel c(Millis(0), Millis(10));
  TimePoint t{};
  for (int i = 1; i < 100; ++i) EXPECT_FALSE(c.sample(t + Millis(i * 100), Millis(5000)));
}

}  // namespace
}  // namespace sluice::overload
