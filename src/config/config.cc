// The pgbouncer.ini loader: lines, sections and %include, then one function per section.
#include "config/config.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <utility>
#include <variant>

#include "config/text_util.h"

namespace sluice::config {
namespace {

constexpr int kIntMax = INT_MAX;
constexpr size_t kMaxIncludeDepth = 10;  // as PgBouncer
constexpr double kMaxDurationMs = 1e15;  // ~31,000 years; keeps the conversion in range

constexpr std::pair<std::string_view, PoolMode> kPoolModes[] = {
    {"session", PoolMode::kSession},
    {"transaction", PoolMode::kTransaction},
    {"statement", PoolMode::kStatement},
};
constexpr std::pair<std::string_view, AuthType> kAuthTypes[] = {
    {"trust", AuthType::kTrust},
    {"any", AuthType::kAny},
    {"plain", AuthType::kPlain},
    {"md5", AuthType::kMd5},
    {"scram-sha-256", AuthType::kScramSha256},
    {"cert", AuthType::kCert},
    {"hba", AuthType::kHba},
};
constexpr std::pair<std::string_view, SessionStatePolicy> kSessionStatePolicies[] = {
    {"pin", SessionStatePolicy::kPin},
    {"refuse", SessionStatePolicy::kRefuse},
};
constexpr std::pair<std::string_view, BudgetCheck> kBudgetChecks[] = {
    {"off", BudgetCheck::kOff},
    {"warn", BudgetCheck::kWarn},
    {"refuse", BudgetCheck::kRefuse},
};
constexpr std::pair<std::string_view, PoolSizeMode> kPoolSizeModes[] = {
    {"fixed", PoolSizeMode::kFixed},
    {"adaptive", PoolSizeMode::kAdaptive},
};
constexpr std::pair<std::string_view, double> kDurationUnitsMs[] = {
    {"", 1000}, {"s", 1000}, {"ms", 1}, {"us", 0.001}, {"min", 60e3}, {"h", 3600e3}, {"d", 86400e3},
};
constexpr std::pair<std::string_view, SslMode> kSslModes[] = {
    {"disable", SslMode::kDisable},    {"allow", SslMode::kAllow},
    {"prefer", SslMode::kPrefer},      {"require", SslMode::kRequire},
    {"verify-ca", SslMode::kVerifyCa}, {"verify-full", SslMode::kVerifyFull},
};

constexpr char kExpectPoolMode[] = "expected session, transaction or statement";
constexpr char kExpectAuthType[] = "expected trust, any, plain, md5, scram-sha-256, cert or hba";
constexpr char kExpectSessionState[] = "expected pin or refuse";
constexpr char kExpectBool[] = "expected 1, 0, yes, no, on, off, true or false";
constexpr char kExpectDuration[] = "expected a duration in seconds such as 30, 0.5 or 250ms";
constexpr char kExpectSslMode[] =
    "expected disable, allow, prefer, require, verify-ca or verify-full";

// [pgbouncer] keys of PgBouncer (up to 1.24) that sluice accepts but does not act on yet.
// clang-format off
constexpr std::string_view kUnimplementedSettings[] = {
    "auth_ident_file", "auth_ldap_options", "scram_iterations",
    "autodb_idle_timeout", "max_db_client_connections", "max_user_client_connections",
    "query_wait_notify", "transaction_timeout", "disable_pqexec", "sbuf_loopcnt",
    "dns_max_ttl", "dns_nxdomain_ttl", "dns_zone_check_period", "resolv_conf",
    "tcp_defer_accept", "tcp_keepalive", "tcp_keepcnt", "tcp_keepidle", "tcp_keepintvl",
    "tcp_socket_buffer", "tcp_user_timeout",
    "syslog", "syslog_facility", "syslog_ident",
    "user", "unix_socket_group", "peer_id", "job_name", "service_name", "conffile",
};
// clang-format on

// Connection-string keys newer PgBouncers accept in [databases] / [users] that sluice ignores.
constexpr std::string_view kUnimplementedDatabaseKeys[] = {"auth_query", "load_balance_hosts",
                                                           "max_db_client_connections"};
constexpr std::string_view kUnimplementedUserKeys[] = {"max_user_client_connections"};

template <typename T, size_t N>
std::optional<T> lookup(const std::pair<std::string_view, T> (&table)[N], std::string_view name) {
  std::string lower = toLower(name);
  for (const auto& [n, value] : table) {
    if (n == lower) {
      return value;
    }
  }
  return std::nullopt;
}

template <typename T, size_t N>
const char* nameOf(const std::pair<std::string_view, T> (&table)[N], T value) {
  for (const auto& [name, v] : table) {
    if (v == value) {
      return name.data();  // the views point at string literals
    }
  }
  std::abort();  // an enumerator without a spelling is a programming error
}

template <size_t N>
bool contains(const std::string_view (&list)[N], std::string_view s) {
  return std::find(std::begin(list), std::end(list), s) != std::end(list);
}

// ---- values --------------------------------------------------------------------------------

// Throws ConfigError("<where>: <parts...>"). `where` is "FILE:LINE" or "FILE:LINE: database 'x'".
template <typename... Parts>
[[noreturn]] void fail(const std::string& where, const Parts&... parts) {
  std::string message = where + ": ";
  (message.append(parts), ...);
  throw ConfigError(message);
}

[[noreturn]] void throwBadValue(const std::string& where, std::string_view key,
                                std::string_view value, std::string_view expected) {
  fail(where, key, " = '", value, "': ", expected);
}

int intValue(const std::string& where, std::string_view key, std::string_view value, int min,
             int max, int base = 10) {
  long long v = 0;
  const char* end = value.data() + value.size();
  auto [p, ec] = std::from_chars(value.data(), end, v, base);
  if (ec != std::errc() || p != end || v < min || v > max) {
    throwBadValue(where, key, value,
                  base == 8 ? "expected an octal file mode between 0 and 0777"
                            : "expected an integer between " + std::to_string(min) + " and " +
                                  std::to_string(max));
  }
  return static_cast<int>(v);
}

bool boolValue(const std::string& where, std::string_view key, std::string_view value) {
  std::string v = toLower(value);
  if (v == "1" || v == "yes" || v == "on" || v == "true") {
    return true;
  }
  if (v == "0" || v == "no" || v == "off" || v == "false") {
    return false;
  }
  throwBadValue(where, key, value, kExpectBool);
}

// PgBouncer reads seconds with strtod ("5", "0.5"); sluice also takes a unit suffix.
Duration durationValue(const std::string& where, std::string_view key, std::string_view value) {
  size_t n = 0, digits = 0, dots = 0;
  for (; n < value.size() && ((value[n] >= '0' && value[n] <= '9') || value[n] == '.'); ++n) {
    ++(value[n] == '.' ? dots : digits);
  }
  double number = 0;
  auto [p, ec] = std::from_chars(value.data(), value.data() + n, number, std::chars_format::fixed);
  if (digits > 0 && dots <= 1 && ec == std::errc() && p == value.data() + n) {
    std::string unit = toLower(trim(value.substr(n)));
    for (const auto& [name, ms_per_unit] : kDurationUnitsMs) {
      double ms = number * ms_per_unit;
      if (name != unit || ms > kMaxDurationMs) {
        continue;
      }
      // A tiny non-zero value must not turn into 0, which means "disabled".
      return Duration(std::max<long long>(std::llround(ms), number > 0 ? 1 : 0));
    }
  }
  throwBadValue(where, key, value, kExpectDuration);
}

PoolMode poolModeValue(const std::string& where, std::string_view key, std::string_view value) {
  if (auto mode = lookup(kPoolModes, value)) {
    return *mode;
  }
  throwBadValue(where, key, value, kExpectPoolMode);
}

std::vector<std::string> listValue(std::string_view value, bool lower_case) {
  std::vector<std::string> items;
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = trim(value.substr(0, comma));
    if (!item.empty()) {
      items.push_back(lower_case ? toLower(item) : std::string(item));
    }
    value.remove_prefix(comma == std::string_view::npos ? value.size() : comma + 1);
  }
  return items;
}

// libpq-style `key=value key2='quoted value'`. Inside quotes \' and \\ are escapes (libpq) and ''
// is a quote (PgBouncer); any other backslash is kept. `what` prefixes messages.
std::vector<std::pair<std::string, std::string>> splitConnString(std::string_view s,
                                                                 const std::string& what) {
  std::vector<std::pair<std::string, std::string>> pairs;
  size_t i = 0;
  auto skipSpace = [&] {
    while (i < s.size() && isSpace(s[i])) {
      ++i;
    }
  };
  for (skipSpace(); i < s.size(); skipSpace()) {
    size_t start = i;
    while (i < s.size() && s[i] != '=' && !isSpace(s[i])) {
      ++i;
    }
    std::string key(s.substr(start, i - start));
    skipSpace();
    if (key.empty() || i == s.size() || s[i] != '=') {
      fail(what, "expected key=value at '", s.substr(start), "'");
    }
    ++i;
    skipSpace();
    std::string value;
    if (i < s.size() && s[i] == '\'') {
      for (++i;; ++i) {
        if (i == s.size()) {
          fail(what, "unterminated quoted value for ", key);
        }
        char next = i + 1 < s.size() ? s[i + 1] : '\0';
        if ((s[i] == '\\' && (next == '\'' || next == '\\')) || (s[i] == '\'' && next == '\'')) {
          value += s[++i];
        } else if (s[i] == '\'') {
          break;
        } else {
          value += s[i];
        }
      }
      if (++i < s.size() && !isSpace(s[i])) {
        fail(what, "expected a space after the quoted value of ", key);
      }
    } else {
      while (i < s.size() && !isSpace(s[i])) {
        value += s[i++];
      }
    }
    pairs.emplace_back(std::move(key), std::move(value));
  }
  return pairs;
}

// ---- [pgbouncer] ---------------------------------------------------------------------------

struct IntSetting {
  int Settings::*field;
  int min;
  int max;
  int base = 10;
};
struct ListSetting {
  std::vector<std::string> Settings::*field;
  bool lower_case = false;
};
using SettingField =
    std::variant<IntSetting, ListSetting, bool Settings::*, Duration Settings::*,
                 std::string Settings::*, PoolMode Settings::*, AuthType Settings::*,
                 SessionStatePolicy Settings::*, BudgetCheck Settings::*, PoolSizeMode Settings::*,
                 SslMode Settings::*>;
struct SettingSpec {
  std::string_view name;
  SettingField field;
};

const SettingSpec kSettingSpecs[] = {
    // listening
    {"listen_addr", &Settings::listen_addr},
    {"listen_port", IntSetting{&Settings::listen_port, 1, 65535}},
    {"unix_socket_dir", &Settings::unix_socket_dir},
    {"unix_socket_mode", IntSetting{&Settings::unix_socket_mode, 0, 0777, 8}},
    {"so_reuseport", &Settings::so_reuseport},
    {"listen_backlog", IntSetting{&Settings::listen_backlog, 0, kIntMax}},
    {"workers", IntSetting{&Settings::workers, 0, kIntMax}},
    // auth
    {"auth_type", &Settings::auth_type},
    {"auth_file", &Settings::auth_file},
    {"auth_hba_file", &Settings::auth_hba_file},
    {"auth_user", &Settings::auth_user},
    {"auth_query", &Settings::auth_query},
    {"auth_dbname", &Settings::auth_dbname},
    {"max_pending_logins", IntSetting{&Settings::max_pending_logins, 0, kIntMax}},
    {"admin_users", ListSetting{&Settings::admin_users}},
    {"stats_users", ListSetting{&Settings::stats_users}},
    // pooling
    {"pool_mode", &Settings::pool_mode},
    {"max_client_conn", IntSetting{&Settings::max_client_conn, 0, kIntMax}},
    {"default_pool_size", IntSetting{&Settings::default_pool_size, 0, kIntMax}},
    {"min_pool_size", IntSetting{&Settings::min_pool_size, 0, kIntMax}},
    {"reserve_pool_size", IntSetting{&Settings::reserve_pool_size, 0, kIntMax}},
    {"reserve_pool_timeout", &Settings::reserve_pool_timeout},
    {"max_db_connections", IntSetting{&Settings::max_db_connections, 0, kIntMax}},
    {"max_user_connections", IntSetting{&Settings::max_user_connections, 0, kIntMax}},
    {"max_prepared_statements", IntSetting{&Settings::max_prepared_statements, 0, kIntMax}},
    {"server_round_robin", &Settings::server_round_robin},
    {"ignore_startup_parameters", ListSetting{&Settings::ignore_startup_parameters, true}},
    {"track_extra_parameters", ListSetting{&Settings::track_extra_parameters}},
    // server connections
    {"server_lifetime", &Settings::server_lifetime},
    {"server_idle_timeout", &Settings::server_idle_timeout},
    {"server_connect_timeout", &Settings::server_connect_timeout},
    {"server_login_retry", &Settings::server_login_retry},
    {"server_reset_query", &Settings::server_reset_query},
    {"server_reset_query_always", &Settings::server_reset_query_always},
    {"server_check_query", &Settings::server_check_query},
    {"server_check_delay", &Settings::server_check_delay},
    {"server_fast_close", &Settings::server_fast_close},
    // client timeouts
    {"query_timeout", &Settings::query_timeout},
    {"query_wait_timeout", &Settings::query_wait_timeout},
    {"cancel_wait_timeout", &Settings::cancel_wait_timeout},
    {"client_idle_timeout", &Settings::client_idle_timeout},
    {"client_login_timeout", &Settings::client_login_timeout},
    {"idle_transaction_timeout", &Settings::idle_transaction_timeout},
    {"suspend_timeout", &Settings::suspend_timeout},
    {"shutdown_timeout", &Settings::shutdown_timeout},
    // limits
    {"max_packet_size", IntSetting{&Settings::max_packet_size, 1, kIntMax}},
    {"pkt_buf", IntSetting{&Settings::pkt_buf, 512, kIntMax}},
    // logging
    {"logfile", &Settings::logfile},
    {"pidfile", &Settings::pidfile},
    {"log_connections", &Settings::log_connections},
    {"log_disconnections", &Settings::log_disconnections},
    {"log_pooler_errors", &Settings::log_pooler_errors},
    {"log_stats", &Settings::log_stats},
    {"stats_period", &Settings::stats_period},
    {"verbose", IntSetting{&Settings::verbose, 0, kIntMax}},
    {"application_name_add_host", &Settings::application_name_add_host},
    // sluice extensions
    {"http_listen", &Settings::http_listen},
    {"ops_allow", ListSetting{&Settings::ops_allow}},
    {"monitor_interval", &Settings::monitor_interval},
    {"monitor_warn_utilization", IntSetting{&Settings::monitor_warn_utilization, 0, 100}},
    {"hold_warn_threshold", &Settings::hold_warn_threshold},
    {"max_waiting_clients", IntSetting{&Settings::max_waiting_clients, 0, kIntMax}},
    {"max_pinned_servers", IntSetting{&Settings::max_pinned_servers, -1, kIntMax}},
    {"server_connect_parallelism", IntSetting{&Settings::server_connect_parallelism, 1, kIntMax}},
    {"session_state", &Settings::session_state},
    {"codel_target", &Settings::codel_target},
    {"codel_interval", &Settings::codel_interval},
    {"codel_deadline", &Settings::codel_deadline},
    {"budget_check", &Settings::budget_check},
    {"pool_size_mode", &Settings::pool_size_mode},
    // TLS
    {"client_tls_sslmode", &Settings::client_tls_sslmode},
    {"client_tls_key_file", &Settings::client_tls_key_file},
    {"client_tls_cert_file", &Settings::client_tls_cert_file},
    {"client_tls_ca_file", &Settings::client_tls_ca_file},
    {"client_tls_protocols", &Settings::client_tls_protocols},
    {"client_tls_ciphers", &Settings::client_tls_ciphers},
    {"client_tls13_ciphers", &Settings::client_tls13_ciphers},
    {"client_tls_dheparams", &Settings::client_tls_dheparams},
    {"client_tls_ecdhcurve", &Settings::client_tls_ecdhcurve},
    {"server_tls_sslmode", &Settings::server_tls_sslmode},
    {"server_tls_key_file", &Settings::server_tls_key_file},
    {"server_tls_cert_file", &Settings::server_tls_cert_file},
    {"server_tls_ca_file", &Settings::server_tls_ca_file},
    {"server_tls_protocols", &Settings::server_tls_protocols},
    {"server_tls_ciphers", &Settings::server_tls_ciphers},
    {"server_tls13_ciphers", &Settings::server_tls13_ciphers},
};

template <typename... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <typename... F>
Overloaded(F...) -> Overloaded<F...>;

void applySetting(Settings& s, const SettingField& field, std::string_view key,
                  std::string_view value, const std::string& where) {
  std::visit(Overloaded{
                 [&](const IntSetting& f) {
                   s.*(f.field) = intValue(where, key, value, f.min, f.max, f.base);
                 },
                 [&](const ListSetting& f) { s.*(f.field) = listValue(value, f.lower_case); },
                 [&](bool Settings::*f) { s.*f = boolValue(where, key, value); },
                 [&](Duration Settings::*f) { s.*f = durationValue(where, key, value); },
                 [&](std::string Settings::*f) { s.*f = std::string(value); },
                 [&](PoolMode Settings::*f) { s.*f = poolModeValue(where, key, value); },
                 [&](AuthType Settings::*f) {
                   std::optional<AuthType> type = lookup(kAuthTypes, value);
                   if (!type) {
                     throwBadValue(where, key, value, kExpectAuthType);
                   }
                   s.*f = *type;
                 },
                 [&](SessionStatePolicy Settings::*f) {
                   std::optional<SessionStatePolicy> policy = lookup(kSessionStatePolicies, value);
                   if (!policy) {
                     throwBadValue(where, key, value, kExpectSessionState);
                   }
                   s.*f = *policy;
                 },
                 [&](BudgetCheck Settings::*f) {
                   std::optional<BudgetCheck> check = lookup(kBudgetChecks, value);
                   if (!check) {
                     throwBadValue(where, key, value, "expected off, warn or refuse");
                   }
                   s.*f = *check;
                 },
                 [&](PoolSizeMode Settings::*f) {
                   std::optional<PoolSizeMode> mode = lookup(kPoolSizeModes, value);
                   if (!mode) {
                     throwBadValue(where, key, value, "expected fixed or adaptive");
                   }
                   s.*f = *mode;
                 },
                 [&](SslMode Settings::*f) {
                   std::optional<SslMode> mode = lookup(kSslModes, value);
                   if (!mode) throwBadValue(where, key, value, kExpectSslMode);
                   s.*f = *mode;
                 },
             },
             field);
}

// ---- the loader ----------------------------------------------------------------------------

enum class Section { kNone, kDatabases, kUsers, kSettings, kPeers };

// Fills one Config from the main file and its includes; lives for one parseConfig() call.
class Loader {
 public:
  explicit Loader(Config& config) : config_(config) {}

  void parseFile(std::string_view text, const std::string& path) {
    include_stack_.push_back(path);
    int line_no = 0;
    for (std::string_view line : splitLines(text)) {
      onLine(trim(line), path, ++line_no);
    }
    include_stack_.pop_back();
  }

 private:
  void onLine(std::string_view line, const std::string& path, int line_no) {
    std::string where = path + ":" + std::to_string(line_no);
    if (line.empty() || line[0] == ';' || line[0] == '#') {
      return;
    }
    if (line.starts_with("%include") && (line.size() == 8 || isSpace(line[8]))) {
      return include(trim(line.substr(8)), path, where);
    }
    if (line[0] == '[') {
      size_t close = line.find(']');
      if (close == std::string_view::npos || close + 1 != line.size()) {
        fail(where, "syntax error: expected '[section]'");
      }
      return setSection(trim(line.substr(1, close - 1)), where);
    }
    // key = value; [databases] and [users] names may be "quoted" like SQL identifiers.
    constexpr char kSyntaxError[] =
        "syntax error: expected 'key = value', '[section]' or '%include file'";
    std::string key;
    size_t i = 0;
    if (line[0] == '"') {
      std::optional<std::string> quoted = readDoubleQuoted(line, i);
      if (!quoted) {
        fail(where, "syntax error: unterminated quoted name");
      }
      key = std::move(*quoted);
    } else {
      while (i < line.size() && line[i] != '=' && !isSpace(line[i])) {
        ++i;
      }
      key = line.substr(0, i);
    }
    std::string_view rest = trim(line.substr(i));
    if ((key.empty() && line[0] != '"') || rest.empty() || rest[0] != '=') {
      fail(where, kSyntaxError);
    }
    std::string_view value = trim(rest.substr(1));
    switch (section_) {
      case Section::kNone:
        fail(where, "'", key, "' is outside of any section");
      case Section::kSettings:
        return setSetting(key, value, where);
      case Section::kDatabases:
        return addDatabase(key, value, where, line_no);
      case Section::kUsers:
        return addUser(key, value, where);
      case Section::kPeers:
        return;  // warned about once at the section header
      default:
        std::abort();
    }
  }

  void include(std::string_view file, const std::string& from, const std::string& where) {
    std::string prefix = where + ": %include '" + std::string(file) + "'";
    if (file.empty()) {
      fail(where, "%include needs a file name");
    }
    std::string target =
        absolutePath(std::string(file), std::filesystem::path(from).parent_path().string());
    if (std::find(include_stack_.begin(), include_stack_.end(), target) != include_stack_.end()) {
      std::string chain;
      for (const std::string& f : include_stack_) {
        chain += f + " -> ";
      }
      fail(prefix, "include loop (", chain, target, ")");
    }
    if (include_stack_.size() > kMaxIncludeDepth) {
      fail(prefix, "includes nested more than ", std::to_string(kMaxIncludeDepth), " deep");
    }
    parseFile(readTextFile(target, prefix + ": "), target);
  }

  void setSection(std::string_view name, const std::string& where) {
    std::string lower = toLower(name);
    if (lower == "databases") {
      section_ = Section::kDatabases;
    } else if (lower == "users") {
      section_ = Section::kUsers;
    } else if (lower == "pgbouncer" || lower == "sluice") {
      section_ = Section::kSettings;
      section_name_ = name;
    } else if (lower == "peers") {
      section_ = Section::kPeers;
      notImplemented(where, "[peers]");
    } else {
      fail(where, "unknown section [", name,
           "]; expected [databases], [users], [pgbouncer] or [sluice]");
    }
  }

  void setSetting(const std::string& key, std::string_view value, const std::string& where) {
    std::string name = toLower(key);
    for (const SettingSpec& spec : kSettingSpecs) {
      if (spec.name == name) {
        return applySetting(config_.settings, spec.field, key, value, where);
      }
    }
    if (contains(kUnimplementedSettings, name)) {
      notImplemented(where, key);
    } else {
      config_.warnings.push_back(where + ": unknown key '" + key + "' in [" + section_name_ +
                                 "]; ignored");
    }
  }

  void addDatabase(const std::string& name, std::string_view connstr, const std::string& where,
                   int line) {
    std::string what = where + ": database '" + name + "'";
    if (name.empty()) {
      fail(where, "empty database name");
    }
    if (auto [it, added] = database_at_.emplace(name, where); !added) {
      throw ConfigError(what + " is already defined at " + it->second);
    }
    static constexpr std::pair<std::string_view, std::string DatabaseEntry::*> kStrings[] = {
        {"host", &DatabaseEntry::host},
        {"dbname", &DatabaseEntry::dbname},
        {"user", &DatabaseEntry::user},
        {"password", &DatabaseEntry::password},
        {"auth_user", &DatabaseEntry::auth_user},
        {"auth_dbname", &DatabaseEntry::auth_dbname},
        {"client_encoding", &DatabaseEntry::client_encoding},
        {"datestyle", &DatabaseEntry::datestyle},
        {"timezone", &DatabaseEntry::timezone},
        {"application_name", &DatabaseEntry::application_name},
        {"connect_query", &DatabaseEntry::connect_query},
    };
    static constexpr std::pair<std::string_view, std::optional<int> DatabaseEntry::*> kSizes[] = {
        {"pool_size", &DatabaseEntry::pool_size},
        {"min_pool_size", &DatabaseEntry::min_pool_size},
        {"reserve_pool", &DatabaseEntry::reserve_pool_size},  // PgBouncer's spelling
        {"reserve_pool_size", &DatabaseEntry::reserve_pool_size},
        {"max_db_connections", &DatabaseEntry::max_db_connections},
    };
    DatabaseEntry db;
    db.name = name;
    db.line = line;
    for (const auto& [key, value] : splitConnString(connstr, what)) {
      std::string lower = toLower(key);
      if (auto field = lookup(kStrings, lower)) {
        db.*(*field) = value;
      } else if (auto size = lookup(kSizes, lower)) {
        db.*(*size) = intValue(what, key, value, 0, kIntMax);
      } else if (lower == "port") {
        db.port = intValue(what, key, value, 1, 65535);
      } else if (lower == "pool_mode") {
        db.pool_mode = poolModeValue(what, key, value);
      } else if (contains(kUnimplementedDatabaseKeys, lower)) {
        notImplemented(where, key);
      } else {
        fail(what, "unknown parameter '", key,
             "'; expected host, port, dbname, user, password, auth_user, auth_dbname, "
             "pool_size, min_pool_size, reserve_pool, max_db_connections, pool_mode, "
             "client_encoding, datestyle, timezone, application_name or "
             "connect_query");
      }
    }
    config_.databases.push_back(std::move(db));
  }

  void addUser(const std::string& name, std::string_view params, const std::string& where) {
    std::string what = where + ": user '" + name + "'";
    if (name.empty()) {
      fail(where, "empty user name");
    }
    if (auto [it, added] = user_at_.emplace(name, where); !added) {
      throw ConfigError(what + " is already defined at " + it->second);
    }
    UserEntry user;
    user.name = name;
    for (const auto& [key, value] : splitConnString(params, what)) {
      std::string lower = toLower(key);
      if (lower == "pool_mode") {
        user.pool_mode = poolModeValue(what, key, value);
      } else if (lower == "max_user_connections") {
        user.max_user_connections = intValue(what, key, value, 0, kIntMax);
      } else if (lower == "pool_size") {
        user.pool_size = intValue(what, key, value, 0, kIntMax);
      } else if (contains(kUnimplementedUserKeys, lower)) {
        notImplemented(where, key);
      } else {
        fail(what, "unknown parameter '", key,
             "'; expected pool_mode, max_user_connections or pool_size");
      }
    }
    config_.users.push_back(std::move(user));
  }

  void notImplemented(const std::string& where, std::string_view key) {
    config_.warnings.push_back(where + ": '" + std::string(key) +
                               "' is not implemented by sluice yet; ignored");
  }

  Config& config_;
  // Shared across %include, as in PgBouncer: an included file continues the current section and
  // a section it opens stays open after it.
  Section section_ = Section::kNone;
  std::string section_name_;                        // as spelled: "pgbouncer" or "sluice"
  std::vector<std::string> include_stack_;          // absolute paths, main file first
  std::map<std::string, std::string> database_at_;  // name -> "FILE:LINE" of its definition
  std::map<std::string, std::string> user_at_;
};

}  // namespace

const char* poolModeName(PoolMode m) { return nameOf(kPoolModes, m); }
const char* authTypeName(AuthType a) { return nameOf(kAuthTypes, a); }
const char* sessionStatePolicyName(SessionStatePolicy p) {
  return nameOf(kSessionStatePolicies, p);
}
const char* budgetCheckName(BudgetCheck b) { return nameOf(kBudgetChecks, b); }
const char* poolSizeModeName(PoolSizeMode m) { return nameOf(kPoolSizeModes, m); }
const char* sslModeName(SslMode m) { return nameOf(kSslModes, m); }

const DatabaseEntry* Config::findDatabase(const std::string& name) const {
  const DatabaseEntry* fallback = nullptr;
  for (const DatabaseEntry& db : databases) {
    if (db.name == name) {
      return &db;
    }
    if (db.name == "*") {
      fallback = &db;
    }
  }
  return fallback;
}

const UserEntry* Config::findUser(const std::string& name) const {
  for (const UserEntry& user : users) {
    if (user.name == name) {
      return &user;
    }
  }
  return nullptr;
}

std::shared_ptr<const Config> parseConfig(const std::string& text, const std::string& path) {
  auto config = std::make_shared<Config>();
  config->path = absolutePath(path);
  Loader(*config).parseFile(text, config->path);
  return config;
}

std::shared_ptr<const Config> withSetting(const Config& base, const std::string& key,
                                          const std::string& value) {
  auto config = std::make_shared<Config>(base);
  config->warnings.clear();
  std::string name = toLower(key);
  for (const SettingSpec& spec : kSettingSpecs) {
    if (spec.name == name) {
      applySetting(config->settings, spec.field, key, value, "SET");
      return config;
    }
  }
  throw ConfigError("SET: unknown or unsupported key '" + key + "'");
}

std::shared_ptr<const Config> loadConfig(const std::string& path) {
  std::string absolute = absolutePath(path);
  return parseConfig(readTextFile(absolute, "config file: "), absolute);
}

}  // namespace sluice::config
