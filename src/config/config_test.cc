#include "config/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

namespace sluice::config {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr char kPath[] = "/etc/sluice.ini";

std::shared_ptr<const Config> parse(const std::string& text) { return parseConfig(text, kPath); }

// The ConfigError message parsing `text` throws, or "no error".
std::string errorOf(const std::string& text) {
  try {
    parse(text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

std::string userListErrorOf(const std::string& text) {
  try {
    parseUserList(text, "/etc/userlist.txt");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

// The warning for an unimplemented PgBouncer key at kPath:line.
std::string notImplemented(int line, const std::string& key) {
  return std::string(kPath) + ":" + std::to_string(line) + ": '" + key +
         "' is not implemented by sluice yet; ignored";
}

// A scratch directory removed at scope exit.
class TempDir {
 public:
  TempDir()
      : path_(fs::temp_directory_path() /
              ("sluice_config_test_" + std::to_string(std::random_device{}()))) {
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    fs::path file = path_ / name;
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
    return file.string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

TEST(ConfigTest, DefaultsArePgBouncers) {
  auto config = parse("");
  const Settings& s = config->settings;
  EXPECT_EQ(config->path, "/etc/sluice.ini");
  EXPECT_TRUE(config->databases.empty());
  EXPECT_TRUE(config->users.empty());
  EXPECT_TRUE(config->warnings.empty());
  EXPECT_EQ(s.listen_addr, "");
  EXPECT_EQ(s.listen_port, 6432);
  EXPECT_EQ(s.unix_socket_dir, "/tmp");
  EXPECT_EQ(s.unix_socket_mode, 0777);
  EXPECT_EQ(s.auth_type, AuthType::kMd5);
  EXPECT_EQ(s.auth_query, "SELECT usename, passwd FROM pg_shadow WHERE usename=$1");
  EXPECT_EQ(s.pool_mode, PoolMode::kSession);
  EXPECT_EQ(s.max_client_conn, 100);
  EXPECT_EQ(s.default_pool_size, 20);
  EXPECT_EQ(s.reserve_pool_timeout, milliseconds(5000));
  EXPECT_EQ(s.server_lifetime, milliseconds(3600 * 1000));
  EXPECT_EQ(s.server_idle_timeout, milliseconds(600 * 1000));
  EXPECT_EQ(s.query_wait_timeout, milliseconds(120 * 1000));
  EXPECT_EQ(s.query_timeout, milliseconds(0));
  EXPECT_EQ(s.server_reset_query, "DISCARD ALL");
  EXPECT_EQ(s.server_check_query, "select 1");
  EXPECT_EQ(s.max_packet_size, 2147483647);
  EXPECT_EQ(s.pkt_buf, 4096);
  EXPECT_TRUE(s.log_connections);
  EXPECT_FALSE(s.so_reuseport);
  EXPECT_EQ(s.ops_allow, (std::vector<std::string>{"127.0.0.0/8", "::1/128"}));
  EXPECT_EQ(s.workers, 0);
}

TEST(ConfigTest, WithSettingChangesOneKeyOfACopy) {
  auto base = parse("[databases]\nappdb = host=db1\n[pgbouncer]\ndefault_pool_size = 5\n");
  auto changed = withSetting(*base, "Default_Pool_Size", "3");
  EXPECT_EQ(changed->settings.default_pool_size, 3);
  EXPECT_EQ(base->settings.default_pool_size, 5);  // the snapshot itself is untouched
  ASSERT_EQ(changed->databases.size(), 1u);
  EXPECT_EQ(changed->databases[0].host, "db1");
  EXPECT_EQ(withSetting(*base, "query_wait_timeout", "2.5")->settings.query_wait_timeout,
            milliseconds(2500));
  EXPECT_EQ(withSetting(*base, "server_check_query", "select 'x'")->settings.server_check_query,
            "select 'x'");
  EXPECT_THROW(withSetting(*base, "default_pool_size", "lots"), ConfigError);
  EXPECT_THROW(withSetting(*base, "no_such_key", "1"), ConfigError);
}

TEST(ConfigTest, PathIsMadeAbsolute) {
  auto config = parseConfig("", "conf/../etc/pgbouncer.ini");
  EXPECT_EQ(config->path, (fs::current_path() / "etc/pgbouncer.ini").string());
}

TEST(ConfigTest, ParsesEveryValueType) {
  auto config = parse(R"([pgbouncer]
listen_addr = 127.0.0.1, ::1
listen_port = 7432
unix_socket_dir =
unix_socket_mode = 0700
so_reuseport = yes
workers = 4
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
auth_query = SELECT p_user, p_password FROM public.lookup($1)
admin_users = admin , root,
stats_users = stats
pool_mode = transaction
max_client_conn = 5000
default_pool_size = 25
min_pool_size = 2
reserve_pool_size = 5
reserve_pool_timeout = 0.5
max_db_connections = 50
max_user_connections = 40
max_prepared_statements = 0
server_round_robin = on
ignore_startup_parameters = extra_float_digits, Search_Path
track_extra_parameters = IntervalStyle
server_lifetime = 1h
server_idle_timeout = 10min
server_connect_timeout = 250ms
server_reset_query =
server_reset_query_always = true
server_check_delay = 0
query_wait_timeout = 2d
client_login_timeout = 1500us
max_packet_size = 1048576
pkt_buf = 8192
log_connections = off
log_stats = 0
stats_period = 15
verbose = 2
http_listen = 0.0.0.0:9127
ops_allow = 10.0.0.0/8
monitor_warn_utilization = 90
server_connect_parallelism = 8
)");
  const Settings& s = config->settings;
  EXPECT_TRUE(config->warnings.empty());
  EXPECT_EQ(s.listen_addr, "127.0.0.1, ::1");
  EXPECT_EQ(s.listen_port, 7432);
  EXPECT_EQ(s.unix_socket_dir, "");
  EXPECT_EQ(s.unix_socket_mode, 0700);
  EXPECT_TRUE(s.so_reuseport);
  EXPECT_EQ(s.workers, 4);
  EXPECT_EQ(s.auth_type, AuthType::kScramSha256);
  EXPECT_EQ(s.auth_file, "/etc/pgbouncer/userlist.txt");
  EXPECT_EQ(s.auth_query, "SELECT p_user, p_password FROM public.lookup($1)");
  EXPECT_EQ(s.admin_users, (std::vector<std::string>{"admin", "root"}));
  EXPECT_EQ(s.stats_users, (std::vector<std::string>{"stats"}));
  EXPECT_EQ(s.pool_mode, PoolMode::kTransaction);
  EXPECT_EQ(s.max_client_conn, 5000);
  EXPECT_EQ(s.default_pool_size, 25);
  EXPECT_EQ(s.min_pool_size, 2);
  EXPECT_EQ(s.reserve_pool_size, 5);
  EXPECT_EQ(s.reserve_pool_timeout, milliseconds(500));
  EXPECT_EQ(s.max_db_connections, 50);
  EXPECT_EQ(s.max_user_connections, 40);
  EXPECT_EQ(s.max_prepared_statements, 0);
  EXPECT_TRUE(s.server_round_robin);
  EXPECT_EQ(s.ignore_startup_parameters,
            (std::vector<std::string>{"extra_float_digits", "search_path"}));
  EXPECT_EQ(s.track_extra_parameters, (std::vector<std::string>{"IntervalStyle"}));
  EXPECT_EQ(s.server_lifetime, milliseconds(3600 * 1000));
  EXPECT_EQ(s.server_idle_timeout, milliseconds(600 * 1000));
  EXPECT_EQ(s.server_connect_timeout, milliseconds(250));
  EXPECT_EQ(s.server_reset_query, "");
  EXPECT_TRUE(s.server_reset_query_always);
  EXPECT_EQ(s.server_check_delay, milliseconds(0));
  EXPECT_EQ(s.query_wait_timeout, milliseconds(2 * 86400 * 1000));
  EXPECT_EQ(s.client_login_timeout, milliseconds(2));  // rounded to the nearest millisecond
  EXPECT_EQ(s.max_packet_size, 1048576);
  EXPECT_EQ(s.pkt_buf, 8192);
  EXPECT_FALSE(s.log_connections);
  EXPECT_FALSE(s.log_stats);
  EXPECT_EQ(s.stats_period, milliseconds(15000));
  EXPECT_EQ(s.verbose, 2);
  EXPECT_EQ(s.http_listen, "0.0.0.0:9127");
  EXPECT_EQ(s.ops_allow, (std::vector<std::string>{"10.0.0.0/8"}));
  EXPECT_EQ(s.monitor_warn_utilization, 90);
  EXPECT_EQ(s.server_connect_parallelism, 8);
}

TEST(ConfigTest, BooleansAcceptEverySpelling) {
  for (const char* yes : {"1", "yes", "on", "true", "TRUE", "Yes"}) {
    EXPECT_TRUE(
        parse(std::string("[pgbouncer]\nserver_fast_close = ") + yes)->settings.server_fast_close)
        << yes;
  }
  for (const char* no : {"0", "no", "off", "false", "OFF"}) {
    EXPECT_FALSE(
        parse(std::string("[pgbouncer]\nlog_pooler_errors = ") + no)->settings.log_pooler_errors)
        << no;
  }
}

TEST(ConfigTest, DurationsTakeFractionalSecondsAndUnits) {
  const std::pair<const char*, long long> cases[] = {
      {"30", 30000},     {"5.0", 5000},    {"0.5", 500},     {".25", 250},
      {"7.", 7000},      {"250ms", 250},   {"250 ms", 250},  {"2s", 2000},
      {"1.5min", 90000}, {"3h", 10800000}, {"1d", 86400000}, {"0", 0},
      {"0ms", 0},        {"100us", 1},     {"2500us", 3},    {"1MS", 1},
  };
  for (const auto& [text, ms] : cases) {
    auto config = parse(std::string("[pgbouncer]\nquery_timeout = ") + text);
    EXPECT_EQ(config->settings.query_timeout, milliseconds(ms)) << text;
  }
}

TEST(ConfigTest, KeysAreCaseInsensitiveAndWhitespaceIsTrimmed) {
  auto config = parse("  [pgbouncer]  \n\tMAX_Client_Conn\t=\t 42 \r\n  Pool_Mode=Statement\n");
  EXPECT_EQ(config->settings.max_client_conn, 42);
  EXPECT_EQ(config->settings.pool_mode, PoolMode::kStatement);
  EXPECT_TRUE(config->warnings.empty());
}

TEST(ConfigTest, CommentsAreWholeLinesOnly) {
  auto config = parse(R"(; a comment
# another comment
[pgbouncer]
  ; indented comment
;listen_port = 1
#listen_port = 2
server_reset_query = DISCARD ALL; -- not a comment, as in PgBouncer
)");
  EXPECT_EQ(config->settings.listen_port, 6432);
  EXPECT_EQ(config->settings.server_reset_query, "DISCARD ALL; -- not a comment, as in PgBouncer");
}

TEST(ConfigTest, SluiceSectionIsASynonymForPgBouncer) {
  auto config = parse("[sluice]\nlisten_port = 6000\nbogus_key = 1\n");
  EXPECT_EQ(config->settings.listen_port, 6000);
  ASSERT_EQ(config->warnings.size(), 1u);
  EXPECT_EQ(config->warnings[0], "/etc/sluice.ini:3: unknown key 'bogus_key' in [sluice]; ignored");
}

TEST(ConfigTest, LaterValueWins) {
  auto config = parse("[pgbouncer]\ndefault_pool_size = 5\ndefault_pool_size = 7\n");
  EXPECT_EQ(config->settings.default_pool_size, 7);
}

TEST(ConfigTest, EmptyListsAreEmpty) {
  auto config = parse("[pgbouncer]\nops_allow =\nadmin_users = , ,\n");
  EXPECT_TRUE(config->settings.ops_allow.empty());
  EXPECT_TRUE(config->settings.admin_users.empty());
}

TEST(ConfigTest, EnumsAreCaseInsensitive) {
  auto config = parse("[pgbouncer]\nauth_type = HBA\npool_mode = TRANSACTION\n");
  EXPECT_EQ(config->settings.auth_type, AuthType::kHba);
  EXPECT_EQ(config->settings.pool_mode, PoolMode::kTransaction);
  for (AuthType a : {AuthType::kTrust, AuthType::kAny, AuthType::kPlain, AuthType::kMd5,
                     AuthType::kScramSha256, AuthType::kCert, AuthType::kHba}) {
    EXPECT_EQ(parse(std::string("[pgbouncer]\nauth_type = ") + authTypeName(a))->settings.auth_type,
              a);
  }
}

TEST(ConfigTest, NamesAreIniSpellings) {
  EXPECT_STREQ(poolModeName(PoolMode::kSession), "session");
  EXPECT_STREQ(poolModeName(PoolMode::kTransaction), "transaction");
  EXPECT_STREQ(poolModeName(PoolMode::kStatement), "statement");
  EXPECT_STREQ(authTypeName(AuthType::kTrust), "trust");
  EXPECT_STREQ(authTypeName(AuthType::kAny), "any");
  EXPECT_STREQ(authTypeName(AuthType::kPlain), "plain");
  EXPECT_STREQ(authTypeName(AuthType::kMd5), "md5");
  EXPECT_STREQ(authTypeName(AuthType::kScramSha256), "scram-sha-256");
  EXPECT_STREQ(authTypeName(AuthType::kCert), "cert");
  EXPECT_STREQ(authTypeName(AuthType::kHba), "hba");
}

TEST(ConfigTest, SessionStatePolicy) {
  EXPECT_EQ(parse("[pgbouncer]\n")->settings.session_state, SessionStatePolicy::kPin);
  EXPECT_EQ(parse("[sluice]\nsession_state = Refuse\n")->settings.session_state,
            SessionStatePolicy::kRefuse);
  EXPECT_EQ(parse("[sluice]\nsession_state = pin\n")->settings.session_state,
            SessionStatePolicy::kPin);
  EXPECT_STREQ(sessionStatePolicyName(SessionStatePolicy::kRefuse), "refuse");
  EXPECT_EQ(errorOf("[sluice]\nsession_state = close\n"),
            "/etc/sluice.ini:2: session_state = 'close': expected pin or refuse");
  auto changed = withSetting(*parse("[sluice]\n"), "session_state", "refuse");
  EXPECT_EQ(changed->settings.session_state, SessionStatePolicy::kRefuse);
}

// ---- value errors ----

TEST(ConfigTest, BadIntegerIsAnError) {
  EXPECT_EQ(errorOf("[pgbouncer]\nmax_client_conn = lots\n"),
            "/etc/sluice.ini:2: max_client_conn = 'lots': expected an integer between 0 and "
            "2147483647");
  EXPECT_EQ(errorOf("[pgbouncer]\ndefault_pool_size = 20x\n"),
            "/etc/sluice.ini:2: default_pool_size = '20x': expected an integer between 0 and "
            "2147483647");
  EXPECT_EQ(errorOf("[pgbouncer]\nworkers =\n"),
            "/etc/sluice.ini:2: workers = '': expected an integer between 0 and 2147483647");
}

TEST(ConfigTest, OutOfRangeIntegerIsAnError) {
  EXPECT_EQ(errorOf("[pgbouncer]\nlisten_port = 70000\n"),
            "/etc/sluice.ini:2: listen_port = '70000': expected an integer between 1 and 65535");
  EXPECT_EQ(errorOf("[pgbouncer]\nlisten_port = 0\n"),
            "/etc/sluice.ini:2: listen_port = '0': expected an integer between 1 and 65535");
  EXPECT_EQ(errorOf("[pgbouncer]\nmin_pool_size = -1\n"),
            "/etc/sluice.ini:2: min_pool_size = '-1': expected an integer between 0 and "
            "2147483647");
  EXPECT_EQ(errorOf("[pgbouncer]\nmax_packet_size = 99999999999\n"),
            "/etc/sluice.ini:2: max_packet_size = '99999999999': expected an integer between 1 "
            "and 2147483647");
  EXPECT_EQ(errorOf("[pgbouncer]\nmonitor_warn_utilization = 101\n"),
            "/etc/sluice.ini:2: monitor_warn_utilization = '101': expected an integer between 0 "
            "and 100");
  EXPECT_EQ(errorOf("[pgbouncer]\nunix_socket_mode = 0789\n"),
            "/etc/sluice.ini:2: unix_socket_mode = '0789': expected an octal file mode between 0 "
            "and 0777");
}

TEST(ConfigTest, BadBooleanIsAnError) {
  EXPECT_EQ(errorOf("[pgbouncer]\nso_reuseport = maybe\n"),
            "/etc/sluice.ini:2: so_reuseport = 'maybe': expected 1, 0, yes, no, on, off, true or "
            "false");
}

TEST(ConfigTest, BadEnumIsAnError) {
  EXPECT_EQ(errorOf("[pgbouncer]\npool_mode = sesion\n"),
            "/etc/sluice.ini:2: pool_mode = 'sesion': expected session, transaction or statement");
  EXPECT_EQ(errorOf("[pgbouncer]\nauth_type = pam\n"),
            "/etc/sluice.ini:2: auth_type = 'pam': expected trust, any, plain, md5, "
            "scram-sha-256, cert or hba");
}

TEST(ConfigTest, BadDurationIsAnError) {
  for (const char* bad : {"soon", "-1", "1.2.3", "5 fortnights", "ms", "1e3", "."}) {
    EXPECT_EQ(errorOf(std::string("[pgbouncer]\nserver_lifetime = ") + bad),
              std::string("/etc/sluice.ini:2: server_lifetime = '") + bad +
                  "': expected a duration in seconds such as 30, 0.5 or 250ms")
        << bad;
  }
}

// ---- structure errors ----

TEST(ConfigTest, UnknownSectionIsAnError) {
  EXPECT_EQ(errorOf("[pgbouncer]\nlisten_port = 1\n\n[pgbouncr]\n"),
            "/etc/sluice.ini:4: unknown section [pgbouncr]; expected [databases], [users], "
            "[pgbouncer] or [sluice]");
}

TEST(ConfigTest, KeyBeforeAnySectionIsAnError) {
  EXPECT_EQ(errorOf("listen_port = 1\n"),
            "/etc/sluice.ini:1: 'listen_port' is outside of any section");
}

TEST(ConfigTest, SyntaxErrors) {
  EXPECT_EQ(errorOf("[pgbouncer]\nlisten_port 6432\n"),
            "/etc/sluice.ini:2: syntax error: expected 'key = value', '[section]' or "
            "'%include file'");
  EXPECT_EQ(errorOf("[pgbouncer]\n= 6432\n"),
            "/etc/sluice.ini:2: syntax error: expected 'key = value', '[section]' or "
            "'%include file'");
  EXPECT_EQ(errorOf("[pgbouncer]\nlisten port = 6432\n"),
            "/etc/sluice.ini:2: syntax error: expected 'key = value', '[section]' or "
            "'%include file'");
  EXPECT_EQ(errorOf("[databases]\n\"\" = host=x\n"), "/etc/sluice.ini:2: empty database name");
  EXPECT_EQ(errorOf("[pgbouncer] junk\n"), "/etc/sluice.ini:1: syntax error: expected '[section]'");
  EXPECT_EQ(errorOf("[pgbouncer\n"), "/etc/sluice.ini:1: syntax error: expected '[section]'");
  EXPECT_EQ(errorOf("[databases]\n\"unterminated = host=x\n"),
            "/etc/sluice.ini:2: syntax error: unterminated quoted name");
  EXPECT_EQ(errorOf("%includes foo\n"),
            "/etc/sluice.ini:1: syntax error: expected 'key = value', '[section]' or "
            "'%include file'");
}

// ---- warnings ----

TEST(ConfigTest, UnimplementedKeysWarnOnceEach) {
  auto config = parse(R"([pgbouncer]
tcp_keepalive = 1
tcp_keepidle = 600
TCP_KEEPINTVL = 30
dns_max_ttl = 15
syslog = 1
user = postgres
scram_iterations = 4096
auth_ident_file = /etc/ident
autodb_idle_timeout = 3600
listen_port = 6433
)");
  EXPECT_EQ(config->settings.listen_port, 6433);
  ASSERT_FALSE(config->warnings.empty());
  EXPECT_EQ(config->warnings[0],
            "/etc/sluice.ini:2: 'tcp_keepalive' is not implemented by sluice yet; ignored");
  EXPECT_EQ(config->warnings,
            (std::vector<std::string>{
                notImplemented(2, "tcp_keepalive"), notImplemented(3, "tcp_keepidle"),
                notImplemented(4, "TCP_KEEPINTVL"), notImplemented(5, "dns_max_ttl"),
                notImplemented(6, "syslog"), notImplemented(7, "user"),
                notImplemented(8, "scram_iterations"), notImplemented(9, "auth_ident_file"),
                notImplemented(10, "autodb_idle_timeout")}));
}

TEST(ConfigTest, UnknownKeyWarns) {
  auto config = parse("[pgbouncer]\nmax_client_connections = 10\n");
  EXPECT_EQ(config->settings.max_client_conn, 100);
  EXPECT_EQ(config->warnings, (std::vector<std::string>{"/etc/sluice.ini:2: unknown key "
                                                        "'max_client_connections' in [pgbouncer]; "
                                                        "ignored"}));
}

TEST(ConfigTest, TlsSettings) {
  auto config = parse(
      "[pgbouncer]\nclient_tls_sslmode = Verify-Full\nclient_tls_cert_file = /etc/ssl/c.pem\n"
      "client_tls_key_file = /etc/ssl/c.key\nclient_tls_ca_file = /etc/ssl/ca.pem\n"
      "client_tls_protocols = tlsv1.3\nserver_tls_sslmode = require\n"
      "server_tls_ciphers = HIGH\n");
  EXPECT_TRUE(config->warnings.empty());
  const auto& s = config->settings;
  EXPECT_EQ(s.client_tls_sslmode, SslMode::kVerifyFull);
  EXPECT_EQ(s.client_tls_cert_file, "/etc/ssl/c.pem");
  EXPECT_EQ(s.client_tls_key_file, "/etc/ssl/c.key");
  EXPECT_EQ(s.client_tls_ca_file, "/etc/ssl/ca.pem");
  EXPECT_EQ(s.client_tls_protocols, "tlsv1.3");
  EXPECT_EQ(s.server_tls_sslmode, SslMode::kRequire);
  EXPECT_EQ(s.server_tls_ciphers, "HIGH");
  EXPECT_STREQ(sslModeName(s.client_tls_sslmode), "verify-full");
  auto defaults = parse("[pgbouncer]\n");
  EXPECT_EQ(defaults->settings.client_tls_sslmode, SslMode::kDisable);
  EXPECT_EQ(defaults->settings.server_tls_sslmode, SslMode::kPrefer);  // PgBouncer 1.20 on
  EXPECT_EQ(errorOf("[pgbouncer]\nserver_tls_sslmode = on\n"),
            "/etc/sluice.ini:2: server_tls_sslmode = 'on': expected disable, allow, prefer, "
            "require, verify-ca or verify-full");
}

TEST(ConfigTest, PeersSectionWarnsOnce) {
  auto config = parse("[peers]\n1 = host=10.0.0.1\n2 = host=10.0.0.2\n[pgbouncer]\n");
  EXPECT_EQ(config->warnings, (std::vector<std::string>{"/etc/sluice.ini:1: '[peers]' is not "
                                                        "implemented by sluice yet; ignored"}));
}

TEST(ConfigTest, AuthLookupAndPendingLoginSettings) {
  auto config = parse(
      "[databases]\napp = host=db1 auth_user=lookup auth_dbname=authdb\n"
      "[pgbouncer]\nauth_user = pgb\nauth_dbname = postgres\nmax_pending_logins = 50\n");
  EXPECT_TRUE(config->warnings.empty());
  EXPECT_EQ(config->settings.auth_dbname, "postgres");
  EXPECT_EQ(config->settings.max_pending_logins, 50);
  EXPECT_EQ(config->databases[0].auth_user, "lookup");
  EXPECT_EQ(config->databases[0].auth_dbname, "authdb");
  EXPECT_EQ(parse("[pgbouncer]\n")->settings.max_pending_logins, 1000);
  EXPECT_EQ(errorOf("[pgbouncer]\nmax_pending_logins = -1\n"),
            "/etc/sluice.ini:2: max_pending_logins = '-1': expected an integer between 0 and "
            "2147483647");
}

// ---- [databases] and [users] ----

TEST(ConfigTest, DatabaseConnStringFields) {
  auto config = parse(R"([databases]
app = host=10.0.0.5 port=5433 dbname=app_prod user=app password=secret auth_user=pgbouncer pool_size=30 min_pool_size=3 reserve_pool=4 max_db_connections=60 pool_mode=transaction client_encoding=UTF8 datestyle=ISO timezone=UTC application_name=sluice connect_query='SELECT 1'
)");
  ASSERT_EQ(config->databases.size(), 1u);
  const DatabaseEntry& db = config->databases[0];
  EXPECT_EQ(db.name, "app");
  EXPECT_EQ(db.host, "10.0.0.5");
  EXPECT_EQ(db.port, 5433);
  EXPECT_EQ(db.dbname, "app_prod");
  EXPECT_EQ(db.user, "app");
  EXPECT_EQ(db.password, "secret");
  EXPECT_EQ(db.auth_user, "pgbouncer");
  EXPECT_EQ(db.pool_size, 30);
  EXPECT_EQ(db.min_pool_size, 3);
  EXPECT_EQ(db.reserve_pool_size, 4);
  EXPECT_EQ(db.max_db_connections, 60);
  EXPECT_EQ(db.pool_mode, PoolMode::kTransaction);
  EXPECT_EQ(db.client_encoding, "UTF8");
  EXPECT_EQ(db.datestyle, "ISO");
  EXPECT_EQ(db.timezone, "UTC");
  EXPECT_EQ(db.application_name, "sluice");
  EXPECT_EQ(db.connect_query, "SELECT 1");
  EXPECT_EQ(db.line, 2);
}

TEST(ConfigTest, DatabaseConnStringQuotingAndSpacing) {
  auto config = parse(R"([databases]
a = password='it\'s a \\ secret' connect_query='SET x = ''y''' host = /var/run/postgresql
b = password='' user=bob
c = password=p\a'ss HOST=db1,db2 reserve_pool_size=2
"my-db.v2" = dbname=x
"with ""quotes""" =
)");
  ASSERT_EQ(config->databases.size(), 5u);
  EXPECT_EQ(config->databases[0].password, "it's a \\ secret");
  EXPECT_EQ(config->databases[0].connect_query, "SET x = 'y'");
  EXPECT_EQ(config->databases[0].host, "/var/run/postgresql");
  EXPECT_EQ(config->databases[1].password, "");
  EXPECT_EQ(config->databases[1].user, "bob");
  EXPECT_EQ(config->databases[2].password, "p\\a'ss");  // unquoted values are taken as written
  EXPECT_EQ(config->databases[2].host, "db1,db2");
  EXPECT_EQ(config->databases[2].reserve_pool_size, 2);
  EXPECT_EQ(config->databases[3].name, "my-db.v2");
  EXPECT_EQ(config->databases[4].name, "with \"quotes\"");
}

TEST(ConfigTest, EmptyConnStringMeansDefaults) {
  auto config = parse("[databases]\nfoodb =\n");
  ASSERT_EQ(config->databases.size(), 1u);
  const DatabaseEntry& db = config->databases[0];
  EXPECT_EQ(db.name, "foodb");
  EXPECT_EQ(db.host, "");
  EXPECT_EQ(db.port, 5432);
  EXPECT_EQ(db.dbname, "");
  EXPECT_FALSE(db.pool_size.has_value());
  EXPECT_FALSE(db.pool_mode.has_value());
}

TEST(ConfigTest, FindDatabaseFallsBackToStar) {
  auto config = parse("[databases]\nApp = dbname=a\n* = host=fallback\n");
  ASSERT_NE(config->findDatabase("App"), nullptr);
  EXPECT_EQ(config->findDatabase("App")->dbname, "a");
  ASSERT_NE(config->findDatabase("app"), nullptr);  // names are case-sensitive
  EXPECT_EQ(config->findDatabase("app")->name, "*");
  EXPECT_EQ(config->findDatabase("other")->host, "fallback");
  EXPECT_EQ(parse("[databases]\nApp =\n")->findDatabase("other"), nullptr);
}

TEST(ConfigTest, DuplicateDatabaseIsAnError) {
  EXPECT_EQ(errorOf("[databases]\napp = host=a\n\napp = host=b\n"),
            "/etc/sluice.ini:4: database 'app' is already defined at /etc/sluice.ini:2");
  EXPECT_EQ(errorOf("[databases]\n* =\n* = host=x\n"),
            "/etc/sluice.ini:3: database '*' is already defined at /etc/sluice.ini:2");
}

TEST(ConfigTest, BadConnStringKeyIsAnError) {
  EXPECT_EQ(errorOf("[databases]\napp = hots=db1\n"),
            "/etc/sluice.ini:2: database 'app': unknown parameter 'hots'; expected host, port, "
            "dbname, user, password, auth_user, auth_dbname, pool_size, min_pool_size, "
            "reserve_pool, "
            "max_db_connections, pool_mode, client_encoding, datestyle, timezone, "
            "application_name or connect_query");
}

TEST(ConfigTest, BadConnStringValuesAreErrors) {
  EXPECT_EQ(errorOf("[databases]\napp = port=abc\n"),
            "/etc/sluice.ini:2: database 'app': port = 'abc': expected an integer between 1 and "
            "65535");
  EXPECT_EQ(errorOf("[databases]\napp = pool_size=-5\n"),
            "/etc/sluice.ini:2: database 'app': pool_size = '-5': expected an integer between 0 "
            "and 2147483647");
  EXPECT_EQ(errorOf("[databases]\napp = pool_mode=batch\n"),
            "/etc/sluice.ini:2: database 'app': pool_mode = 'batch': expected session, "
            "transaction or statement");
  EXPECT_EQ(errorOf("[databases]\napp = host\n"),
            "/etc/sluice.ini:2: database 'app': expected key=value at 'host'");
  EXPECT_EQ(errorOf("[databases]\napp = host=x =y\n"),
            "/etc/sluice.ini:2: database 'app': expected key=value at '=y'");
  EXPECT_EQ(errorOf("[databases]\napp = password='a'b\n"),
            "/etc/sluice.ini:2: database 'app': expected a space after the quoted value of "
            "password");
}

TEST(ConfigTest, UnterminatedQuoteIsAnError) {
  EXPECT_EQ(errorOf("[databases]\napp = host=x password='abc\n"),
            "/etc/sluice.ini:2: database 'app': unterminated quoted value for password");
  EXPECT_EQ(errorOf("[databases]\napp = password='abc\\'\n"),
            "/etc/sluice.ini:2: database 'app': unterminated quoted value for password");
}

TEST(ConfigTest, NewerPgBouncerDatabaseKeysWarn) {
  auto config = parse("[databases]\napp = host=a load_balance_hosts=round-robin\n");
  ASSERT_EQ(config->databases.size(), 1u);
  EXPECT_EQ(config->warnings, (std::vector<std::string>{notImplemented(2, "load_balance_hosts")}));
}

TEST(ConfigTest, UsersSection) {
  auto config = parse(R"([users]
alice = pool_mode=transaction max_user_connections=10 pool_size=5
"bob smith" = pool_mode=statement
carol =
)");
  ASSERT_EQ(config->users.size(), 3u);
  const UserEntry* alice = config->findUser("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->pool_mode, PoolMode::kTransaction);
  EXPECT_EQ(alice->max_user_connections, 10);
  EXPECT_EQ(alice->pool_size, 5);
  ASSERT_NE(config->findUser("bob smith"), nullptr);
  EXPECT_EQ(config->findUser("bob smith")->pool_mode, PoolMode::kStatement);
  EXPECT_FALSE(config->findUser("carol")->pool_mode.has_value());
  EXPECT_EQ(config->findUser("dave"), nullptr);
}

TEST(ConfigTest, UserErrors) {
  EXPECT_EQ(errorOf("[users]\nalice = host=x\n"),
            "/etc/sluice.ini:2: user 'alice': unknown parameter 'host'; expected pool_mode, "
            "max_user_connections or pool_size");
  EXPECT_EQ(errorOf("[users]\nalice = max_user_connections=many\n"),
            "/etc/sluice.ini:2: user 'alice': max_user_connections = 'many': expected an integer "
            "between 0 and 2147483647");
  EXPECT_EQ(errorOf("[users]\nalice =\nalice = pool_size=1\n"),
            "/etc/sluice.ini:3: user 'alice' is already defined at /etc/sluice.ini:2");
}

// ---- %include ----

TEST(ConfigTest, IncludeIsRelativeToTheIncludingFile) {
  TempDir dir;
  dir.write("conf.d/databases.ini", "app = host=db1\n%include more/users.ini\n");
  dir.write("conf.d/more/users.ini",
            "[users]\nalice = pool_size=3\n[pgbouncer]\ntcp_keepalive = 1\n");
  std::string main = dir.write("pgbouncer.ini",
                               "[databases]\n%include conf.d/databases.ini\nlisten_port = 7000\n");
  auto config = loadConfig(main);
  EXPECT_EQ(config->path, main);
  ASSERT_EQ(config->databases.size(), 1u);
  EXPECT_EQ(config->databases[0].host, "db1");
  ASSERT_NE(config->findUser("alice"), nullptr);
  // The section opened inside the include stays open after it, as in PgBouncer.
  EXPECT_EQ(config->settings.listen_port, 7000);
  EXPECT_EQ(config->warnings,
            (std::vector<std::string>{dir.path() + "/conf.d/more/users.ini:4: 'tcp_keepalive' is "
                                                   "not implemented by sluice yet; ignored"}));
}

TEST(ConfigTest, ParseConfigResolvesIncludesAgainstItsPath) {
  TempDir dir;
  dir.write("extra.ini", "listen_port = 7100\n");
  auto config = parseConfig("[pgbouncer]\n%include extra.ini\n", dir.path() + "/main.ini");
  EXPECT_EQ(config->settings.listen_port, 7100);
}

TEST(ConfigTest, IncludeLoopIsAnError) {
  TempDir dir;
  dir.write("a.ini", "[pgbouncer]\n%include b.ini\n");
  dir.write("b.ini", "%include ./a.ini\n");
  std::string a = dir.path() + "/a.ini";
  std::string b = dir.path() + "/b.ini";
  try {
    loadConfig(a);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              b + ":1: %include './a.ini': include loop (" + a + " -> " + b + " -> " + a + ")");
  }
}

TEST(ConfigTest, IncludeDepthIsLimited) {
  TempDir dir;
  for (int i = 0; i < 11; ++i) {
    dir.write("f" + std::to_string(i) + ".ini", "%include f" + std::to_string(i + 1) + ".ini\n");
  }
  dir.write("f11.ini", "[pgbouncer]\n");
  try {
    loadConfig(dir.path() + "/f0.ini");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), dir.path() +
                                         "/f10.ini:1: %include 'f11.ini': includes nested more "
                                         "than 10 deep");
  }
  // Ten levels are fine.
  EXPECT_NO_THROW(loadConfig(dir.path() + "/f1.ini"));
}

TEST(ConfigTest, MissingIncludeIsAnError) {
  TempDir dir;
  std::string main = dir.write("main.ini", "[pgbouncer]\n\n%include missing.ini\n");
  try {
    loadConfig(main);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), main + ":3: %include 'missing.ini': cannot read " +
                                         dir.path() + "/missing.ini: No such file or directory");
  }
  EXPECT_EQ(errorOf("%include\n"), "/etc/sluice.ini:1: %include needs a file name");
}

TEST(ConfigTest, MissingConfigFileIsAnError) {
  TempDir dir;
  try {
    loadConfig(dir.path() + "/nope.ini");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config file: cannot read " + dir.path() + "/nope.ini: No such file or directory");
  }
}

// ---- auth_file ----

TEST(ConfigTest, UserListParsesQuotesCommentsAndTrailingText) {
  UserList list = parseUserList(R"(; comment
# another comment

"alice" "md5a8c6dbf6d2c0f3e4b5a6c7d8e9f0a1b2"
  "bob"	"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"  trailing text is ignored
"say ""hi""" "pass ""word"""
"carol" ""
"alice" "second wins"
)",
                                "/etc/userlist.txt");
  EXPECT_EQ(list.secrets.size(), 4u);
  ASSERT_NE(list.find("alice"), nullptr);
  EXPECT_EQ(*list.find("alice"), "second wins");
  EXPECT_EQ(*list.find("bob"), "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy");
  EXPECT_EQ(*list.find("say \"hi\""), "pass \"word\"");
  EXPECT_EQ(*list.find("carol"), "");
  EXPECT_EQ(list.find("dave"), nullptr);
}

TEST(ConfigTest, MalformedUserListLineIsAnError) {
  const std::string expected = ": malformed line, expected \"user\" \"secret\"";
  EXPECT_EQ(userListErrorOf("\"alice\" \"x\"\nbob secret\n"), "/etc/userlist.txt:2" + expected);
  EXPECT_EQ(userListErrorOf("\"alice\"\n"), "/etc/userlist.txt:1" + expected);
  EXPECT_EQ(userListErrorOf("\"alice\" secret\n"), "/etc/userlist.txt:1" + expected);
  EXPECT_EQ(userListErrorOf("\"alice\" \"unterminated\n"), "/etc/userlist.txt:1" + expected);
  EXPECT_EQ(userListErrorOf("\n\n\"alice \"x\"\n"), "/etc/userlist.txt:3" + expected);
  EXPECT_EQ(userListErrorOf("\"\" \"x\"\n"), "/etc/userlist.txt:1: empty user name");
}

TEST(ConfigTest, LoadUserListReadsTheFile) {
  TempDir dir;
  std::string path = dir.write("userlist.txt", "\"app\" \"s3cret\"\r\n");
  UserList list = loadUserList(path);
  ASSERT_NE(list.find("app"), nullptr);
  EXPECT_EQ(*list.find("app"), "s3cret");
  try {
    loadUserList(dir.path() + "/none.txt");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "auth_file: cannot read " + dir.path() + "/none.txt: No such file or directory");
  }
}

// ---- a real file ----

// Debian's /etc/pgbouncer/pgbouncer.ini as an operator leaves it after tuning.
TEST(ConfigTest, RealisticDebianPgBouncerIni) {
  auto config = parse(R"(;; database name = connect string
;;
;; connect string params:
;;   dbname= host= port= user= password= auth_user=
;;   client_encoding= datestyle= timezone=
;;   pool_size= reserve_pool= max_db_connections=
;;   pool_mode= connect_query= application_name=
[databases]

;; foodb over Unix socket
;foodb =

orders = host=/var/run/postgresql dbname=orders
reports = host=10.1.2.3 port=5433 dbname=reports_ro pool_size=5 pool_mode=session
forcedb = host=localhost port=5432 user=baz password=foo client_encoding=UNICODE datestyle=ISO connect_query='SELECT 1'

;; fallback connect string
* = host=10.1.2.3 port=5432

;; User-specific configuration
[users]

etl = pool_mode=session max_user_connections=4

;; Configuration section
[pgbouncer]

;;;
;;; Administrative settings
;;;

logfile = /var/log/postgresql/pgbouncer.log
pidfile = /var/run/postgresql/pgbouncer.pid

;;;
;;; Where to wait for clients
;;;

;; IP address or * which means all IPs
listen_addr = *
listen_port = 6432

;; Unix socket is also used for -R.
;; On Debian it should be /var/run/postgresql
unix_socket_dir = /var/run/postgresql
;unix_socket_mode = 0777
;unix_socket_group =

;;;
;;; TLS settings for accepting clients
;;;

;; disable, allow, require, verify-ca, verify-full
client_tls_sslmode = disable

;;;
;;; Authentication settings
;;;

;; any, trust, plain, md5, cert, hba, pam
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
;auth_hba_file =
;auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1

;;;
;;; Users allowed into database 'pgbouncer'
;;;

admin_users = postgres
stats_users = stats, postgres

;;;
;;; Pooler personality questions
;;;

pool_mode = transaction
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits

;;;
;;; Connection limits
;;;

max_client_conn = 1000
default_pool_size = 20
min_pool_size = 0
reserve_pool_size = 5
reserve_pool_timeout = 3

;;;
;;; Logging
;;;

;syslog = 0
log_connections = 0
log_disconnections = 0
stats_period = 60

;;;
;;; Timeouts
;;;

server_lifetime = 3600
server_idle_timeout = 600
server_connect_timeout = 15
server_login_retry = 15
query_wait_timeout = 120
client_login_timeout = 60

;;;
;;; Low-level tuning options
;;;

pkt_buf = 4096
tcp_keepalive = 1
tcp_keepidle = 600
dns_max_ttl = 15
)");
  const Settings& s = config->settings;
  ASSERT_EQ(config->databases.size(), 4u);
  EXPECT_EQ(config->databases[0].host, "/var/run/postgresql");
  EXPECT_EQ(config->findDatabase("reports")->port, 5433);
  EXPECT_EQ(config->findDatabase("reports")->pool_size, 5);
  EXPECT_EQ(config->findDatabase("forcedb")->connect_query, "SELECT 1");
  EXPECT_EQ(config->findDatabase("forcedb")->client_encoding, "UNICODE");
  EXPECT_EQ(config->findDatabase("unlisted")->name, "*");
  EXPECT_EQ(config->findUser("etl")->max_user_connections, 4);
  EXPECT_EQ(s.logfile, "/var/log/postgresql/pgbouncer.log");
  EXPECT_EQ(s.pidfile, "/var/run/postgresql/pgbouncer.pid");
  EXPECT_EQ(s.listen_addr, "*");
  EXPECT_EQ(s.unix_socket_dir, "/var/run/postgresql");
  EXPECT_EQ(s.auth_type, AuthType::kScramSha256);
  EXPECT_EQ(s.auth_file, "/etc/pgbouncer/userlist.txt");
  EXPECT_EQ(s.admin_users, (std::vector<std::string>{"postgres"}));
  EXPECT_EQ(s.stats_users, (std::vector<std::string>{"stats", "postgres"}));
  EXPECT_EQ(s.pool_mode, PoolMode::kTransaction);
  EXPECT_EQ(s.ignore_startup_parameters, (std::vector<std::string>{"extra_float_digits"}));
  EXPECT_EQ(s.max_client_conn, 1000);
  EXPECT_EQ(s.reserve_pool_size, 5);
  EXPECT_EQ(s.reserve_pool_timeout, milliseconds(3000));
  EXPECT_FALSE(s.log_connections);
  EXPECT_FALSE(s.log_disconnections);
  EXPECT_EQ(s.server_connect_timeout, milliseconds(15000));
  EXPECT_EQ(config->warnings, (std::vector<std::string>{notImplemented(116, "tcp_keepalive"),
                                                        notImplemented(117, "tcp_keepidle"),
                                                        notImplemented(118, "dns_max_ttl")}));
}

}  // namespace
}  // namespace sluice::config
