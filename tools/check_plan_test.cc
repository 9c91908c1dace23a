#include "tools/check_plan.h"

#include <gtest/gtest.h>

namespace sluice::tools {
namespace {

std::shared_ptr<const config::Config> cfg(const std::string& text) {
  return config::parseConfig(text, "/etc/sluice/test.ini");
}

const char* kTwoDbs = R"([databases]
app = host=127.0.0.1 port=5432 dbname=app
reports = host=127.0.0.1 port=5432 pool_size=2
other = host=10.0.0.9 port=5432 user=svc password=x

[pgbouncer]
auth_file = /nonexistent/userlist.txt
default_pool_size = 20
reserve_pool_size = 5
)";

TEST(CheckPlan, PoolsPerAuthFileUserAndForcedUser) {
  auto c = cfg(kTwoDbs);
  auto plans = planDatabases(*c, {"alice", "bob"}, {});
  ASSERT_EQ(plans.size(), 3u);
  EXPECT_EQ(plans[0].pools.size(), 2u);
  EXPECT_EQ(plans[0].pools[0].worst(), 25);
  EXPECT_EQ(plans[0].worst(), 50);
  EXPECT_EQ(plans[1].worst(), 14);  // (2 + 5) x 2
  ASSERT_EQ(plans[2].pools.size(), 1u);
  EXPECT_EQ(plans[2].pools[0].user, "svc");
  EXPECT_EQ(plans[2].server, "10.0.0.9:5432");
}

TEST(CheckPlan, LoginRolesDropUsersThatCannotLogIn) {
  auto c = cfg(kTwoDbs);
  auto plans = planDatabases(*c, {"alice", "pgb_admin"}, {{"127.0.0.1:5432", {"alice"}}});
  ASSERT_EQ(plans[0].pools.size(), 1u);
  EXPECT_EQ(plans[0].skipped_users, std::vector<std::string>{"pgb_admin"});
}

TEST(CheckPlan, ExhaustionNamesPoolsWorstCaseAndSlots) {
  auto c = cfg(kTwoDbs);
  auto plans = planDatabases(*c, {"alice", "bob"}, {});
  ServerFacts f;
  f.max_connections = 60;
  f.superuser_reserved_connections = 3;
  auto v = judgeServers(*c, plans, {{"127.0.0.1:5432", f}}, 1);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].worst_per_instance, 64);
  EXPECT_TRUE(v[0].exhausts);
  ASSERT_EQ(v[0].problems.size(), 1u);
  const std::string& p = v[0].problems[0];
  EXPECT_NE(p.find("worst case 64 server connections"), std::string::npos) << p;
  EXPECT_NE(p.find("57 usable slots (max_connections 60 - superuser_reserved_connections 3)"),
            std::string::npos)
      << p;
  EXPECT_NE(p.find("app/alice 25 (pool_size 20 + reserve_pool_size 5)"), std::string::npos) << p;
  EXPECT_NE(p.find("max_db_connections = 28"), std::string::npos) << p;  // 57 / 2 databases
  EXPECT_FALSE(v[1].facts);  // no facts for 10.0.0.9: not judged
  EXPECT_FALSE(v[1].exhausts);

  // Two instances of a config that fits once.
  f.max_connections = 100;
  auto once = judgeServers(*c, plans, {{"127.0.0.1:5432", f}}, 1);
  EXPECT_FALSE(once[0].exhausts);
  EXPECT_NE(once[0].notes[0].find("fits (33 to spare)"), std::string::npos) << once[0].notes[0];
  auto twice = judgeServers(*c, plans, {{"127.0.0.1:5432", f}}, 2);
  EXPECT_TRUE(twice[0].exhausts);
  EXPECT_EQ(twice[0].worst_total, 128);
  EXPECT_NE(twice[0].problems[0].find("(64 per instance x 2 instances)"), std::string::npos);
}

TEST(CheckPlan, CapsByMaxDbAndMaxUserConnections) {
  auto c = cfg(R"([databases]
a = host=h max_db_connections=10
b = host=h
[users]
alice = max_user_connections=3
[pgbouncer]
auth_file = /x
default_pool_size = 20
)");
  auto plans = planDatabases(*c, {"alice", "bob"}, {});
  EXPECT_EQ(plans[0].worst(), 10);
  EXPECT_EQ(plans[1].worst(), 40);
  ServerFacts f;
  f.max_connections = 100;
  auto v = judgeServers(*c, plans, {{"h:5432", f}}, 1);
  // by database 10 + 40 = 50; by user alice 3 + bob 40 = 43: the smaller bound holds.
  EXPECT_EQ(v[0].worst_per_instance, 43);
}

TEST(CheckPlan, AuthQueryWithoutCapIsUnbounded) {
  auto c = cfg(R"([databases]
a = host=h
[pgbouncer]
auth_user = lookup
auth_file = /x
)");
  auto plans = planDatabases(*c, {"lookup"}, {});
  EXPECT_TRUE(plans[0].any_user);
  EXPECT_FALSE(plans[0].worst());
  ServerFacts f;
  f.max_connections = 100;
  auto v = judgeServers(*c, plans, {{"h:5432", f}}, 1);
  EXPECT_TRUE(v[0].exhausts);
  EXPECT_NE(v[0].problems[0].find("unbounded"), std::string::npos);
  // With the server's login roles known, "any user" is those roles.
  auto known = planDatabases(*c, {"lookup"}, {{"h:5432", {"x", "y", "lookup"}}});
  EXPECT_FALSE(known[0].any_user);
  EXPECT_EQ(known[0].worst(), 60);
}

TEST(CheckPlan, RoleAndDatabaseLimits) {
  auto c = cfg(R"([databases]
a = host=h
[pgbouncer]
auth_file = /x
default_pool_size = 10
)");
  auto plans = planDatabases(*c, {"alice"}, {});
  ServerFacts f;
  f.max_connections = 100;
  f.rolconnlimit["alice"] = 4;
  f.datconnlimit["a"] = 8;
  auto v = judgeServers(*c, plans, {{"h:5432", f}}, 1);
  ASSERT_EQ(v[0].problems.size(), 2u);
  EXPECT_NE(v[0].problems[0].find("role alice: worst case 10"), std::string::npos);
  EXPECT_NE(v[0].problems[0].find("rolconnlimit 4"), std::string::npos);
  EXPECT_NE(v[0].problems[1].find("datconnlimit 8"), std::string::npos);
}

TEST(CheckPlan, ContradictoryTimeouts) {
  auto c = cfg(R"([databases]
a = host=h
[pgbouncer]
pool_mode = transaction
query_wait_timeout = 5
server_connect_timeout = 15
server_login_retry = 15
server_lifetime = 60
server_idle_timeout = 600
reserve_pool_size = 2
reserve_pool_timeout = 5
)");
  auto f = timeoutFindings(*c);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0].rfind("warning: query_wait_timeout (5 s) is shorter than server_connect_timeout "
                       "(15 s) + server_login_retry (15 s) = 30 s",
                       0),
            0u)
      << f[0];
  EXPECT_NE(f[1].find("server_lifetime (60 s) is shorter than server_idle_timeout (600 s)"),
            std::string::npos);
  EXPECT_NE(f[2].find("reserve_pool_timeout (5 s) is not shorter than query_wait_timeout (5 s)"),
            std::string::npos);
  EXPECT_NE(f[3].find("advice: idle_transaction_timeout is 0"), std::string::npos);

  auto good = cfg(R"([databases]
a = host=h
[pgbouncer]
pool_mode = session
)");
  EXPECT_TRUE(timeoutFindings(*good).empty());
}

TEST(CheckPlan, LittlesLaw) {
  DatabaseActivity a{1000, 100, 4.0};
  std::string s = littlesLawAdvice("app", 20, a);
  EXPECT_NE(s.find("20 * 1000 / 4.00 = 5000 transactions/s"), std::string::npos) << s;
  EXPECT_NE(s.find("keeps 0.04 server connections busy"), std::string::npos) << s;
  std::string unknown = littlesLawAdvice("app", 20, {1000, 100, std::nullopt});
  EXPECT_NE(unknown.find("longer than 20 * 1000 / 10.00 = 2000 ms"), std::string::npos) << unknown;
  EXPECT_NE(littlesLawAdvice("app", 20, {}).find("400/s at 50 ms"), std::string::npos);
}

}  // namespace
}  // namespace sluice::tools
