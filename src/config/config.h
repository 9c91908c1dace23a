// Config: an immutable snapshot of a pgbouncer.ini-compatible configuration.
// Built once by loadConfig() on the control thread (start-up, SIGHUP, RELOAD) and then shared
// read-only between worker threads through std::shared_ptr<const Config>; a reload builds a new
// snapshot and swaps the pointer. Nothing in here is mutated after loadConfig() returns.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sluice::config {

using Duration = std::chrono::milliseconds;  // 0 means "disabled" where PgBouncer says so

enum class PoolMode { kSession, kTransaction, kStatement };
enum class AuthType { kTrust, kAny, kPlain, kMd5, kScramSha256, kCert, kHba };
// What transaction and statement pooling do with session state they cannot carry (LISTEN, a
// session advisory lock, a temporary table, ...; protocol/session_state.h): keep the client on
// its server for the rest of its session, or refuse the query.
enum class SessionStatePolicy { kPin, kRefuse };
// What `sluice serve` does when the configured pools can exceed a database's connection slots:
// nothing, log a warning per problem, or refuse to start.
enum class BudgetCheck { kOff, kWarn, kRefuse };
// How many of a pool's servers may be in use at once: pool_size, or a limit between
// min_pool_size and pool_size learned from transaction latency (overload/adaptive_limit.h).
enum class PoolSizeMode { kFixed, kAdaptive };
// libpq's sslmode, for client_tls_sslmode and server_tls_sslmode.
enum class SslMode { kDisable, kAllow, kPrefer, kRequire, kVerifyCa, kVerifyFull };

const char* poolModeName(PoolMode m);
const char* authTypeName(AuthType a);
const char* sessionStatePolicyName(SessionStatePolicy p);
const char* budgetCheckName(BudgetCheck b);
const char* poolSizeModeName(PoolSizeMode m);
const char* sslModeName(SslMode m);

// One line of [databases]. Unset optionals fall back to [pgbouncer] settings.
struct DatabaseEntry {
  std::string name;  // the name clients connect to; "*" is the fallback entry
  std::string host;  // empty: unix socket in /var/run/postgresql; "/dir": unix socket dir
  int port = 5432;
  std::string dbname;       // server-side database name; empty means same as `name`
  std::string user;         // forced server user; empty means the client's user
  std::string password;     // password for `user` (or for the client's user when user is empty)
  std::string auth_user;    // runs auth_query for clients of this database ("" = [pgbouncer]'s)
  std::string auth_dbname;  // the [databases] entry auth_query runs in ("" = this one)
  std::optional<int> pool_size;
  std::optional<int> min_pool_size;
  std::optional<int> reserve_pool_size;
  std::optional<int> max_db_connections;
  std::optional<PoolMode> pool_mode;
  std::string client_encoding;  // startup parameter values sent to the server ("" = not set)
  std::string datestyle;
  std::string timezone;
  std::string application_name;
  std::string connect_query;
  int line = 0;  // where it was defined, for messages
};

// One line of [users].
struct UserEntry {
  std::string name;
  std::optional<PoolMode> pool_mode;
  std::optional<int> max_user_connections;
  std::optional<int> pool_size;
};

// [pgbouncer] (or [sluice]) settings with PgBouncer's meaning and defaults.
struct Settings {
  // listening
  std::string listen_addr;  // "" = no TCP; "*" = all; comma-separated list
  int listen_port = 6432;
  std::string unix_socket_dir = "/tmp";  // "" disables the unix socket
  int unix_socket_mode = 0777;
  bool so_reuseport = false;
  int listen_backlog = 128;
  int workers = 0;  // 0 = number of cores (sluice)
  // auth
  AuthType auth_type = AuthType::kMd5;
  std::string auth_file;
  std::string auth_hba_file;
  std::string auth_user;
  std::string auth_query = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";
  std::string auth_dbname;  // the [databases] entry auth_query runs in ("" = the client's)
  // Clients between accept and the end of authentication, across all workers; beyond it a new
  // connection is refused with 53300 (0 = no cap). Bounds what silent or slow clients can hold.
  int max_pending_logins = 1000;
  std::vector<std::string> admin_users;
  std::vector<std::string> stats_users;
  // pooling
  PoolMode pool_mode = PoolMode::kSession;
  int max_client_conn = 100;
  int default_pool_size = 20;
  int min_pool_size = 0;
  int reserve_pool_size = 0;
  Duration reserve_pool_timeout{5000};
  int max_db_connections = 0;    // 0 = unlimited
  int max_user_connections = 0;  // 0 = unlimited
  int max_prepared_statements = 200;
  bool server_round_robin = false;
  std::vector<std::string> ignore_startup_parameters;  // lower-cased
  std::vector<std::string> track_extra_parameters;
  // server connections
  Duration server_lifetime{3600 * 1000};
  Duration server_idle_timeout{600 * 1000};
  Duration server_connect_timeout{15 * 1000};
  Duration server_login_retry{15 * 1000};
  std::string server_reset_query = "DISCARD ALL";
  bool server_reset_query_always = false;
  std::string server_check_query = "select 1";
  Duration server_check_delay{30 * 1000};
  bool server_fast_close = false;
  // client timeouts
  Duration query_timeout{0};
  Duration query_wait_timeout{120 * 1000};
  Duration cancel_wait_timeout{10 * 1000};
  Duration client_idle_timeout{0};
  Duration client_login_timeout{60 * 1000};
  Duration idle_transaction_timeout{0};
  Duration suspend_timeout{10 * 1000};
  Duration shutdown_timeout{0};  // sluice: 0 = wait for transactions forever
  // limits
  int max_packet_size = 2147483647;
  int pkt_buf = 4096;
  // logging
  std::string logfile;
  std::string pidfile;
  bool log_connections = true;
  bool log_disconnections = true;
  bool log_pooler_errors = true;
  bool log_stats = true;
  Duration stats_period{60 * 1000};
  int verbose = 0;
  bool application_name_add_host = false;
  // sluice extensions (later issues build on these)
  std::string http_listen;  // "addr:port" for /health, /readyz, /metrics
  std::vector<std::string> ops_allow = {"127.0.0.0/8", "::1/128"};
  Duration monitor_interval{30 * 1000};
  int monitor_warn_utilization = 80;  // percent
  Duration hold_warn_threshold{0};
  int max_waiting_clients = 0;  // per pool; 0 = unlimited (bounded by max_client_conn)
  // Per pool, in transaction and statement mode: clients pinned by session state may hold at
  // most this many servers; beyond it such a query is refused (53300). -1 = half of pool_size.
  int max_pinned_servers = -1;
  int server_connect_parallelism = 4;  // server logins in flight per database
  // CoDel on each pool's wait queue (overload/codel.h): a queue in which every client served for
  // codel_interval waited longer than codel_target is standing; then the newest are served
  // first and waiters older than codel_deadline fail with 53300. codel_target 0 = off.
  Duration codel_target{0};
  Duration codel_interval{1000};
  Duration codel_deadline{1000};
  // At start, compare the pools' worst case with each database's max_connections (less the
  // reserved slots) and role/database connection limits, as `sluice check` does.
  BudgetCheck budget_check = BudgetCheck::kWarn;
  PoolSizeMode pool_size_mode = PoolSizeMode::kFixed;
  SessionStatePolicy session_state = SessionStatePolicy::kPin;
  // TLS (PgBouncer's settings and defaults). Client side: sluice accepts TLS when the mode is
  // not disable, requires it from require on, and requires a client certificate signed by
  // client_tls_ca_file from verify-ca on. Server side: sluice asks PostgreSQL for TLS from
  // prefer on (allow behaves as prefer), refuses plain text from require on, and checks the
  // server's certificate (verify-ca) and its name (verify-full).
  SslMode client_tls_sslmode = SslMode::kDisable;
  std::string client_tls_key_file;
  std::string client_tls_cert_file;
  std::string client_tls_ca_file;
  std::string client_tls_protocols = "secure";
  std::string client_tls_ciphers = "default";
  std::string client_tls13_ciphers;
  std::string client_tls_dheparams = "auto";
  std::string client_tls_ecdhcurve = "auto";
  SslMode server_tls_sslmode = SslMode::kPrefer;
  std::string server_tls_key_file;
  std::string server_tls_cert_file;
  std::string server_tls_ca_file;
  std::string server_tls_protocols = "secure";
  std::string server_tls_ciphers = "default";
  std::string server_tls13_ciphers;
};

struct Config {
  std::string path;  // the main file, absolute
  Settings settings;
  std::vector<DatabaseEntry> databases;  // in file order; at most one "*"
  std::vector<UserEntry> users;
  // Keys that loaded but do nothing, in file order, e.g.
  // "/etc/pgbouncer/pgbouncer.ini:12: 'tcp_keepalive' is not implemented by sluice yet; ignored"
  // or "/etc/pgbouncer/pgbouncer.ini:13: unknown key 'foo' in [pgbouncer]; ignored".
  std::vector<std::string> warnings;

  const DatabaseEntry* findDatabase(const std::string& name) const;  // exact, then "*"
  const UserEntry* findUser(const std::string& name) const;
};

// Thrown only by loadConfig/parseConfig (control plane). what() names file, line, key and what
// is allowed, e.g. "/etc/sluice.ini:7: pool_mode = 'sesion': expected session, transaction or
// statement".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads `path` (following %include), validates every value, and returns the snapshot.
std::shared_ptr<const Config> loadConfig(const std::string& path);
// Same, from text already in memory; `path` is used in messages and to resolve %include.
std::shared_ptr<const Config> parseConfig(const std::string& text, const std::string& path);

// A copy of `base` with one [pgbouncer] key set as the admin console's SET does; the value is
// checked as the loader checks it. Throws ConfigError naming the key and what is allowed.
std::shared_ptr<const Config> withSetting(const Config& base, const std::string& key,
                                          const std::string& value);

// PgBouncer's auth_file (userlist.txt): `"user" "secret"` per line, where secret is a plain
// password, "md5<32 hex>" or "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
struct UserList {
  std::map<std::string, std::string> secrets;
  int scram_secrets = 0;  // how many secrets are SCRAM verifiers, how many md5 hashes
  int md5_secrets = 0;
  const std::string* find(const std::string& user) const;
};
UserList loadUserList(const std::string& path);  // throws ConfigError
UserList parseUserList(const std::string& text, const std::string& path);

}  // namespace sluice::config
