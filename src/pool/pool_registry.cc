#include "pool/pool_registry.h"

#include <fmt/format.h>

namespace sluice::pool {

namespace {

using config::SslMode;

std::shared_ptr<const net::TlsContext> makeTls(const char* side, const net::TlsOptions& o) {
  try {
    return net::TlsContext::create(o);
  } catch (const std::runtime_error& e) {
    throw config::ConfigError(fmt::format("{}_tls_*: {}", side, e.what()));
  }
}

// The contexts for the two sides; nullptr where the mode never uses TLS.
std::pair<std::shared_ptr<const net::TlsContext>, std::shared_ptr<const net::TlsContext>> buildTls(
    const config::Settings& s) {
  std::shared_ptr<const net::TlsContext> client;
  std::shared_ptr<const net::TlsContext> server;
  if (s.client_tls_sslmode != SslMode::kDisable) {
    if (s.client_tls_cert_file.empty() || s.client_tls_key_file.empty()) {
      throw config::ConfigError(
          fmt::format("client_tls_sslmode = {} needs client_tls_cert_file and client_tls_key_file "
                      "(the certificate and key sluice shows to clients)",
                      config::sslModeName(s.client_tls_sslmode)));
    }
    net::TlsOptions o;
    o.accept = true;
    o.cert_file = s.client_tls_cert_file;
    o.key_file = s.client_tls_key_file;
    o.ca_file = s.client_tls_ca_file;
    o.protocols = s.client_tls_protocols;
    o.ciphers = s.client_tls_ciphers;
    o.tls13_ciphers = s.client_tls13_ciphers;
    o.dheparams = s.client_tls_dheparams;
    o.ecdhcurve = s.client_tls_ecdhcurve;
    o.verify_peer = s.client_tls_sslmode >= SslMode::kVerifyCa;
    o.alpn = "postgresql";
    if (o.verify_peer && o.ca_file.empty()) {
      throw config::ConfigError(
          fmt::format("client_tls_sslmode = {} needs client_tls_ca_file to check client "
                      "certificates against",
                      config::sslModeName(s.client_tls_sslmode)));
    }
    client = makeTls("client", o);
  }
  if (s.server_tls_sslmode != SslMode::kDisable) {
    net::TlsOptions o;
    o.cert_file = s.server_tls_cert_file;
    o.key_file = s.server_tls_key_file;
    o.ca_file = s.server_tls_ca_file;
    o.protocols = s.server_tls_protocols;
    o.ciphers = s.server_tls_ciphers;
    o.tls13_ciphers = s.server_tls13_ciphers;
    o.verify_peer = s.server_tls_sslmode >= SslMode::kVerifyCa;
    server = makeTls("server", o);
  }
  return {client, server};
}

}  // namespace

PoolRegistry::PoolRegistry(std::vector<net::EventLoop*> loops) : loops_(std::move(loops)) {}

void PoolRegistry::setConfig(std::shared_ptr<const config::Config> cfg,
                             std::shared_ptr<const config::UserList> users) {
  auto [client_tls, server_tls] = buildTls(cfg->settings);  // throws before anything changes
  std::vector<std::pair<std::shared_ptr<Pool>, PoolSettings>> updates;
  {
    std::lock_guard lock(mu_);
    cfg_ = std::move(cfg);
    users_ = std::move(users);
    client_tls_ = std::move(client_tls);
    server_tls_ = std::move(server_tls);
    for (auto& [key, pool] : pools_) {
      updates.emplace_back(pool, resolve(*cfg_, users_.get(), key.first, key.second));
    }
  }
  for (auto& [pool, settings] : updates) pool->applySettings(std::move(settings));
  // Pools to pre-warm exist from now on, so /readyz reports them warming until they are.
  createWarmPools();
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::createWarmPools() {
  std::vector<std::pair<std::string, std::string>> wanted;
  {
    std::lock_guard lock(mu_);
    for (const auto& db : cfg_->databases) {
      if (db.name == "*" || db.user.empty()) continue;
      int min = db.min_pool_size ? *db.min_pool_size : cfg_->settings.min_pool_size;
      if (min > 0 && !pools_.count({db.name, db.user})) wanted.emplace_back(db.name, db.user);
    }
  }
  std::vector<std::shared_ptr<Pool>> out;
  for (const auto& [db, user] : wanted) {
    if (auto p = get(db, user, nullptr)) out.push_back(std::move(p));
  }
  return out;
}

std::shared_ptr<const config::Config> PoolRegistry::config() const {
  std::lock_guard lock(mu_);
  return cfg_;
}

std::shared_ptr<const config::UserList> PoolRegistry::userList() const {
  std::lock_guard lock(mu_);
  return users_;
}

std::shared_ptr<const net::TlsContext> PoolRegistry::clientTls() const {
  std::lock_guard lock(mu_);
  return client_tls_;
}

PoolSettings PoolRegistry::resolve(const config::Config& cfg, const config::UserList* users,
                                   const std::string& database, const std::string& user) const {
  const auto& s = cfg.settings;
  const config::DatabaseEntry* db = cfg.findDatabase(database);
  const config::UserEntry* u = cfg.findUser(user);
  PoolSettings p;
  p.mode = u && u->pool_mode ? *u->pool_mode : db && db->pool_mode ? *db->pool_mode : s.pool_mode;
  p.pool_size = u && u->pool_size     ? *u->pool_size
                : db && db->pool_size ? *db->pool_size
                                      : s.default_pool_size;
  p.min_pool_size = db && db->min_pool_size ? *db->min_pool_size : s.min_pool_size;
  p.reserve_pool_size = db && db->reserve_pool_size ? *db->reserve_pool_size : s.reserve_pool_size;
  p.reserve_pool_timeout = s.reserve_pool_timeout;
  p.query_wait_timeout = s.query_wait_timeout;
  p.server_lifetime = s.server_lifetime;
  p.server_idle_timeout = s.server_idle_timeout;
  p.server_login_retry = s.server_login_retry;
  p.server_reset_query = s.server_reset_query;
  p.server_reset_query_always = s.server_reset_query_always;
  p.server_round_robin = s.server_round_robin;
  p.server_connect_parallelism = s.server_connect_parallelism;
  p.max_waiting_clients = s.max_waiting_clients;
  p.max_pinned_servers = s.max_pinned_servers;
  p.adaptive = s.pool_size_mode == config::PoolSizeMode::kAdaptive;
  p.codel_target = s.codel_target;
  p.codel_interval = s.codel_interval;
  p.codel_deadline = s.codel_deadline;
  p.max_db_connections =
      db && db->max_db_connections ? *db->max_db_connections : s.max_db_connections;
  p.max_user_connections =
      u && u->max_user_connections ? *u->max_user_connections : s.max_user_connections;
  ServerLogin& l = p.login;
  if (db) {
    l.host = db->host;
    l.port = db->port;
    l.dbname = db->dbname.empty() ? (db->name == "*" ? database : db->name) : db->dbname;
    l.user = db->user.empty() ? user : db->user;
    if (!db->password.empty()) l.secret = db->password;
    if (!db->client_encoding.empty())
      l.startup_params.emplace_back("client_encoding", db->client_encoding);
    if (!db->datestyle.empty()) l.startup_params.emplace_back("datestyle", db->datestyle);
    if (!db->timezone.empty()) l.startup_params.emplace_back("timezone", db->timezone);
    if (!db->application_name.empty())
      l.startup_params.emplace_back("application_name", db->application_name);
  }
  if (l.secret.empty() && users) {
    if (const std::string* sec = users->find(l.user)) l.secret = *sec;
  }
  l.unix_dir = s.unix_socket_dir.empty() ? "/tmp" : s.unix_socket_dir;
  l.connect_timeout = s.server_connect_timeout;
  l.tls_mode = s.server_tls_sslmode;
  l.tls = server_tls_;
  return p;
}

std::shared_ptr<Pool> PoolRegistry::get(const std::string& database, const std::string& user,
                                        std::string* error) {
  std::lock_guard lock(mu_);
  const config::DatabaseEntry* db = cfg_->findDatabase(database);
  if (!db) {
    if (error) *error = "no such database: " + database;
    return nullptr;
  }
  // A database with a forced user shares one pool among all its clients.
  std::string login_user = db->user.empty() ? user : db->user;
  auto key = std::make_pair(database, login_user);
  auto it = pools_.find(key);
  if (it != pools_.end()) return it->second;
  auto pool = std::make_shared<Pool>(this, database, login_user,
                                     resolve(*cfg_, users_.get(), database, login_user), loops_);
  // Not shared yet: nobody else can hold its lock.
  pool->setPaused(paused_all_ || paused_dbs_.count(database) > 0);
  pool->setDisabled(disabled_dbs_.count(database) > 0);
  pools_.emplace(key, pool);
  return pool;
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::setPaused(const std::string& database,
                                                           bool paused) {
  std::vector<std::pair<std::shared_ptr<Pool>, bool>> updates;
  {
    std::lock_guard lock(mu_);
    if (database.empty()) {
      paused_all_ = paused;
    } else if (paused) {
      paused_dbs_.insert(database);
    } else {
      paused_dbs_.erase(database);
    }
    for (const auto& [key, pool] : pools_) {
      if (database.empty() || key.first == database) {
        updates.emplace_back(pool, paused_all_ || paused_dbs_.count(key.first) > 0);
      }
    }
  }
  std::vector<std::shared_ptr<Pool>> out;
  for (auto& [pool, p] : updates) {
    pool->setPaused(p);
    out.push_back(pool);
  }
  return out;
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::setDisabled(const std::string& database,
                                                             bool disabled) {
  std::vector<std::shared_ptr<Pool>> out;
  std::lock_guard lock(mu_);
  if (disabled) {
    disabled_dbs_.insert(database);
  } else {
    disabled_dbs_.erase(database);
  }
  for (const auto& [key, pool] : pools_) {
    if (key.first != database) continue;
    pool->setDisabled(disabled);  // an atomic store: no lock taken
    out.push_back(pool);
  }
  return out;
}

bool PoolRegistry::pausedAll() const {
  std::lock_guard lock(mu_);
  return paused_all_;
}

bool PoolRegistry::databasePaused(const std::string& database) const {
  std::lock_guard lock(mu_);
  return paused_dbs_.count(database) > 0;
}

bool PoolRegistry::databaseDisabled(const std::string& database) const {
  std::lock_guard lock(mu_);
  return disabled_dbs_.count(database) > 0;
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::all() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Pool>> out;
  for (const auto& [k, p] : pools_) out.push_back(p);
  return out;
}

void PoolRegistry::janitor() {
  auto t = now();
  std::vector<std::pair<TimePoint, std::shared_ptr<Pool>>> order;
  for (auto& p : all()) order.emplace_back(p->oldestWaiter().value_or(TimePoint::max()), p);
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [since, p] : order) p->janitor(t);
}

bool PoolRegistry::tryTakeLoginSlot(const std::string& db, int limit) {
  std::lock_guard lock(budget_mu_);
  int& n = logins_[db];
  if (limit > 0 && n >= limit) return false;
  ++n;
  return true;
}

void PoolRegistry::releaseLoginSlot(const std::string& db) {
  std::lock_guard lock(budget_mu_);
  --logins_[db];
}

std::optional<TimePoint> PoolRegistry::oldestBlockedWaiter(const std::string& db,
                                                           const std::string& user,
                                                           const Pool* except) {
  std::optional<TimePoint> best;
  for (auto& p : all()) {
    if (p.get() == except || (p->database() != db && p->user() != user)) continue;
    auto since = p->oldestBlockedWaiter();
    if (since && (!best || *since < *best)) best = since;
  }
  return best;
}

void PoolRegistry::growLongestWaiting(const std::string& db, const std::string& user) {
  std::shared_ptr<Pool> best;
  TimePoint best_since = TimePoint::max();
  for (auto& p : all()) {
    if (p->database() != db && p->user() != user) continue;
    auto since = p->oldestWaiter();
    if (since && *since < best_since) {
      best_since = *since;
      best = p;
    }
  }
  if (best) best->grow();
}

bool PoolRegistry::tryTakeBudget(const std::string& db, const std::string& user, int max_db,
                                 int max_user) {
  std::lock_guard lock(budget_mu_);
  int& d = db_used_[db];
  int& u = user_used_[user];
  if (max_db > 0 && d >= max_db) return false;
  if (max_user > 0 && u >= max_user) return false;
  ++d;
  ++u;
  return true;
}

void PoolRegistry::releaseBudget(const std::string& db, const std::string& user) {
  std::lock_guard lock(budget_mu_);
  --db_used_[db];
  --user_used_[user];
}

void PoolRegistry::evictIdleFor(const std::string& db, const std::string& user,
                                const Pool* except) {
  for (auto& p : all()) {
    bool shares = (!db.empty() && p->database() == db) || (!user.empty() && p->user() == user);
    if (p.get() == except || !shares) continue;
    if (p->closeOneIdle("freeing a shared max_db_connections/max_user_connections slot")) return;
  }
}

}  // namespace sluice::pool
