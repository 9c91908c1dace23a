#include "tools/pg_url.h"

#include <gtest/gtest.h>

namespace sluice::tools {
namespace {

TEST(PgUrl, FullUrl) {
  auto u = parsePgUrl("postgres://alice:s3cret@db.example:6432/app?application_name=stress");
  ASSERT_TRUE(u) << u.message();
  EXPECT_EQ(u->user, "alice");
  EXPECT_EQ(u->password, "s3cret");
  EXPECT_EQ(u->host, "db.example");
  EXPECT_EQ(u->port, 6432);
  EXPECT_EQ(u->dbname, "app");
  ASSERT_EQ(u->params.size(), 1u);
  EXPECT_EQ(u->params[0].first, "application_name");
  EXPECT_EQ(u->params[0].second, "stress");
  EXPECT_EQ(u->redacted(), "postgres://alice:***@db.example:6432/app");
}

TEST(PgUrl, DefaultsAndPostgresqlScheme) {
  auto u = parsePgUrl("postgresql://bob@/", "ignored");
  ASSERT_TRUE(u) << u.message();
  EXPECT_EQ(u->user, "bob");
  EXPECT_EQ(u->host, "localhost");
  EXPECT_EQ(u->port, 5432);
  EXPECT_EQ(u->dbname, "bob");  // like libpq: the database defaults to the user
  auto d = parsePgUrl("postgres://db1:5433/x", "envuser");
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->user, "envuser");
  EXPECT_EQ(d->host, "db1");
  EXPECT_EQ(d->port, 5433);
}

TEST(PgUrl, PercentDecodingAndAtInPassword) {
  auto u = parsePgUrl("postgres://us%40er:p%3Aw@d@127.0.0.1/my%20db");
  ASSERT_TRUE(u) << u.message();
  EXPECT_EQ(u->user, "us@er");
  EXPECT_EQ(u->password, "p:w@d");
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->dbname, "my db");
}

TEST(PgUrl, Ipv6AndUnixSocketHost) {
  auto u = parsePgUrl("postgres://a@[::1]:7000/db");
  ASSERT_TRUE(u) << u.message();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 7000);
  EXPECT_EQ(u->redacted(), "postgres://a@[::1]:7000/db");
  auto s = parsePgUrl("postgres://a@/db?host=%2Ftmp%2Fsock&port=6000");
  ASSERT_TRUE(s) << s.message();
  EXPECT_EQ(s->host, "/tmp/sock");
  EXPECT_EQ(s->port, 6000);
}

TEST(PgUrl, ErrorsNameThePart) {
  auto scheme = parsePgUrl("mysql://a@b/c");
  ASSERT_FALSE(scheme);
  EXPECT_NE(scheme.message().find("postgres://"), std::string::npos);
  auto port = parsePgUrl("postgres://a@h:99999/c");
  ASSERT_FALSE(port);
  EXPECT_NE(port.message().find("99999"), std::string::npos);
  auto pct = parsePgUrl("postgres://a:%zz@h/c");
  ASSERT_FALSE(pct);
  EXPECT_NE(pct.message().find("password"), std::string::npos);
  auto ssl = parsePgUrl("postgres://a@h/c?sslmode=require");
  ASSERT_FALSE(ssl);
  EXPECT_NE(ssl.message().find("sslmode=require"), std::string::npos);
  EXPECT_TRUE(parsePgUrl("postgres://a@h/c?sslmode=disable"));
  auto nouser = parsePgUrl("postgres://h/c");
  ASSERT_FALSE(nouser);
  EXPECT_NE(nouser.message().find("no user"), std::string::npos);
  EXPECT_FALSE(parsePgUrl("postgres://a@[::1/c"));
  EXPECT_FALSE(parsePgUrl("postgres://a@h/c?novalue"));
}

}  // namespace
}  // namespace sluice::tools
