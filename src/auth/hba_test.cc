// The pg_hba.conf parser and matcher on golden texts: what each line means, which line a
// connection matches, and the exact error for each kind of bad line.
#include "auth/hba.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <map>
#include <string>

namespace sluice::auth {
namespace {

// Includes come from this map instead of the disk.
struct Files {
  std::map<std::string, std::string> files;
  HbaFileReader reader() {
    return [this](const std::string& p, std::string* why) -> std::optional<std::string> {
      auto it = files.find(p);
      if (it == files.end()) {
        *why = "No such file or directory";
        return std::nullopt;
      }
      return it->second;
    };
  }
};

HbaRules parseOk(const std::string& text, Files* files = nullptr) {
  Files none;
  auto r = parseHba(text, "/etc/sluice/hba.conf", (files ? files : &none)->reader());
  EXPECT_TRUE(r.isOk()) << r.message();
  return r.isOk() ? *r : HbaRules{};
}

std::string parseErr(const std::string& text) {
  auto r = parseHba(text, "/etc/sluice/hba.conf", nullptr);
  EXPECT_FALSE(r.isOk());
  return r.isOk() ? "" : r.message();
}

HbaConnection tcp(const std::string& ip, const std::string& db, const std::string& user,
                  bool tls = false) {
  HbaConnection c;
  c.family = ip.find(':') == std::string::npos ? AF_INET : AF_INET6;
  EXPECT_EQ(inet_pton(c.family, ip.c_str(), c.addr.data()), 1);
  c.database = db;
  c.user = user;
  c.tls = tls;
  return c;
}

HbaConnection local(const std::string& db, const std::string& user) {
  HbaConnection c;
  c.local = true;
  c.database = db;
  c.user = user;
  return c;
}

// The line number of the matching rule, 0 when none matches.
int matchLine(const HbaRules& rules, const HbaConnection& c) {
  const HbaRule* r = matchHba(rules, c);
  return r ? r->line : 0;
}

TEST(Hba, ParsesEveryFieldOfALine) {
  auto rules = parseOk(
      "# comment line\n"
      "\n"
      "local   all             all                                     peer\n"
      "host    app,\"Other DB\" alice,bob   10.0.0.0/8       md5   # trailing comment\n"
      "hostssl all             all         ::1/128          cert clientcert=verify-full\n"
      "hostnossl sameuser      all         192.168.1.0 255.255.255.0 scram-sha-256\n"
      "host    all             all         all              reject\n");
  ASSERT_EQ(rules.rules.size(), 5u);
  const auto& a = rules.rules[0];
  EXPECT_EQ(a.line, 3);
  EXPECT_EQ(a.type, HbaConnType::kLocal);
  EXPECT_EQ(a.method, HbaMethod::kPeer);
  const auto& b = rules.rules[1];
  EXPECT_EQ(b.line, 4);
  ASSERT_EQ(b.databases.size(), 2u);
  EXPECT_EQ(b.databases[1].name, "Other DB");
  EXPECT_EQ(b.databases[1].kind, HbaName::Kind::kName);
  ASSERT_EQ(b.users.size(), 2u);
  EXPECT_EQ(b.users[1].name, "bob");
  EXPECT_EQ(b.family, AF_INET);
  EXPECT_EQ(b.method, HbaMethod::kMd5);
  const auto& c = rules.rules[2];
  EXPECT_EQ(c.type, HbaConnType::kHostSsl);
  EXPECT_EQ(c.family, AF_INET6);
  ASSERT_EQ(c.options.size(), 1u);
  EXPECT_EQ(c.options[0].first, "clientcert");
  EXPECT_EQ(c.options[0].second, "verify-full");
  EXPECT_EQ(rules.rules[3].databases[0].kind, HbaName::Kind::kSameUser);
  EXPECT_TRUE(rules.rules[4].any_address);
  EXPECT_TRUE(rules.warnings.empty());
}

TEST(Hba, FirstMatchingLineDecides) {
  auto rules = parseOk(
      "host appdb alice 127.0.0.1/32 trust\n"
      "host appdb all 127.0.0.0/8 md5\n"
      "host all bob 10.1.0.0/16 scram-sha-256\n"
      "host all all 0.0.0.0/0 reject\n"
      "host all all ::/0 password\n");
  EXPECT_EQ(matchLine(rules, tcp("127.0.0.1", "appdb", "alice")), 1);
  EXPECT_EQ(matchLine(rules, tcp("127.0.0.2", "appdb", "alice")), 2);
  EXPECT_EQ(matchLine(rules, tcp("127.0.0.1", "appdb", "carol")), 2);
  EXPECT_EQ(matchLine(rules, tcp("10.1.255.3", "other", "bob")), 3);
  EXPECT_EQ(matchLine(rules, tcp("10.2.0.1", "other", "bob")), 4);
  EXPECT_EQ(matchLine(rules, tcp("::1", "other", "bob")), 5);
  EXPECT_EQ(matchLine(rules, local("appdb", "alice")), 0);  // no local line
}

TEST(Hba, ConnectionTypes) {
  auto rules = parseOk(
      "local all all trust\n"
      "hostssl all all all md5\n"
      "hostnossl all all all password\n"
      "hostgssenc all all all trust\n");
  EXPECT_EQ(matchLine(rules, local("d", "u")), 1);
  EXPECT_EQ(matchLine(rules, tcp("127.0.0.1", "d", "u", true)), 2);
  EXPECT_EQ(matchLine(rules, tcp("127.0.0.1", "d", "u", false)), 3);

  auto gss = parseOk("hostgssenc all all all trust\nhostnogssenc all all all trust\n");
  EXPECT_EQ(matchLine(gss, tcp("127.0.0.1", "d", "u")), 0);  // never: no GSSAPI
  auto host = parseOk("host all all all trust\n");
  EXPECT_EQ(matchLine(host, tcp("127.0.0.1", "d", "u", true)), 1);  // host: TLS or not
  EXPECT_EQ(matchLine(host, local("d", "u")), 0);                   // but not local
}

TEST(Hba, DatabaseKeywordsAndQuotes) {
  auto rules = parseOk(
      "host replication all all trust\n"
      "host \"all\" all all md5\n"
      "host sameuser all all password\n"
      "host \"sameuser\" all all scram-sha-256\n");
  // replication never matches a pooled database, even one called "replication".
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "replication", "x")), 0);
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "all", "x")), 2);  // quoted: a database named all
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "alice", "alice")), 3);
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "sameuser", "bob")), 4);
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "other", "bob")), 0);
}

TEST(Hba, QuotedNamesKeepCaseCommasAndQuotes) {
  auto rules = parseOk("host \"My,Db\" \"we\"\"ird\" all trust\n");
  ASSERT_EQ(rules.rules.size(), 1u);
  EXPECT_EQ(rules.rules[0].databases.size(), 1u);
  EXPECT_EQ(rules.rules[0].databases[0].name, "My,Db");
  EXPECT_EQ(rules.rules[0].users[0].name, "we\"ird");
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "My,Db", "we\"ird")), 1);
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "my,db", "we\"ird")), 0);  // case matters
}

TEST(Hba, ListsMayHaveSpacesAfterCommas) {
  auto rules = parseOk("host a, b,c   x,  y 10.0.0.1/32 trust\n");
  ASSERT_EQ(rules.rules.size(), 1u);
  EXPECT_EQ(rules.rules[0].databases.size(), 3u);
  EXPECT_EQ(rules.rules[0].users.size(), 2u);
  EXPECT_EQ(matchLine(rules, tcp("10.0.0.1", "c", "y")), 1);
}

TEST(Hba, GroupsAndRolesNeverMatchWithAWarning) {
  auto rules = parseOk(
      "host all +admins all trust\n"
      "host samerole all all trust\n"
      "host all \"+admins\" all md5\n");
  ASSERT_EQ(rules.warnings.size(), 2u);
  EXPECT_EQ(rules.warnings[0],
            "/etc/sluice/hba.conf:1: +admins: group membership (+role) is not supported by "
            "sluice; this item never matches");
  EXPECT_NE(rules.warnings[1].find("hba.conf:2: samerole"), std::string::npos);
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "d", "admins")), 0);
  EXPECT_EQ(matchLine(rules, tcp("1.2.3.4", "d", "+admins")), 3);  // quoted: a literal name
}

TEST(Hba, IncludesAreRelativeToTheHbaFile) {
  Files f;
  f.files["/etc/sluice/dbs.txt"] = "# databases\nappdb, reports\n  billing @more.txt\n";
  f.files["/etc/sluice/more.txt"] = "archive";
  f.files["/abs/users"] = "alice bob";
  auto rules = parseOk("host @dbs.txt @/abs/users all md5\n", &f);
  ASSERT_EQ(rules.rules.size(), 1u);
  ASSERT_EQ(rules.rules[0].databases.size(), 4u);
  EXPECT_EQ(rules.rules[0].databases[3].name, "archive");
  EXPECT_EQ(rules.rules[0].users.size(), 2u);
  EXPECT_EQ(matchLine(rules, tcp("1.1.1.1", "billing", "bob")), 1);
  EXPECT_EQ(matchLine(rules, tcp("1.1.1.1", "other", "bob")), 0);

  auto err = parseHba("host @missing.txt all all md5\n", "/etc/sluice/hba.conf", f.reader());
  ASSERT_FALSE(err.isOk());
  EXPECT_EQ(err.message(),
            "/etc/sluice/hba.conf:1: cannot read included file \"/etc/sluice/missing.txt\": No "
            "such file or directory");
  Files loop;
  loop.files["/etc/sluice/a"] = "@a";
  auto deep = parseHba("host @a all all md5\n", "/etc/sluice/hba.conf", loop.reader());
  ASSERT_FALSE(deep.isOk());
  EXPECT_NE(deep.message().find("nest deeper than 10"), std::string::npos) << deep.message();
}

TEST(Hba, AddressForms) {
  auto rules = parseOk(
      "host all all 192.168.0.0 255.255.0.0 trust\n"
      "host all all fe80::/10 md5\n"
      "host all all 10.0.0.7/32 password\n"
      "host all all ::ffff:0:0/96 reject\n");
  EXPECT_EQ(matchLine(rules, tcp("192.168.44.1", "d", "u")), 1);
  EXPECT_EQ(matchLine(rules, tcp("192.169.0.1", "d", "u")), 0);
  EXPECT_EQ(matchLine(rules, tcp("fe80::1", "d", "u")), 2);
  EXPECT_EQ(matchLine(rules, tcp("10.0.0.7", "d", "u")), 3);
  EXPECT_EQ(matchLine(rules, tcp("10.0.0.8", "d", "u")), 0);  // IPv6 rule, IPv4 client
  // Host bits beyond the mask are ignored, as in PostgreSQL.
  auto loose = parseOk("host all all 10.1.2.3/8 trust\n");
  EXPECT_EQ(matchLine(loose, tcp("10.200.0.1", "d", "u")), 1);
}

TEST(Hba, MappedIpv6ClientIsMatchedAsIpv4) {
  auto rules = parseOk("host all all 127.0.0.1/32 trust\n");
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "::ffff:127.0.0.1", &sa.sin6_addr);
  HbaConnection c;
  ASSERT_TRUE(hbaSetAddress(c, &sa, sizeof(sa)));
  c.database = "d";
  c.user = "u";
  EXPECT_EQ(c.family, AF_INET);
  EXPECT_EQ(matchLine(rules, c), 1);
  EXPECT_EQ(hbaHostText(c), "127.0.0.1");
}

TEST(Hba, BackslashContinuesALine) {
  auto rules = parseOk(
      "host all \\\n"
      "     alice \\\n"
      "     10.0.0.0/8 md5\n"
      "local all all trust\n");
  ASSERT_EQ(rules.rules.size(), 2u);
  EXPECT_EQ(rules.rules[0].line, 1);  // a continued line is named by its first line
  EXPECT_EQ(rules.rules[0].users[0].name, "alice");
  EXPECT_EQ(rules.rules[1].line, 4);
}

TEST(Hba, CrlfAndCommentsInsideQuotes) {
  auto rules = parseOk("host \"a#b\" all all trust # real comment\r\n");
  ASSERT_EQ(rules.rules.size(), 1u);
  EXPECT_EQ(rules.rules[0].databases[0].name, "a#b");
}

TEST(Hba, Messages) {
  auto c = tcp("127.0.0.1", "appdb", "alice");
  EXPECT_EQ(hbaNoMatchMessage(c),
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"alice\", database \"appdb\", "
            "no encryption");
  c.tls = true;
  EXPECT_EQ(hbaNoMatchMessage(c),
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"alice\", database \"appdb\", "
            "SSL encryption");
  EXPECT_EQ(hbaRejectMessage(local("appdb", "bob")),
            "pg_hba.conf rejects connection for host \"[local]\", user \"bob\", database "
            "\"appdb\", no encryption");
  EXPECT_EQ(hbaHostText(tcp("::1", "d", "u")), "::1");
}

TEST(Hba, VerdictPerMethod) {
  auto rules = parseOk(
      "host a all all trust\n"
      "host b all all md5\n"
      "host c all all password\n"
      "host d all all scram-sha-256\n"
      "host e all all reject\n"
      "hostssl f all all cert\n"
      "local g all peer\n");
  auto type = [&](HbaConnection c, std::string_view cn = "", std::string_view os = "") {
    return hbaVerdict(matchHba(rules, c), c, cn, os);
  };
  EXPECT_EQ(type(tcp("1.1.1.1", "a", "u")).type, config::AuthType::kTrust);
  EXPECT_EQ(type(tcp("1.1.1.1", "b", "u")).type, config::AuthType::kMd5);
  EXPECT_EQ(type(tcp("1.1.1.1", "c", "u")).type, config::AuthType::kPlain);
  EXPECT_EQ(type(tcp("1.1.1.1", "d", "u")).type, config::AuthType::kScramSha256);
  auto rejected = type(tcp("1.1.1.1", "e", "u"));
  EXPECT_FALSE(rejected.type);
  EXPECT_EQ(rejected.error,
            "pg_hba.conf rejects connection for host \"1.1.1.1\", user \"u\", database \"e\", "
            "no encryption");
  auto none = type(tcp("1.1.1.1", "zzz", "u"));
  EXPECT_FALSE(none.type);
  EXPECT_EQ(none.error.rfind("no pg_hba.conf entry for host \"1.1.1.1\"", 0), 0u);
  // cert: only over TLS (hostssl), with a certificate whose CN is the user.
  EXPECT_EQ(type(tcp("1.1.1.1", "f", "alice")).error,
            "no pg_hba.conf entry for host \"1.1.1.1\", user \"alice\", database \"f\", no "
            "encryption");
  EXPECT_EQ(type(tcp("1.1.1.1", "f", "alice", true)).error,
            "connection requires a valid client certificate");
  EXPECT_EQ(type(tcp("1.1.1.1", "f", "alice", true), "mallory").error,
            "certificate authentication failed for user \"alice\"");
  EXPECT_EQ(type(tcp("1.1.1.1", "f", "alice", true), "alice").type, config::AuthType::kAny);
  // peer: the socket's OS user must be the database user.
  EXPECT_EQ(type(local("g", "alice"), "", "alice").type, config::AuthType::kAny);
  EXPECT_EQ(type(local("g", "alice"), "", "root").error,
            "Peer authentication failed for user \"alice\"");
  EXPECT_EQ(type(local("g", "alice"), "", "").error,
            "Peer authentication failed for user \"alice\"");
}

TEST(Hba, ClientcertOnAPasswordLineRequiresTheCertificateToo) {
  auto rules = parseOk(
      "hostssl a all all md5 clientcert=verify-ca\n"
      "hostssl b all all scram-sha-256 clientcert=verify-full\n");
  auto verdict = [&](HbaConnection c, bool verified, std::string_view cn) {
    c.cert_verified = verified;
    return hbaVerdict(matchHba(rules, c), c, cn, "");
  };
  EXPECT_EQ(verdict(tcp("1.1.1.1", "a", "alice", true), false, "").error,
            "connection requires a valid client certificate");
  EXPECT_EQ(verdict(tcp("1.1.1.1", "a", "alice", true), true, "someone").type,
            config::AuthType::kMd5);  // verify-ca: any name
  EXPECT_EQ(verdict(tcp("1.1.1.1", "b", "alice", true), true, "mallory").error,
            "certificate validation (clientcert=verify-full) failed for user \"alice\": CN "
            "mismatch");
  EXPECT_EQ(verdict(tcp("1.1.1.1", "b", "alice", true), true, "alice").type,
            config::AuthType::kScramSha256);
}

struct ErrorCase {
  const char* text;
  const char* error;
};

TEST(Hba, ErrorsNameTheLineAndWhatWasExpected) {
  const ErrorCase cases[] = {
      {"hots all all all trust",
       "/etc/sluice/hba.conf:1: invalid connection type \"hots\"; expected local, host, "
       "hostssl, hostnossl, hostgssenc or hostnogssenc"},
      {"\n\nhost all", "/etc/sluice/hba.conf:3: end of line before the user field"},
      {"host", "/etc/sluice/hba.conf:1: end of line before the database field"},
      {"host all all", "/etc/sluice/hba.conf:1: end of line before the IP address field"},
      {"host all all 10.0.0.0/8",
       "/etc/sluice/hba.conf:1: end of line before the authentication method"},
      {"local all all", "/etc/sluice/hba.conf:1: end of line before the authentication method"},
      {"host all all 10.0.0.0/33 md5",
       "/etc/sluice/hba.conf:1: invalid CIDR mask in address \"10.0.0.0/33\"; expected /0 to "
       "/32"},
      {"host all all ::1/x md5",
       "/etc/sluice/hba.conf:1: invalid CIDR mask in address \"::1/x\"; expected /0 to /128"},
      {"host all all db.example.com md5",
       "/etc/sluice/hba.conf:1: invalid IP address \"db.example.com\"; expected an IPv4 or IPv6 "
       "address or CIDR (host names are not supported by sluice)"},
      {"host all all samenet md5",
       "/etc/sluice/hba.conf:1: address \"samenet\" is not supported by sluice; write the "
       "address as a CIDR (e.g. 10.0.0.0/8)"},
      {"host all all samehost md5",
       "/etc/sluice/hba.conf:1: address \"samehost\" is not supported by sluice; write the "
       "address as a CIDR (e.g. 10.0.0.0/8)"},
      {"host all all 10.0.0.1",
       "/etc/sluice/hba.conf:1: end of line after address \"10.0.0.1\": expected a netmask or a "
       "CIDR (address/bits)"},
      {"host all all 10.0.0.1 ffff:: md5",
       "/etc/sluice/hba.conf:1: IP address and mask do not match: \"10.0.0.1\" and \"ffff::\""},
      {"host all all 10.0.0.1 nonsense md5",
       "/etc/sluice/hba.conf:1: invalid IP mask \"nonsense\""},
      {"host all all all ldap",
       "/etc/sluice/hba.conf:1: authentication method \"ldap\" is not supported by sluice; "
       "expected trust, reject, md5, password, scram-sha-256, cert or peer"},
      {"host all all all peer",
       "/etc/sluice/hba.conf:1: peer authentication is only supported on local sockets"},
      {"host all all all cert",
       "/etc/sluice/hba.conf:1: cert authentication is only supported on hostssl connections"},
      {"host all all all md5 foo=bar",
       "/etc/sluice/hba.conf:1: unknown authentication option \"foo\"; sluice knows clientcert"},
      {"host all all all md5 clientcert",
       "/etc/sluice/hba.conf:1: authentication option \"clientcert\" is not in name=value "
       "format"},
      {"host all all all md5 clientcert=verify-full",
       "/etc/sluice/hba.conf:1: clientcert can only be configured for hostssl rows"},
      {"hostssl all all all md5 clientcert=1",
       "/etc/sluice/hba.conf:1: invalid value for clientcert: \"1\"; expected verify-ca or "
       "verify-full"},
      {"hostssl all all all cert clientcert=verify-ca",
       "/etc/sluice/hba.conf:1: clientcert only accepts verify-full when using cert "
       "authentication"},
      {"local all all peer map=omicron",
       "/etc/sluice/hba.conf:1: map=omicron: user name maps (pg_ident.conf) are not supported "
       "by sluice"},
      {"host ,all all all md5", "/etc/sluice/hba.conf:1: unexpected ','; expected a name"},
      {"host a, all all md5,", "/etc/sluice/hba.conf:1: a list ends with a comma; expected a name"},
      {"host \"unterminated all all md5", "/etc/sluice/hba.conf:1: unterminated quoted name"},
      {"host,local all all all md5",
       "/etc/sluice/hba.conf:1: multiple values in the connection type field"},
      {"host all all 1.1.1.1/32,2.2.2.2/32 md5",
       "/etc/sluice/hba.conf:1: multiple values in the IP address field"},
      {"host all all all md5,trust",
       "/etc/sluice/hba.conf:1: multiple values in the authentication method field"},
      {"host @ all all md5", "/etc/sluice/hba.conf:1: '@' must be followed by a file name"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(parseErr(c.text), c.error) << c.text;
  }
}

}  // namespace
}  // namespace sluice::auth
