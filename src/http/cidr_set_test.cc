#include "http/cidr_set.h"

#include <gtest/gtest.h>

namespace sluice::http {
namespace {

TEST(CidrSet, DefaultLoopbackAllowsOnlyLoopback) {
  auto set = CidrSet::parse({"127.0.0.0/8", "::1/128"});
  EXPECT_TRUE(set.contains("127.0.0.1"));
  EXPECT_TRUE(set.contains("127.255.0.9"));
  EXPECT_TRUE(set.contains("::1"));
  EXPECT_TRUE(set.contains("::ffff:127.0.0.1"));  // a dual-stack listener's view of IPv4
  EXPECT_FALSE(set.contains("10.0.0.1"));
  EXPECT_FALSE(set.contains("::2"));
  EXPECT_FALSE(set.contains("fe80::1"));
}

TEST(CidrSet, PrefixesOnAndOffByteBoundaries) {
  auto set = CidrSet::parse({"10.0.0.0/8", "192.168.4.0/22", "2001:db8::/33", "0.0.0.0/0"});
  EXPECT_TRUE(set.contains("10.200.3.4"));
  EXPECT_TRUE(set.contains("192.168.7.255"));
  EXPECT_TRUE(set.contains("2001:db8:7fff::1"));
  EXPECT_FALSE(set.contains("2001:db8:8000::1"));
  EXPECT_TRUE(set.contains("8.8.8.8"));  // 0.0.0.0/0: every IPv4 address, no IPv6 one
  EXPECT_FALSE(set.contains("2001:db9::1"));
}

TEST(CidrSet, BareAddressIsOneHost) {
  auto set = CidrSet::parse({"10.1.2.3", "fd00::5"});
  EXPECT_TRUE(set.contains("10.1.2.3"));
  EXPECT_FALSE(set.contains("10.1.2.4"));
  EXPECT_TRUE(set.contains("fd00::5"));
  EXPECT_FALSE(set.contains("fd00::6"));
}

TEST(CidrSet, MappedNetworkMeansItsIpv4Network) {
  auto set = CidrSet::parse({"::ffff:10.0.0.0/104"});
  EXPECT_TRUE(set.contains("10.9.9.9"));
  EXPECT_FALSE(set.contains("11.0.0.1"));
}

TEST(CidrSet, BadEntriesAreReportedAndLeftOut) {
  std::vector<std::string> errors;
  auto set =
      CidrSet::parse({"10.0.0.0/33", "::/129", "nope", "1.2.3.4/", "1.2.3.4/x", "::1"}, &errors);
  EXPECT_EQ(set.size(), 1u);
  ASSERT_EQ(errors.size(), 5u);
  EXPECT_EQ(errors[0], "'10.0.0.0/33': prefix above 32");
  EXPECT_EQ(errors[1], "'::/129': prefix above 128");
  EXPECT_FALSE(set.contains("garbage"));
  EXPECT_FALSE(set.contains(""));
}

}  // namespace
}  // namespace sluice::http
