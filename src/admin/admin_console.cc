#include "admin/admin_console.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <iterator>
#include <optional>
#include <set>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "admin/loop_gather.h"
#include "admin/pool_views.h"
#include "common/log.h"
#include "protocol/sqlstate.h"
#include "protocol/wire.h"
#include "session/client_session.h"

namespace sluice::admin {

namespace {

using Value = std::optional<std::string>;
using Row = std::vector<Value>;
using session::ClientSession;

// Type oids in RowDescription, as PgBouncer sends them (its "i" is int4, "q" int8).
constexpr uint32_t kText = 25;
constexpr uint32_t kInt4 = 23;
constexpr uint32_t kInt8 = 20;
constexpr uint32_t kNumeric = 1700;
struct Column {
  const char* name;
  uint32_t oid;
};

constexpr const char* kInsufficientPrivilege = "42501";

// A command refused or failed: becomes the ErrorResponse the admin client receives.
// (Exceptions are fine here: the console is the control-plane edge.)
class AdminError : public std::runtime_error {
 public:
  AdminError(const char* sqlstate, const std::string& message)
      : std::runtime_error(message), sqlstate_(sqlstate) {}
  const char* sqlstate() const { return sqlstate_; }

 private:
  const char* sqlstate_;
};

std::string errorReply(const char* sqlstate, const std::string& msg) {
  std::string out;
  protocol::ErrorInfo e;
  e.sqlstate = sqlstate;
  e.message = msg;
  protocol::appendError(out, e);
  return out;
}

std::string complete(std::string_view tag) {
  std::string out;
  protocol::appendCommandComplete(out, tag);
  return out;
}

std::string table(const std::vector<Column>& cols, const std::vector<Row>& rows) {
  std::vector<std::string> names;
  std::vector<uint32_t> oids;
  for (const auto& c : cols) {
    names.emplace_back(c.name);
    oids.push_back(c.oid);
  }
  std::string out;
  protocol::appendRowDescription(out, names, oids);
  for (const auto& r : rows) protocol::appendDataRow(out, r);
  protocol::appendCommandComplete(out, "SHOW");
  return out;
}

Value num(long long v) { return std::to_string(v); }

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

bool isSpace(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

std::string trim(std::string s) {
  while (!s.empty() && isSpace(s.back())) s.pop_back();
  size_t start = 0;
  while (start < s.size() && isSpace(s[start])) ++start;
  return s.substr(start);
}

// Splits off the first whitespace-separated word of `s`; `s` keeps the rest.
std::string takeWord(std::string& s) {
  s = trim(s);
  size_t end = 0;
  while (end < s.size() && !isSpace(s[end])) ++end;
  std::string word = s.substr(0, end);
  s = trim(s.substr(end));
  return word;
}

// A PgBouncer console argument may be a "quoted identifier" ("" is a quote inside).
std::string unquote(const std::string& s) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return s;
  std::string out;
  for (size_t i = 1; i + 1 < s.size(); ++i) {
    out += s[i];
    if (s[i] == '"' && s[i + 1] == '"') ++i;
  }
  return out;
}

std::string hexPtr(uintptr_t p) { return p ? fmt::format("{:#x}", p) : std::string(); }

// Text for a steady-clock instant on the wall clock, as PgBouncer prints it:
// "2026-11-23 17:08:02 UTC" (local time zone).
class WallClock {
 public:
  WallClock() : steady_(now()), wall_(std::chrono::system_clock::now()) {}
  std::string format(TimePoint t) const {
    auto wall =
        wall_ - std::chrono::duration_cast<std::chrono::system_clock::duration>(steady_ - t);
    std::time_t tt = std::chrono::system_clock::to_time_t(wall);
    std::tm tm{};
    localtime_r(&tt, &tm);
    char buf[64];
    size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &tm);
    return std::string(buf, n);
  }
  TimePoint steady() const { return steady_; }

 private:
  TimePoint steady_;
  std::chrono::system_clock::time_point wall_;
};

struct Address {
  std::string addr;
  int port = 0;
};

// ClientSession::peer() is "10.0.0.5:51234", "::1:51234" or "unix".
Address splitPeer(const std::string& peer, int listen_port) {
  if (peer == "unix") return {"unix", listen_port};
  size_t colon = peer.rfind(':');
  if (colon == std::string::npos) return {peer, 0};
  return {peer.substr(0, colon), std::atoi(peer.c_str() + colon + 1)};
}

// ---- what each loop reports -------------------------------------------------------------------

// One client, copied out on its own loop.
struct ClientInfo {
  uint64_t id = 0;
  uintptr_t ptr = 0;
  uintptr_t link = 0;  // the server it holds
  bool admin = false;
  const char* state = "";  // PgBouncer's words: "active", "waiting"; "login" before that
  std::string user, database, peer, application_name;
  TimePoint connected, request, waiting_since;
  // The server it holds, for SHOW HOLDERS.
  TimePoint held_since;
  const char* tx_state = "";
  uint32_t backend_pid = 0;
  TimePoint last_activity;     // the client's last bytes: how long it has sent nothing
  std::string last_statement;  // its current or last Query/Parse text, first 200 bytes
  const char* pinned = "";     // the session state that pinned it to its server, if any
  std::string tls;             // "TLSv1.3/cipher" when encrypted (PgBouncer's tls column)
};

// One server connection, copied out on its own loop.
struct ServerInfo {
  uint64_t id = 0;
  uintptr_t ptr = 0;
  uintptr_t link = 0;      // the client it is lent to
  const char* state = "";  // "active" (lent to a client) or "idle"
  std::string user, database, host, application_name;
  int port = 0;
  TimePoint connected, request;
  uint32_t backend_pid = 0;
  std::string tls;
};

struct LoopSnapshot {
  std::vector<ClientInfo> clients;
  std::vector<ServerInfo> servers;
};

ServerInfo describeServer(const pool::ServerConn& s, const char* state) {
  ServerInfo si;
  si.id = s.id();
  si.ptr = reinterpret_cast<uintptr_t>(&s);
  si.state = state;
  si.user = s.pool()->user();
  si.database = s.pool()->database();
  const auto& login = s.login();
  si.host = login.host.empty() || login.host[0] == '/' ? "unix" : login.host;
  si.port = login.port;
  si.connected = s.createdAt();
  si.request = s.lastUsed() == TimePoint{} ? s.createdAt() : s.lastUsed();
  si.backend_pid = s.backendPid();
  si.application_name = s.tracked()[protocol::kApplicationNameParam];
  si.tls = s.tlsDescription();
  return si;
}

// Runs on the loop that owns `lc`: its clients, the servers they hold, and its idle servers.
LoopSnapshot snapshotLoop(session::SessionContext* ctx, session::LoopClients& lc) {
  using S = ClientSession::State;
  LoopSnapshot snap;
  for (ClientSession* c : lc.clients) {
    ClientInfo ci;
    switch (c->state()) {
      case S::kStartup:
      case S::kAuth:
        ci.state = "login";
        break;
      case S::kWelcome:
      case S::kWaiting:
        ci.state = "waiting";
        break;
      case S::kIdle:
      case S::kSyncing:
      case S::kActive:
        ci.state = "active";
        break;
      case S::kClosed:
        continue;  // on its way out of the list
      default:
        std::abort();
    }
    ci.id = c->id();
    ci.ptr = reinterpret_cast<uintptr_t>(c);
    ci.admin = c->isAdmin();
    ci.user = c->user();
    ci.database = c->database();
    ci.peer = c->peer();
    ci.application_name = c->applicationName();
    ci.tls = c->tlsDescription();
    ci.connected = c->connectedAt();
    ci.request = c->requestStartedAt() == TimePoint{} ? ci.connected : c->requestStartedAt();
    ci.waiting_since = c->waitStartedAt();
    if (const pool::ServerConn* s = c->server()) {
      ci.link = reinterpret_cast<uintptr_t>(s);
      // serverSince() is set at every attach; before that was wired, the request start is
      // the closest we know.
      ci.held_since = c->serverSince() != TimePoint{} ? c->serverSince() : ci.request;
      ci.tx_state = transactionState(*s, *c);
      ci.backend_pid = s->backendPid();
      ci.last_activity = c->lastActivityAt();
      ci.last_statement = c->lastStatement();
      ci.pinned = protocol::sessionStateLabel(c->pinned());
      ServerInfo si = describeServer(*s, "active");
      si.link = ci.ptr;
      si.request = ci.request;
      snap.servers.push_back(std::move(si));
    }
    snap.clients.push_back(std::move(ci));
  }
  // Idle servers of this loop. Only fields this loop owns are read: a client on another loop
  // may take one of them meanwhile, but it moves loops through a task queued behind this one.
  int index = lc.loop->index();
  for (const auto& pool : ctx->pools->all()) {
    for (const auto& s : pool->idleServers(index))
      snap.servers.push_back(describeServer(*s, "idle"));
  }
  return snap;
}

// Gathers every loop's snapshot and replies with render(all of them) on the caller's loop.
void withSnapshot(session::SessionContext* ctx, const AdminConsole::Call& call,
                  std::function<std::string(const LoopSnapshot&)> render) {
  auto reply = call.reply;
  gatherLoopsTo<LoopSnapshot>(
      ctx, call.session->clientLoop(),
      [ctx](session::LoopClients& lc) { return snapshotLoop(ctx, lc); },
      [reply, render = std::move(render)](std::vector<LoopSnapshot>& parts) {
        LoopSnapshot all;
        for (auto& p : parts) {
          std::move(p.clients.begin(), p.clients.end(), std::back_inserter(all.clients));
          std::move(p.servers.begin(), p.servers.end(), std::back_inserter(all.servers));
        }
        std::string out;
        try {
          out = render(all);
        } catch (const std::exception& e) {
          out = errorReply(sqlstate::kInternalError, std::string("sluice: ") + e.what());
        }
        reply(std::move(out));
      });
}

// ---- SHOW CLIENTS / SERVERS / SOCKETS ---------------------------------------------------------

const std::vector<Column> kSocketColumns = {
    {"type", kText},         {"user", kText},       {"database", kText},
    {"state", kText},        {"addr", kText},       {"port", kInt4},
    {"local_addr", kText},   {"local_port", kInt4}, {"connect_time", kText},
    {"request_time", kText}, {"wait", kInt4},       {"wait_us", kInt4},
    {"close_needed", kInt4}, {"ptr", kText},        {"link", kText},
    {"remote_pid", kInt4},   {"tls", kText},        {"application_name", kText},
};
// SHOW SOCKETS adds PgBouncer's buffer positions; sluice has no such buffers to show: zeros.
const std::vector<Column> kSocketDebugColumns = {
    {"recv_pos", kInt4},    {"pkt_pos", kInt4},   {"pkt_remain", kInt4}, {"send_pos", kInt4},
    {"send_remain", kInt4}, {"pkt_avail", kInt4}, {"send_avail", kInt4},
};

// Where clients reach sluice: the listen port, and the address when there is only one.
Address localAddress(const config::Settings& s, const std::string& peer) {
  if (peer == "unix") return {"unix", s.listen_port};
  bool single = !s.listen_addr.empty() && s.listen_addr.find(',') == std::string::npos &&
                s.listen_addr != "*";
  return {single ? trim(s.listen_addr) : std::string(), s.listen_port};
}

Row clientRow(const ClientInfo& c, const char* state, const config::Settings& s,
              const WallClock& clock) {
  Address remote = splitPeer(c.peer, s.listen_port);
  Address local = localAddress(s, c.peer);
  long long wait_us = 0;
  if (std::string_view(c.state) == "waiting") {
    wait_us =
        std::chrono::duration_cast<std::chrono::microseconds>(clock.steady() - c.waiting_since)
            .count();
  }
  return {"C",
          c.user,
          c.database,
          std::string(state),
          remote.addr,
          num(remote.port),
          local.addr,
          num(local.port),
          clock.format(c.connected),
          clock.format(c.request),
          num(wait_us / 1000000),
          num(wait_us % 1000000),
          num(0),
          hexPtr(c.ptr),
          hexPtr(c.link),
          num(0),
          c.tls,
          c.application_name};
}

Row serverRow(const ServerInfo& s, const char* state, const WallClock& clock) {
  return {"S",
          s.user,
          s.database,
          std::string(state),
          s.host,
          num(s.port),
          std::string(),
          num(0),
          clock.format(s.connected),
          clock.format(s.request),
          num(0),
          num(0),
          num(0),
          hexPtr(s.ptr),
          hexPtr(s.link),
          num(s.backend_pid),
          s.tls,
          s.application_name};
}

// PgBouncer lists pool by pool; within a pool, in the order connections arrived.
template <typename T>
void sortByPool(std::vector<T>& v) {
  std::sort(v.begin(), v.end(), [](const T& a, const T& b) {
    return std::tie(a.database, a.user, a.id) < std::tie(b.database, b.user, b.id);
  });
}

std::string renderClients(LoopSnapshot all, const config::Settings& s) {
  WallClock clock;
  sortByPool(all.clients);
  std::vector<Row> rows;
  for (const auto& c : all.clients) {
    if (std::string_view(c.state) != "login") rows.push_back(clientRow(c, c.state, s, clock));
  }
  return table(kSocketColumns, rows);
}

std::string renderServers(LoopSnapshot all) {
  WallClock clock;
  // Pool by pool, servers lent to clients first, as PgBouncer lists its active list first.
  std::sort(all.servers.begin(), all.servers.end(), [](const ServerInfo& a, const ServerInfo& b) {
    bool a_idle = std::string_view(a.state) != "active";
    bool b_idle = std::string_view(b.state) != "active";
    return std::tie(a.database, a.user, a_idle, a.id) < std::tie(b.database, b.user, b_idle, b.id);
  });
  std::vector<Row> rows;
  for (const auto& sv : all.servers) rows.push_back(serverRow(sv, sv.state, clock));
  return table(kSocketColumns, rows);
}

std::string renderSockets(LoopSnapshot all, const config::Settings& s) {
  WallClock clock;
  sortByPool(all.clients);
  sortByPool(all.servers);
  std::vector<Column> cols = kSocketColumns;
  cols.insert(cols.end(), kSocketDebugColumns.begin(), kSocketDebugColumns.end());
  std::vector<Row> rows;
  auto debug = [](Row r) {
    for (size_t i = 0; i < kSocketDebugColumns.size(); ++i) r.push_back(num(0));
    return r;
  };
  for (const auto& c : all.clients) {
    std::string_view st(c.state);
    if (st != "login")
      rows.push_back(debug(clientRow(c, st == "active" ? "cl_active" : "cl_waiting", s, clock)));
  }
  for (const auto& sv : all.servers) {
    rows.push_back(debug(
        serverRow(sv, std::string_view(sv.state) == "active" ? "sv_active" : "sv_idle", clock)));
  }
  for (const auto& c : all.clients) {
    if (std::string_view(c.state) == "login")
      rows.push_back(debug(clientRow(c, "cl_login", s, clock)));
  }
  return table(cols, rows);
}

// sluice's own: who holds a server right now, for how long, doing what.
std::string renderHolders(LoopSnapshot all) {
  WallClock clock;
  std::vector<const ClientInfo*> holders;
  for (const auto& c : all.clients) {
    if (c.link && !c.admin) holders.push_back(&c);
  }
  std::sort(holders.begin(), holders.end(), [](const ClientInfo* a, const ClientInfo* b) {
    return a->held_since < b->held_since;  // longest first
  });
  std::vector<Row> rows;
  for (const ClientInfo* c : holders) {
    double held = std::chrono::duration<double>(clock.steady() - c->held_since).count();
    double idle = std::chrono::duration<double>(clock.steady() - c->last_activity).count();
    rows.push_back({num(static_cast<long long>(c->id)), c->application_name, c->user, c->database,
                    c->peer, fmt::format("{:.3f}", std::max(0.0, held)), std::string(c->tx_state),
                    fmt::format("{:.3f}", std::max(0.0, idle)), num(c->backend_pid),
                    c->last_statement, std::string(c->pinned)});
  }
  // state is pg_stat_activity's word: "idle in transaction" is a client holding its server while
  // sending nothing (idle_seconds says for how long), "active" a query or batch under way.
  return table({{"client_id", kInt8},
                {"application_name", kText},
                {"user", kText},
                {"database", kText},
                {"client_addr", kText},
                {"held_seconds", kNumeric},
                {"state", kText},
                {"idle_seconds", kNumeric},
                {"backend_pid", kInt4},
                {"last_statement", kText},
                {"pinned", kText}},
               rows);
}

// ---- SHOW POOLS / DATABASES / USERS / LISTS ---------------------------------------------------

// The console is a pseudo-database with a pseudo-pool, as in PgBouncer.
constexpr const char* kConsoleName = "pgbouncer";
constexpr int kConsolePoolSize = 2;

std::string renderPools(session::SessionContext* ctx, const LoopSnapshot& all) {
  std::vector<std::pair<std::pair<std::string, std::string>, Row>> rows;
  bool adaptive = ctx->pools->config()->settings.pool_size_mode == config::PoolSizeMode::kAdaptive;
  std::map<std::pair<std::string, std::string>, int> limits;
  for (const auto& p : ctx->pools->all()) {
    auto st = p->stats();
    limits[{st.database, st.user}] = st.limit;
    long long wait_us = static_cast<long long>(st.max_wait_s * 1e6);
    rows.push_back({{st.database, st.user},
                    {st.database, st.user, num(st.clients - st.waiting), num(st.waiting), num(0),
                     num(0), num(st.active), num(0), num(0), num(st.idle), num(0), num(0),
                     num(st.login), num(wait_us / 1000000), num(wait_us % 1000000),
                     std::string(config::poolModeName(st.mode))}});
  }
  long long consoles = std::count_if(all.clients.begin(), all.clients.end(), [](const auto& c) {
    return c.admin && std::string_view(c.state) != "login";
  });
  rows.push_back(
      {{kConsoleName, kConsoleName},
       {kConsoleName, kConsoleName, num(consoles), num(0), num(0), num(0), num(0), num(0), num(0),
        num(0), num(0), num(0), num(0), num(0), num(0), std::string("statement")}});
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Row> out;
  for (auto& r : rows) out.push_back(std::move(r.second));
  std::vector<Column> columns = {{"database", kText},
                                 {"user", kText},
                                 {"cl_active", kInt4},
                                 {"cl_waiting", kInt4},
                                 {"cl_active_cancel_req", kInt4},
                                 {"cl_waiting_cancel_req", kInt4},
                                 {"sv_active", kInt4},
                                 {"sv_active_cancel", kInt4},
                                 {"sv_being_canceled", kInt4},
                                 {"sv_idle", kInt4},
                                 {"sv_used", kInt4},
                                 {"sv_tested", kInt4},
                                 {"sv_login", kInt4},
                                 {"maxwait", kInt4},
                                 {"maxwait_us", kInt4},
                                 {"pool_mode", kText}};
  if (adaptive) {
    // pool_size_mode = adaptive: how many servers each pool may have in use right now. Only
    // then, so that a PgBouncer configuration gets PgBouncer's columns exactly.
    columns.push_back({"sluice_limit", kInt4});
    for (auto& row : out) {
      auto it = limits.find({row[0].value_or(""), row[1].value_or("")});
      row.push_back(it == limits.end() ? Value() : num(it->second));
    }
  }
  return table(columns, out);
}

// Every [databases] entry, the databases "*" has produced pools for, and the console.
std::vector<Row> databaseRows(session::SessionContext* ctx) {
  auto cfg = ctx->pools->config();
  const auto& s = cfg->settings;
  auto pools = ctx->pools->all();
  std::map<std::string, long long> servers;
  for (const auto& p : pools) servers[p->database()] += p->stats().total;
  std::map<std::string, Row> rows;  // by name, as PgBouncer lists them
  auto add = [&](const std::string& name, const config::DatabaseEntry& db) {
    rows[name] = {name,
                  db.host.empty() ? Value() : Value(db.host),
                  num(db.port),
                  db.dbname.empty() ? name : db.dbname,
                  db.user.empty() ? Value() : Value(db.user),
                  num(db.pool_size.value_or(s.default_pool_size)),
                  num(db.min_pool_size.value_or(s.min_pool_size)),
                  num(db.reserve_pool_size.value_or(s.reserve_pool_size)),
                  db.pool_mode ? Value(config::poolModeName(*db.pool_mode)) : Value(),
                  num(db.max_db_connections.value_or(s.max_db_connections)),
                  num(servers[name]),
                  num(ctx->pools->databasePaused(name) ? 1 : 0),
                  num(ctx->pools->databaseDisabled(name) ? 1 : 0)};
  };
  for (const auto& db : cfg->databases) {
    if (db.name != "*") add(db.name, db);
  }
  for (const auto& p : pools) {
    if (rows.count(p->database())) continue;
    const config::DatabaseEntry* db = cfg->findDatabase(p->database());
    if (db) add(p->database(), *db);  // from "*"; a database removed by a reload is not listed
  }
  rows[kConsoleName] = {kConsoleName, Value(),      num(s.listen_port),
                        kConsoleName, kConsoleName, num(kConsolePoolSize),
                        num(0),       num(0),       std::string("statement"),
                        num(0),       num(0),       num(0),
                        num(0)};
  std::vector<Row> out;
  for (auto& [name, row] : rows) out.push_back(std::move(row));
  return out;
}

// Users sluice knows of: auth_file, [users], forced users, users of pools, and the console's.
std::vector<Row> userRows(session::SessionContext* ctx) {
  auto cfg = ctx->pools->config();
  std::set<std::string> names = {kConsoleName};
  if (auto users = ctx->pools->userList()) {
    for (const auto& [name, secret] : users->secrets) names.insert(name);
  }
  for (const auto& u : cfg->users) names.insert(u.name);
  for (const auto& db : cfg->databases) {
    if (!db.user.empty()) names.insert(db.user);
  }
  for (const auto& p : ctx->pools->all()) names.insert(p->user());
  std::vector<Row> rows;
  for (const auto& name : names) {
    const config::UserEntry* u = cfg->findUser(name);
    rows.push_back(
        {name, u && u->pool_mode ? Value(config::poolModeName(*u->pool_mode)) : Value()});
  }
  return rows;
}

std::string renderLists(session::SessionContext* ctx, const LoopSnapshot& all) {
  long long used_clients = 0, login_clients = 0, servers = 0;
  for (const auto& c : all.clients)
    ++(std::string_view(c.state) == "login" ? login_clients : used_clients);
  auto pools = ctx->pools->all();
  for (const auto& p : pools) servers += p->stats().total;
  auto row = [](const char* name, long long n) { return Row{std::string(name), num(n)}; };
  // PgBouncer's free_* are its allocator caches; sluice has none. It resolves no DNS itself.
  return table({{"list", kText}, {"items", kInt4}},
               {row("databases", static_cast<long long>(databaseRows(ctx).size())),
                row("users", static_cast<long long>(userRows(ctx).size())),
                row("pools", static_cast<long long>(pools.size()) + 1), row("free_clients", 0),
                row("used_clients", used_clients), row("login_clients", login_clients),
                row("free_servers", 0), row("used_servers", servers), row("dns_names", 0),
                row("dns_zones", 0), row("dns_queries", 0), row("dns_pending", 0)});
}

// ---- SHOW STATS / STATS_TOTALS / STATS_AVERAGES / TOTALS --------------------------------------

// Totals per database over its pools (PgBouncer reports statistics per database), plus the
// console's pseudo-database, which sluice does not count (zeros).
std::map<std::string, PoolTotals> databaseTotals(session::SessionContext* ctx) {
  std::map<std::string, PoolTotals> out;
  for (const auto& p : ctx->pools->all()) out[p->database()] += sumShards(*p);
  out[kConsoleName];
  return out;
}

// PgBouncer's calc_average(): counts and bytes per second over the window; transaction and
// query times as the mean duration (us) of those completed in it; wait time as microseconds
// waited per second.
struct Averages {
  uint64_t xact_count = 0, query_count = 0, bytes_received = 0, bytes_sent = 0, xact_time = 0,
           query_time = 0, wait_time = 0;
};

Averages average(const PoolTotals& cur, const PoolTotals& old, uint64_t dur_us) {
  auto delta = [](uint64_t a, uint64_t b) { return a > b ? a - b : 0; };
  Averages a;
  if (dur_us == 0) return a;
  auto per_second = [&](uint64_t d) {
    return static_cast<uint64_t>(static_cast<unsigned __int128>(d) * 1000000 / dur_us);
  };
  uint64_t xacts = delta(cur.xact_count, old.xact_count);
  uint64_t queries = delta(cur.query_count, old.query_count);
  a.xact_count = per_second(xacts);
  a.query_count = per_second(queries);
  a.bytes_received = per_second(delta(cur.bytes_received, old.bytes_received));
  a.bytes_sent = per_second(delta(cur.bytes_sent, old.bytes_sent));
  if (xacts > 0) a.xact_time = delta(cur.xact_time_us, old.xact_time_us) / xacts;
  if (queries > 0) a.query_time = delta(cur.query_time_us, old.query_time_us) / queries;
  a.wait_time = per_second(delta(cur.wait_time_us, old.wait_time_us));
  return a;
}

Value unum(uint64_t v) { return std::to_string(v); }

// ---- SHOW CONFIG ------------------------------------------------------------------------------

std::string configValue(int v) { return std::to_string(v); }
std::string configValue(bool v) { return v ? "1" : "0"; }
std::string configValue(const std::string& v) { return v; }
std::string configValue(config::PoolMode v) { return config::poolModeName(v); }
std::string configValue(config::AuthType v) { return config::authTypeName(v); }
std::string configValue(config::SessionStatePolicy v) { return config::sessionStatePolicyName(v); }
std::string configValue(config::BudgetCheck v) { return config::budgetCheckName(v); }
std::string configValue(config::PoolSizeMode v) { return config::poolSizeModeName(v); }
std::string configValue(config::SslMode v) { return config::sslModeName(v); }
std::string configValue(config::Duration v) {  // seconds, as PgBouncer writes them
  if (v.count() % 1000 == 0) return std::to_string(v.count() / 1000);
  return fmt::format("{:g}", v.count() / 1000.0);
}
std::string configValue(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& item : v) out += (out.empty() ? "" : ",") + item;
  return out;
}

struct ConfigKey {
  const char* name;
  std::function<std::string(const config::Settings&)> show;
  bool changeable;  // takes effect on RELOAD; "no": needs a restart
};

template <typename T>
ConfigKey key(const char* name, T config::Settings::*field, bool changeable = true) {
  return {name, [field](const config::Settings& s) { return configValue(s.*field); }, changeable};
}

// Every [pgbouncer] key sluice reads (config.cc's kSettingSpecs). Keys PgBouncer has and sluice
// only warns about are not listed: they have no value here.
const std::vector<ConfigKey>& configKeys() {
  using S = config::Settings;
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> k = {
        key("listen_addr", &S::listen_addr, false),
        key("listen_port", &S::listen_port, false),
        key("unix_socket_dir", &S::unix_socket_dir, false),
        {"unix_socket_mode", [](const S& s) { return fmt::format("0{:o}", s.unix_socket_mode); },
         false},
        key("so_reuseport", &S::so_reuseport, false),
        key("listen_backlog", &S::listen_backlog, false),
        key("workers", &S::workers, false),
        key("auth_type", &S::auth_type),
        key("auth_file", &S::auth_file),
        key("auth_hba_file", &S::auth_hba_file),
        key("auth_user", &S::auth_user),
        key("auth_query", &S::auth_query),
        key("auth_dbname", &S::auth_dbname),
        key("max_pending_logins", &S::max_pending_logins),
        key("admin_users", &S::admin_users),
        key("stats_users", &S::stats_users),
        key("pool_mode", &S::pool_mode),
        key("max_client_conn", &S::max_client_conn),
        key("default_pool_size", &S::default_pool_size),
        key("min_pool_size", &S::min_pool_size),
        key("reserve_pool_size", &S::reserve_pool_size),
        key("reserve_pool_timeout", &S::reserve_pool_timeout),
        key("max_db_connections", &S::max_db_connections),
        key("max_user_connections", &S::max_user_connections),
        key("max_prepared_statements", &S::max_prepared_statements),
        key("server_round_robin", &S::server_round_robin),
        key("ignore_startup_parameters", &S::ignore_startup_parameters),
        key("track_extra_parameters", &S::track_extra_parameters),
        key("server_lifetime", &S::server_lifetime),
        key("server_idle_timeout", &S::server_idle_timeout),
        key("server_connect_timeout", &S::server_connect_timeout),
        key("server_login_retry", &S::server_login_retry),
        key("server_reset_query", &S::server_reset_query),
        key("server_reset_query_always", &S::server_reset_query_always),
        key("server_check_query", &S::server_check_query),
        key("server_check_delay", &S::server_check_delay),
        key("server_fast_close", &S::server_fast_close),
        key("query_timeout", &S::query_timeout),
        key("query_wait_timeout", &S::query_wait_timeout),
        key("cancel_wait_timeout", &S::cancel_wait_timeout),
        key("client_idle_timeout", &S::client_idle_timeout),
        key("client_login_timeout", &S::client_login_timeout),
        key("idle_transaction_timeout", &S::idle_transaction_timeout),
        key("suspend_timeout", &S::suspend_timeout),
        key("shutdown_timeout", &S::shutdown_timeout),
        key("max_packet_size", &S::max_packet_size),
        key("pkt_buf", &S::pkt_buf, false),
        key("logfile", &S::logfile, false),
        key("pidfile", &S::pidfile, false),
        key("log_connections", &S::log_connections),
        key("log_disconnections", &S::log_disconnections),
        key("log_pooler_errors", &S::log_pooler_errors),
        key("log_stats", &S::log_stats),
        key("stats_period", &S::stats_period),
        key("verbose", &S::verbose),
        key("application_name_add_host", &S::application_name_add_host),
        key("http_listen", &S::http_listen, false),
        key("ops_allow", &S::ops_allow),
        key("monitor_interval", &S::monitor_interval),
        key("monitor_warn_utilization", &S::monitor_warn_utilization),
        key("hold_warn_threshold", &S::hold_warn_threshold),
        key("max_waiting_clients", &S::max_waiting_clients),
        key("max_pinned_servers", &S::max_pinned_servers),
        key("server_connect_parallelism", &S::server_connect_parallelism),
        key("session_state", &S::session_state),
        key("codel_target", &S::codel_target),
        key("codel_interval", &S::codel_interval),
        key("codel_deadline", &S::codel_deadline),
        key("budget_check", &S::budget_check),
        key("pool_size_mode", &S::pool_size_mode),
        key("client_tls_sslmode", &S::client_tls_sslmode),
        key("client_tls_key_file", &S::client_tls_key_file),
        key("client_tls_cert_file", &S::client_tls_cert_file),
        key("client_tls_ca_file", &S::client_tls_ca_file),
        key("client_tls_protocols", &S::client_tls_protocols),
        key("client_tls_ciphers", &S::client_tls_ciphers),
        key("client_tls13_ciphers", &S::client_tls13_ciphers),
        key("client_tls_dheparams", &S::client_tls_dheparams),
        key("client_tls_ecdhcurve", &S::client_tls_ecdhcurve),
        key("server_tls_sslmode", &S::server_tls_sslmode),
        key("server_tls_key_file", &S::server_tls_key_file),
        key("server_tls_cert_file", &S::server_tls_cert_file),
        key("server_tls_ca_file", &S::server_tls_ca_file),
        key("server_tls_protocols", &S::server_tls_protocols),
        key("server_tls_ciphers", &S::server_tls_ciphers),
        key("server_tls13_ciphers", &S::server_tls13_ciphers),
    };
    std::sort(k.begin(), k.end(), [](const ConfigKey& a, const ConfigKey& b) {
      return std::string_view(a.name) < b.name;
    });
    return k;
  }();
  return keys;
}

}  // namespace

// ---- the command table ------------------------------------------------------------------------

AdminConsole::AdminConsole(session::SessionContext* ctx, ControlPlane* control)
    : ctx_(ctx), control_(control) {
  // As PgBouncer's stats_setup(): the first window counts from one second before start.
  newer_at_ = now();
  older_at_ = newer_at_ - std::chrono::seconds(1);
  auto settings = [this] { return ctx_->pools->config()->settings; };

  addNow("SHOW HELP", Arg::kNone, false, [this](const Call&) { return showHelp(); });
  addNow("SHOW VERSION", Arg::kNone, false, [](const Call&) {
    return table({{"version", kText}}, {{std::string("sluice " SLUICE_VERSION)}});
  });
  addNow("SHOW CONFIG", Arg::kNone, false, [this](const Call&) { return showConfig(); });
  addNow("SHOW DATABASES", Arg::kNone, false, [this](const Call&) { return showDatabases(); });
  addNow("SHOW USERS", Arg::kNone, false, [this](const Call&) { return showUsers(); });
  addNow("SHOW STATE", Arg::kNone, false, [this](const Call&) { return showState(); });
  add("SHOW POOLS", Arg::kNone, false, "", [this](Call& call) {
    withSnapshot(ctx_, call,
                 [ctx = ctx_](const LoopSnapshot& all) { return renderPools(ctx, all); });
  });
  add("SHOW LISTS", Arg::kNone, false, "", [this](Call& call) {
    withSnapshot(ctx_, call,
                 [ctx = ctx_](const LoopSnapshot& all) { return renderLists(ctx, all); });
  });
  add("SHOW CLIENTS", Arg::kNone, false, "", [this, settings](Call& call) {
    withSnapshot(ctx_, call,
                 [settings](const LoopSnapshot& all) { return renderClients(all, settings()); });
  });
  add("SHOW SERVERS", Arg::kNone, false, "", [this](Call& call) {
    withSnapshot(ctx_, call, [](const LoopSnapshot& all) { return renderServers(all); });
  });
  add("SHOW SOCKETS", Arg::kNone, false, "", [this, settings](Call& call) {
    withSnapshot(ctx_, call,
                 [settings](const LoopSnapshot& all) { return renderSockets(all, settings()); });
  });
  add("SHOW HOLDERS", Arg::kNone, false, "", [this](Call& call) {
    withSnapshot(ctx_, call, [](const LoopSnapshot& all) { return renderHolders(all); });
  });

  addNow("SHOW STATS", Arg::kNone, false,
         [this](const Call&) { return showStats(StatsView::kStats); });
  addNow("SHOW STATS_TOTALS", Arg::kNone, false,
         [this](const Call&) { return showStats(StatsView::kTotals); });
  addNow("SHOW STATS_AVERAGES", Arg::kNone, false,
         [this](const Call&) { return showStats(StatsView::kAverages); });
  addNow("SHOW TOTALS", Arg::kNone, false,
         [this](const Call&) { return showStats(StatsView::kTotalsList); });
  add("SHOW FDS", Arg::kNone, true, "SHOW FDS (not supported)", [](Call&) {
    throw AdminError(sqlstate::kFeatureNotSupported,
                     "sluice: SHOW FDS is not supported: it hands sockets to a new process in an "
                     "online restart (pgbouncer -R), which sluice does not do");
  });

  add("RELOAD", Arg::kNone, true, "RELOAD", [this](Call& call) {
    SLOG_INFO("RELOAD command issued by {}", call.session->prefix());
    net::EventLoop* home = call.session->clientLoop();
    auto reply = call.reply;
    control_->reloadConfigAsync([home, reply](std::string message) {
      home->post([reply, message = std::move(message)] {
        std::string out;
        protocol::ErrorInfo n;
        n.severity = "NOTICE";
        n.sqlstate = "00000";
        n.message = message;
        protocol::appendNotice(out, n);
        protocol::appendCommandComplete(out, "RELOAD");
        reply(std::move(out));
      });
    });
  });
  addNow("RECONNECT", Arg::kOptional, true,
         [this](const Call& call) { return reconnect(call.arg); });
  commands_["RECONNECT"].usage = "RECONNECT [<db>]";
  add("PAUSE", Arg::kOptional, true, "PAUSE [<db>]", [this](Call& call) { pause(call); });
  addNow("RESUME", Arg::kOptional, true, [this](const Call& call) { return resume(call.arg); });
  commands_["RESUME"].usage = "RESUME [<db>]";
  add("KILL", Arg::kOptional, true, "KILL [<db>]", [this](Call& call) { kill(call); });
  addNow("DISABLE", Arg::kRequired, true,
         [this](const Call& call) { return enable(call.arg, false); });
  commands_["DISABLE"].usage = "DISABLE <db>";
  addNow("ENABLE", Arg::kRequired, true,
         [this](const Call& call) { return enable(call.arg, true); });
  commands_["ENABLE"].usage = "ENABLE <db>";
  add("WAIT_CLOSE", Arg::kOptional, true, "WAIT_CLOSE [<db>]",
      [this](Call& call) { waitClose(call); });
  add("SET", Arg::kRequired, false, "SET key = arg", [this](Call& call) { set(call); });
  add("KILL_CLIENT", Arg::kRequired, true, "KILL_CLIENT <id>",
      [this](Call& call) { killClient(call); });
  addNow("SHUTDOWN", Arg::kNone, true, [this](const Call& call) {
    SLOG_INFO("SHUTDOWN command issued by {}", call.session->prefix());
    control_->shutdown(false);
    return complete("SHUTDOWN");
  });
  commands_["SHUTDOWN"].usage = "SHUTDOWN";
}

void AdminConsole::add(std::string words, Arg arg, bool admin_only, std::string usage,
                       std::function<void(Call&)> run) {
  commands_[std::move(words)] = Command{arg, admin_only, std::move(usage), std::move(run)};
}

void AdminConsole::addNow(std::string words, Arg arg, bool admin_only,
                          std::function<std::string(const Call&)> build) {
  add(std::move(words), arg, admin_only, "",
      [build = std::move(build)](Call& call) { call.reply(build(call)); });
}

void AdminConsole::execute(const std::shared_ptr<session::ClientSession>& session,
                           const std::string& sql, std::function<void(std::string)> reply) {
  Call call{session, "", std::move(reply)};
  std::string rest = trim(sql);
  while (!rest.empty() && (rest.back() == ';' || isSpace(rest.back()))) rest.pop_back();
  if (rest.empty()) {
    std::string out;
    protocol::appendEmptyQueryResponse(out);
    call.reply(std::move(out));
    return;
  }
  const std::string text = rest;
  try {
    std::string words = upper(takeWord(rest));
    if (words == "SHOW") words += " " + upper(takeWord(rest));
    auto it = commands_.find(words);
    if (it == commands_.end()) {
      throw AdminError(sqlstate::kSyntaxError,
                       "sluice: unknown admin command: " + text + " (try SHOW HELP)");
    }
    const Command& cmd = it->second;
    call.arg = words == "SET" ? rest : unquote(rest);
    if (cmd.arg == Arg::kNone && !call.arg.empty()) {
      throw AdminError(sqlstate::kSyntaxError, "sluice: " + words + " takes no argument");
    }
    if (cmd.arg == Arg::kRequired && call.arg.empty()) {
      throw AdminError(sqlstate::kSyntaxError, "sluice: usage: " + cmd.usage);
    }
    if (cmd.admin_only) {
      auto cfg = ctx_->pools->config();
      const auto& admins = cfg->settings.admin_users;
      if (std::find(admins.begin(), admins.end(), session->user()) == admins.end()) {
        throw AdminError(kInsufficientPrivilege, "sluice: " + words + " needs admin access: \"" +
                                                     session->user() + "\" is not in admin_users");
      }
    }
    cmd.run(call);
  } catch (const AdminError& e) {
    call.reply(errorReply(e.sqlstate(), e.what()));
  } catch (const std::exception& e) {
    call.reply(errorReply(sqlstate::kInternalError, std::string("sluice: ") + e.what()));
  }
}

// ---- commands answered on the calling loop ----------------------------------------------------

std::string AdminConsole::showHelp() const {
  std::string shows;
  for (const auto& [words, cmd] : commands_) {
    if (words.rfind("SHOW ", 0) == 0 && cmd.usage.empty()) {
      shows += (shows.empty() ? "" : "|") + words.substr(5);
    }
  }
  std::string detail = "\n\tSHOW " + shows;
  for (const auto& [words, cmd] : commands_) {
    if (!cmd.usage.empty() && cmd.usage != "-") detail += "\n\t" + cmd.usage;
  }
  std::string out;
  protocol::ErrorInfo n;
  n.severity = "NOTICE";
  n.sqlstate = "00000";
  n.message = "Console usage";
  n.detail = detail;
  protocol::appendNotice(out, n);
  protocol::appendCommandComplete(out, "SHOW");
  return out;
}

std::string AdminConsole::showDatabases() const {
  return table({{"name", kText},
                {"host", kText},
                {"port", kInt4},
                {"database", kText},
                {"force_user", kText},
                {"pool_size", kInt4},
                {"min_pool_size", kInt4},
                {"reserve_pool", kInt4},
                {"pool_mode", kText},
                {"max_connections", kInt4},
                {"current_connections", kInt4},
                {"paused", kInt4},
                {"disabled", kInt4}},
               databaseRows(ctx_));
}

std::string AdminConsole::showUsers() const {
  return table({{"name", kText}, {"pool_mode", kText}}, userRows(ctx_));
}

std::string AdminConsole::showConfig() const {
  auto cfg = ctx_->pools->config();
  static const config::Settings defaults;
  std::vector<Row> rows;
  bool conffile_done = false;
  for (const auto& k : configKeys()) {
    // PgBouncer lists the file it was started with among the keys, in order.
    if (!conffile_done && std::string_view(k.name) > "conffile") {
      rows.push_back({std::string("conffile"), cfg->path, Value(), std::string("no")});
      conffile_done = true;
    }
    rows.push_back({std::string(k.name), k.show(cfg->settings), k.show(defaults),
                    std::string(k.changeable ? "yes" : "no")});
  }
  return table({{"key", kText}, {"value", kText}, {"default", kText}, {"changeable", kText}}, rows);
}

std::string AdminConsole::showState() const {
  bool paused = ctx_->pools->pausedAll();
  auto yes = [](bool b) { return Value(b ? "yes" : "no"); };
  return table({{"key", kText}, {"value", kText}}, {{std::string("active"), yes(!paused)},
                                                    {std::string("paused"), yes(paused)},
                                                    {std::string("suspended"), yes(false)}});
}

std::string AdminConsole::reconnect(const std::string& database) const {
  if (!database.empty()) requireDatabase(database, "reconnect");
  auto pools = ctx_->pools->all();
  int n = 0;
  for (const auto& p : pools) {
    if (!database.empty() && p->database() != database) continue;
    // Idle servers close now; servers lent to clients close when they come back.
    p->closeIdle("RECONNECT from the admin console");
    ++n;
  }
  SLOG_INFO("RECONNECT {}: {} pools reconnect their servers",
            database.empty() ? "(all databases)" : database, n);
  return complete("RECONNECT");
}

// ---- SHOW STATS -------------------------------------------------------------------------------

void AdminConsole::tick(TimePoint t) {
  std::vector<std::pair<Pending, std::string>> finished;  // with an error message or ""
  {
    std::lock_guard lock(pending_mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      std::string failure = it->failed ? it->failed() : std::string();
      if (failure.empty() && !it->done()) {
        ++it;
        continue;
      }
      finished.emplace_back(std::move(*it), std::move(failure));
      it = pending_.erase(it);
    }
  }
  for (auto& [p, failure] : finished) {
    std::string out = failure.empty()
                          ? complete(p.tag)
                          : errorReply(sqlstate::kObjectNotInPrerequisiteState, failure);
    p.call.session->clientLoop()->post(
        [reply = p.call.reply, out = std::move(out)]() mutable { reply(std::move(out)); });
  }
  auto period = ctx_->pools->config()->settings.stats_period;
  {
    std::lock_guard lock(periods_mu_);
    if (t - newer_at_ < period) return;
  }
  auto totals = databaseTotals(ctx_);
  std::lock_guard lock(periods_mu_);
  older_ = std::move(newer_);
  older_at_ = newer_at_;
  newer_ = std::move(totals);
  newer_at_ = t;
}

// PgBouncer 1.18's columns, names and types (every number is numeric). SHOW STATS carries one
// extra column at the end, total_requests (total_query_count under its pre-1.8 name), which
// Debian's prometheus-pgbouncer-exporter 1.7 reads; readers by name or by position of the
// PgBouncer columns are unaffected.
std::string AdminConsole::showStats(StatsView view) const {
  auto live = databaseTotals(ctx_);
  std::map<std::string, PoolTotals> older;
  uint64_t dur_us = 0;
  {
    std::lock_guard lock(periods_mu_);
    older = older_;
    dur_us = static_cast<uint64_t>(std::max<long long>(
        0, std::chrono::duration_cast<std::chrono::microseconds>(now() - older_at_).count()));
  }
  auto totalsRow = [](const PoolTotals& t) {
    return Row{unum(t.xact_count),  unum(t.query_count),  unum(t.bytes_received),
               unum(t.bytes_sent),  unum(t.xact_time_us), unum(t.query_time_us),
               unum(t.wait_time_us)};
  };
  auto averagesRow = [](const Averages& a) {
    return Row{unum(a.xact_count), unum(a.query_count), unum(a.bytes_received), unum(a.bytes_sent),
               unum(a.xact_time),  unum(a.query_time),  unum(a.wait_time)};
  };
  auto append = [](Row& to, Row from) {
    std::move(from.begin(), from.end(), std::back_inserter(to));
  };

  if (view == StatsView::kTotalsList) {
    PoolTotals all, old_all;
    for (const auto& [db, t] : live) all += t;
    for (const auto& [db, t] : older) old_all += t;
    Averages a = average(all, old_all, dur_us);
    std::vector<Row> rows;
    const char* names[] = {"total_xact_count",   "total_query_count", "total_client_bytes",
                           "total_server_bytes", "total_xact_time",   "total_query_time",
                           "total_wait_time",    "avg_xact_count",    "avg_query_count",
                           "avg_client_bytes",   "avg_server_bytes",  "avg_xact_time",
                           "avg_query_time",     "avg_wait_time"};
    Row values = totalsRow(all);
    append(values, averagesRow(a));
    for (size_t i = 0; i < values.size(); ++i) rows.push_back({std::string(names[i]), values[i]});
    return table({{"name", kText}, {"value", kNumeric}}, rows);
  }

  std::vector<Row> rows;
  for (const auto& [db, t] : live) {
    auto it = older.find(db);
    Averages a = average(t, it == older.end() ? PoolTotals{} : it->second, dur_us);
    Row r{db};
    if (view != StatsView::kAverages) append(r, totalsRow(t));
    if (view != StatsView::kTotals) append(r, averagesRow(a));
    if (view == StatsView::kStats) r.push_back(unum(t.query_count));  // total_requests
    rows.push_back(std::move(r));
  }
  std::vector<Column> cols = {{"database", kText}};
  auto add = [&cols](std::initializer_list<const char*> names) {
    for (const char* n : names) cols.push_back({n, kNumeric});
  };
  switch (view) {
    case StatsView::kStats:
      add({"total_xact_count", "total_query_count", "total_received", "total_sent",
           "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count",
           "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time",
           "avg_wait_time", "total_requests"});
      break;
    case StatsView::kTotals:
    case StatsView::kAverages:
      add({"xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time", "query_time",
           "wait_time"});
      break;
    case StatsView::kTotalsList:
    default:
      std::abort();
  }
  return table(cols, rows);
}

// ---- KILL_CLIENT ------------------------------------------------------------------------------

// Accepts the client id sluice logs and SHOW HOLDERS shows ("42" or "C42"), or the ptr column
// of SHOW CLIENTS ("0x55d0c0a1b2c0").
void AdminConsole::killClient(Call& call) {
  const std::string arg = call.arg;
  uint64_t id = 0;
  uintptr_t ptr = 0;
  std::string digits = arg;
  bool hex = digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X');
  if (!hex && !digits.empty() && (digits[0] == 'C' || digits[0] == 'c')) digits.erase(0, 1);
  const char* begin = digits.c_str() + (hex ? 2 : 0);
  char* end = nullptr;
  unsigned long long v = begin[0] ? std::strtoull(begin, &end, hex ? 16 : 10) : 0;
  if (!end || *end != '\0' || v == 0 || !std::isxdigit(static_cast<unsigned char>(begin[0]))) {
    throw AdminError(sqlstate::kInvalidParameterValue,
                     "sluice: KILL_CLIENT needs a client id (as in the log prefix [C42 ...] or "
                     "SHOW HOLDERS) or a ptr from SHOW CLIENTS, not '" +
                         arg + "'");
  }
  if (hex) {
    ptr = static_cast<uintptr_t>(v);
  } else {
    id = static_cast<uint64_t>(v);
  }
  std::string by = call.session->prefix();
  SLOG_INFO("KILL_CLIENT {} issued by {}", arg, by);
  auto reply = call.reply;
  gatherLoopsTo<int>(
      ctx_, call.session->clientLoop(),
      [id, ptr, arg](session::LoopClients& lc) {
        ClientSession* found = nullptr;
        for (ClientSession* c : lc.clients) {
          if ((id && c->id() == id) || (ptr && reinterpret_cast<uintptr_t>(c) == ptr)) found = c;
        }
        if (!found || found->state() == ClientSession::State::kClosed) return 0;
        auto keep = found->shared_from_this();  // closing erases it from the list
        protocol::ErrorInfo e;
        e.severity = "FATAL";
        e.sqlstate = sqlstate::kAdminShutdown;
        e.message =
            "sluice: terminating connection due to administrator command (KILL_CLIENT " + arg + ")";
        keep->closeWithError(e, stats::CloseReason::kAdminKill);
        return 1;
      },
      [reply, arg](std::vector<int>& found) {
        if (std::count(found.begin(), found.end(), 1) == 0) {
          reply(errorReply(sqlstate::kUndefinedObject, "sluice: KILL_CLIENT: no client " + arg));
          return;
        }
        reply(complete("KILL_CLIENT"));
      });
}

// ---- PAUSE / RESUME / KILL / DISABLE / ENABLE / WAIT_CLOSE / SET ------------------------------

namespace {
bool isConsoleDatabase(const std::string& db) { return db == kConsoleName || db == "sluice"; }
}  // namespace

void AdminConsole::requireDatabase(const std::string& database, const char* verb) const {
  if (isConsoleDatabase(database)) {
    throw AdminError(sqlstate::kFeatureNotSupported,
                     fmt::format("sluice: cannot {} admin db: {}", verb, database));
  }
  auto cfg = ctx_->pools->config();
  auto pools = ctx_->pools->all();
  bool known = cfg->findDatabase(database) != nullptr ||
               std::any_of(pools.begin(), pools.end(),
                           [&](const auto& p) { return p->database() == database; });
  if (!known) {
    throw AdminError(sqlstate::kInvalidCatalogName, "sluice: no such database: " + database);
  }
}

void AdminConsole::answerWhen(Call call, std::string tag, std::function<bool()> done,
                              std::function<std::string()> failed) {
  if (done()) {
    call.reply(complete(tag));
    return;
  }
  std::lock_guard lock(pending_mu_);
  pending_.push_back({std::move(call), std::move(tag), std::move(done), std::move(failed)});
}

namespace {
// The pools of `database` ("" = every pool).
std::vector<std::shared_ptr<pool::Pool>> poolsOf(session::SessionContext* ctx,
                                                 const std::string& database) {
  std::vector<std::shared_ptr<pool::Pool>> out;
  for (auto& p : ctx->pools->all()) {
    if (database.empty() || p->database() == database) out.push_back(std::move(p));
  }
  return out;
}
}  // namespace

// PgBouncer: the command returns once every server of the paused pools is released (and, as
// in PgBouncer, closed); meanwhile clients queue, and they stay queued until RESUME.
void AdminConsole::pause(Call& call) {
  const std::string db = call.arg;
  if (ctx_->pools->pausedAll()) {
    throw AdminError(sqlstate::kObjectNotInPrerequisiteState, "sluice: already suspended/paused");
  }
  if (!db.empty()) requireDatabase(db, "pause");
  SLOG_INFO("PAUSE {}command issued by {}", db.empty() ? "" : "'" + db + "' ",
            call.session->prefix());
  ctx_->pools->setPaused(db, true);
  auto* ctx = ctx_;
  answerWhen(
      std::move(call), "PAUSE",
      [ctx, db] {
        auto pools = poolsOf(ctx, db);
        return std::all_of(pools.begin(), pools.end(),
                           [](const auto& p) { return p->stats().total == 0; });
      },
      [ctx, db] {
        bool still = db.empty() ? ctx->pools->pausedAll() : ctx->pools->databasePaused(db);
        return still ? std::string()
                     : std::string(
                           "sluice: PAUSE ended by RESUME before every server was "
                           "released");
      });
}

std::string AdminConsole::resume(const std::string& db) {
  if (db.empty()) {
    if (ctx_->shutting_down.load()) {
      throw AdminError(sqlstate::kObjectNotInPrerequisiteState, "sluice: pooler is shutting down");
    }
    if (!ctx_->pools->pausedAll()) {
      throw AdminError(sqlstate::kObjectNotInPrerequisiteState,
                       "sluice: pooler is not paused/suspended");
    }
  } else {
    requireDatabase(db, "resume");
    if (!ctx_->pools->databasePaused(db)) {
      throw AdminError(sqlstate::kObjectNotInPrerequisiteState,
                       "sluice: database " + db + " is not paused");
    }
  }
  SLOG_INFO("RESUME {}command issued", db.empty() ? "" : "'" + db + "' ");
  ctx_->pools->setPaused(db, false);
  return complete("RESUME");
}

// PgBouncer: drop every client and server connection of the database now; new clients wait
// until RESUME (the database stays paused).
void AdminConsole::kill(Call& call) {
  const std::string db = call.arg;
  if (ctx_->pools->pausedAll()) {
    throw AdminError(sqlstate::kObjectNotInPrerequisiteState, "sluice: already suspended/paused");
  }
  if (!db.empty()) requireDatabase(db, "kill");
  SLOG_INFO("KILL {}command issued by {}", db.empty() ? "" : "'" + db + "' ",
            call.session->prefix());
  ctx_->pools->setPaused(db, true);  // closes the idle servers; no new ones until RESUME
  auto reply = call.reply;
  std::string what = db.empty() ? "KILL" : "KILL " + db;
  gatherLoopsTo<int>(
      ctx_, call.session->clientLoop(),
      [db, what](session::LoopClients& lc) {
        using S = ClientSession::State;
        std::vector<std::shared_ptr<ClientSession>> victims;
        for (ClientSession* c : lc.clients) {
          if (c->isAdmin() || c->state() == S::kStartup || c->state() == S::kAuth ||
              c->state() == S::kClosed || (!db.empty() && c->database() != db)) {
            continue;
          }
          victims.push_back(c->shared_from_this());
        }
        for (auto& c : victims) {
          protocol::ErrorInfo e;
          e.severity = "FATAL";
          e.sqlstate = sqlstate::kAdminShutdown;
          e.message = "sluice: terminating connection due to administrator command (" + what + ")";
          c->closeWithError(e, stats::CloseReason::kAdminKill);  // closes its server too
        }
        return static_cast<int>(victims.size());
      },
      [reply](std::vector<int>&) { reply(complete("KILL")); });
}

std::string AdminConsole::enable(const std::string& db, bool on) {
  requireDatabase(db, on ? "enable" : "disable");
  SLOG_INFO("{} '{}' command issued", on ? "ENABLE" : "DISABLE", db);
  ctx_->pools->setDisabled(db, !on);
  return complete(on ? "ENABLE" : "DISABLE");
}

// PgBouncer: wait until no server of the database (or any) is still marked to close on release
// after a RECONNECT or a reload that changed its connection settings.
void AdminConsole::waitClose(Call& call) {
  const std::string db = call.arg;
  if (!db.empty()) requireDatabase(db, "wait in");
  SLOG_INFO("WAIT_CLOSE {}command issued", db.empty() ? "" : "'" + db + "' ");
  auto* ctx = ctx_;
  answerWhen(std::move(call), "WAIT_CLOSE", [ctx, db] {
    auto pools = poolsOf(ctx, db);
    return std::all_of(pools.begin(), pools.end(),
                       [](const auto& p) { return p->stats().stale == 0; });
  });
}

namespace {
// "key = value", "key TO value"; value a word, a number or a 'string' ('' is a quote).
bool parseSet(const std::string& text, std::string& key, std::string& value) {
  size_t i = 0;
  auto skip = [&] {
    while (i < text.size() && isSpace(text[i])) ++i;
  };
  auto word = [&] {
    size_t start = i;
    if (i < text.size() && text[i] == '"') {
      size_t end = text.find('"', i + 1);
      if (end == std::string::npos) return std::string();
      i = end + 1;
      return text.substr(start + 1, end - start - 1);
    }
    while (i < text.size() && !isSpace(text[i]) && text[i] != '=') ++i;
    return text.substr(start, i - start);
  };
  skip();
  key = word();
  if (key.empty()) return false;
  skip();
  if (i < text.size() && text[i] == '=') {
    ++i;
  } else if (upper(text.substr(i, 2)) == "TO" && i + 2 < text.size() && isSpace(text[i + 2])) {
    i += 2;
  } else {
    return false;
  }
  skip();
  value.clear();
  if (i < text.size() && text[i] == '\'') {
    for (++i;; ++i) {
      if (i >= text.size()) return false;
      if (text[i] == '\'') {
        if (i + 1 < text.size() && text[i + 1] == '\'') {
          value += '\'';
          ++i;
          continue;
        }
        ++i;
        break;
      }
      value += text[i];
    }
  } else {
    value = word();
    if (value.empty()) return false;
  }
  skip();
  return i == text.size();
}
}  // namespace

void AdminConsole::set(Call& call) {
  std::string key, value;
  if (!parseSet(call.arg, key, value)) {
    throw AdminError(sqlstate::kSyntaxError,
                     "sluice: usage: SET key = value (a word, a number or a 'quoted string')");
  }
  std::string lower = key;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  // Drivers set these on connect (JDBC: extra_float_digits); PgBouncer ignores them.
  static const std::set<std::string> kIgnored = {"client_encoding",
                                                 "default_transaction_isolation",
                                                 "standard_conforming_strings",
                                                 "datestyle",
                                                 "timezone",
                                                 "extra_float_digits"};
  if (kIgnored.count(lower)) {
    std::string out;
    protocol::ErrorInfo n;
    n.severity = "NOTICE";
    n.sqlstate = "00000";
    n.message = "SET ignored";
    protocol::appendNotice(out, n);
    protocol::appendCommandComplete(out, "SET");
    call.reply(std::move(out));
    return;
  }
  auto cfg = ctx_->pools->config();
  const auto& admins = cfg->settings.admin_users;
  if (std::find(admins.begin(), admins.end(), call.session->user()) == admins.end()) {
    throw AdminError(kInsufficientPrivilege, "sluice: SET needs admin access: \"" +
                                                 call.session->user() + "\" is not in admin_users");
  }
  const auto& keys = configKeys();
  auto it =
      std::find_if(keys.begin(), keys.end(), [&](const ConfigKey& k) { return lower == k.name; });
  if (it == keys.end()) {
    throw AdminError(sqlstate::kUndefinedObject, "sluice: SET failed: unknown key '" + key + "'");
  }
  if (!it->changeable) {
    throw AdminError(sqlstate::kCantChangeRuntimeParam,
                     "sluice: SET failed: " + lower +
                         " cannot be changed while sluice runs (restart with it in the file)");
  }
  SLOG_INFO("SET {} = '{}' issued by {}", lower, value, call.session->prefix());
  net::EventLoop* home = call.session->clientLoop();
  auto reply = call.reply;
  control_->setConfigAsync(lower, value, [home, reply](std::string error) {
    home->post([reply, error = std::move(error)] {
      reply(error.empty()
                ? complete("SET")
                : errorReply(sqlstate::kInvalidParameterValue, "sluice: SET failed: " + error));
    });
  });
}

}  // namespace sluice::admin
