#include "stats/sqlstate_counts.h"

#include <gtest/gtest.h>

#include <map>

namespace sluice::stats {
namespace {

std::map<std::string, uint64_t> read(const SqlstateCounts& c) {
  std::map<std::string, uint64_t> out;
  c.forEach([&](const std::string& code, uint64_t n) { out[code] = n; });
  return out;
}

TEST(SqlstateCountsTest, CountsEachCodeAndBoundsTheLabels) {
  SqlstateCounts c;
  c.add("42601");
  c.add("42601");
  c.add("57014");
  c.add("bad");    // malformed
  c.add("4260a");  // lower case is not a SQLSTATE
  EXPECT_EQ(read(c), (std::map<std::string, uint64_t>{{"42601", 2}, {"57014", 1}, {"other", 2}}));
  for (int i = 0; i < 40; ++i) c.add(std::string("XX") + std::to_string(100 + i));
  auto all = read(c);
  EXPECT_EQ(all.size(), SqlstateCounts::kSlots + 1);  // kSlots codes and "other"
  EXPECT_EQ(all["other"], 2u + 40 - (SqlstateCounts::kSlots - 2));
}

TEST(SqlstateCountsTest, PackRoundTrips) {
  EXPECT_EQ(SqlstateCounts::unpack(SqlstateCounts::pack("08P01")), "08P01");
  EXPECT_EQ(SqlstateCounts::pack("0000"), 0u);
}

}  // namespace
}  // namespace sluice::stats
