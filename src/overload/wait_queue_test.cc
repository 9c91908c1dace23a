#include "overload/wait_queue.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace sluice::overload
