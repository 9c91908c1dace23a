#include "pool/pool.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "pool/pool_registry.h"
#include "protocol/sqlstate.h"

namespace sluice::pool {

using protocol::ErrorInfo;

Pool::Pool(PoolRegistry* registry, std::string database, std::string user, PoolSettings settings,
           const std::vector<net::EventLoop*>& loops)
    : registry_(registry),
      database_(std::move(database)),
      user_(std::move(user)),
      loops_(loops),
      settings_(std::move(settings)),
      idle_(loops.size()) {
  for (size_t i = 0; i < loops.size(); ++i) shards_.push_back(std::make_unique<PoolShard>());
  codel_.configure(settings_.codel_target, settings_.codel_interval);
  adaptive_.configure(settings_.min_pool_size, settings_.pool_size);
  budget_shared_.store(settings_.max_db_connections > 0 || settings_.max_user_connections > 0,
                       std::memory_order_relaxed);
  warmed_ = settings_.min_pool_size == 0;
}

std::optional<TimePoint> Pool::oldestBlockedWaiter() const {
  std::lock_guard lock(mu_);
  if (!budget_blocked_) return std::nullopt;
  return waiters_.oldest();
}

PoolSettings Pool::settings() const {
  std::lock_guard lock(mu_);
  return settings_;
}

void Pool::applySettings(PoolSettings settings) {
  std::lock_guard lock(mu_);
  bool login_changed = settings.login.host != settings_.login.host ||
                       settings.login.port != settings_.login.port ||
                       settings.login.dbname != settings_.login.dbname ||
                       settings.login.user != settings_.login.user;
  settings_ = std::move(settings);
  codel_.configure(settings_.codel_target, settings_.codel_interval);
  adaptive_.configure(settings_.min_pool_size, settings_.pool_size);
  budget_shared_.store(settings_.max_db_connections > 0 || settings_.max_user_connections > 0,
                       std::memory_order_relaxed);
  if (login_changed) {
    ++generation_;
    current_generation_ = 0;
  }
  // More room may let waiters in now; the janitor launches the connects.
}

protocol::TrackedSet Pool::welcomeTracked() const {
  std::lock_guard lock(mu_);
  return welcome_tracked_;
}

protocol::TrackedSet Pool::internTracked(const protocol::TrackedSet& set) {
  std::lock_guard lock(mu_);
  for (const auto& known : interned_tracked_) {
    if (known == set) return known;
  }
  if (interned_tracked_.size() < kMaxInternedTracked) interned_tracked_.push_back(set);
  return set;
}

std::vector<std::pair<std::string, std::string>> Pool::welcome() const {
  std::lock_guard lock(mu_);
  return welcome_;
}

bool Pool::hasWelcome() const {
  std::lock_guard lock(mu_);
  return has_welcome_;
}

void Pool::learnScramClientKey(const std::array<uint8_t, 32>& key) {
  std::lock_guard lock(mu_);
  scram_client_key_ = key;
}

void Pool::learnSecret(const std::string& secret) {
  std::lock_guard lock(mu_);
  learned_secret_ = secret;
}

bool Pool::mayOpenLocked(bool reserve) {
  if (paused_) return false;
  int limit = settings_.pool_size + (reserve ? settings_.reserve_pool_size : 0);
  if (total_ >= limit) return false;
  if (retry_at_ != TimePoint{} && now() < retry_at_) return false;
  // At most server_connect_parallelism logins in flight per database (no login storms).
  if (!registry_->tryTakeLoginSlot(database_, settings_.server_connect_parallelism)) return false;
  if (registry_->tryTakeBudget(database_, user_, settings_.max_db_connections,
                               settings_.max_user_connections)) {
    setBudgetBlockedLocked(false);
    return true;
  }
  registry_->releaseLoginSlot(database_);
  setBudgetBlockedLocked(true);
  return false;
}

void Pool::growLocked(net::EventLoop* loop, bool reserve) {
  // One connect per waiter not already covered by a login in flight. While the database is
  // down, only the janitor's probe connects.
  while (!down_ && int(waiters_.size()) > login_ && !probingLocked() && !atAdaptiveLimitLocked() &&
         mayOpenLocked(reserve)) {
    launchConnectLocked(loop ? loop : loops_[next_loop_++ % loops_.size()]);
  }
}

void Pool::grow() {
  std::lock_guard lock(mu_);
  growLocked(nullptr, false);
}

void Pool::keepMinimumLocked() {
  while (!down_ && total_ < settings_.min_pool_size && !probingLocked() && mayOpenLocked(false)) {
    launchConnectLocked(loops_[next_loop_++ % loops_.size()]);
  }
}

void Pool::backOffLocked() {
  // Exponential from 200 ms up to server_login_retry or kMaxLoginBackoff, whichever is less
  // (clients are waiting, or the pool is down and its clients fail until a login succeeds),
  // then "equal jitter": half of it fixed, half random, so that pools (and sluice instances)
  // that failed together retry apart.
  last_backoff_at_ = now();
  long long cap =
      std::clamp<long long>(settings_.server_login_retry.count(), 1, kMaxLoginBackoff.count());
  long long backoff = std::min<long long>(cap, 100LL << std::min(login_failures_, 10));
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  long long half = backoff / 2;
  retry_at_ = now() + Millis(half + (half > 0 ? (long long)(rng_ % uint64_t(half + 1)) : 0));
}

void Pool::setBudgetBlockedLocked(bool blocked) {
  if (blocked == budget_blocked_) return;
  budget_blocked_ = blocked;
  registry_->noteBudgetBlocked(blocked);
}

int Pool::maxPinnedServers() const {
  std::lock_guard lock(mu_);
  if (settings_.max_pinned_servers >= 0) return settings_.max_pinned_servers;
  return std::max(1, settings_.pool_size / 2);
}

bool Pool::tryPin() {
  int cap = maxPinnedServers();
  int cur = pinned_.load(std::memory_order_relaxed);
  while (cur < cap) {
    if (pinned_.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed)) return true;
  }
  return false;
}

void Pool::serveWithinLimitLocked(
    std::vector<std::pair<std::shared_ptr<PoolClient>, std::shared_ptr<ServerConn>>>& out) {
  while (!paused_ && !waiters_.empty() && idle_count_ > 0 && activeLocked() < adaptive_.limit()) {
    std::shared_ptr<ServerConn> s;
    for (auto& list : idle_) {
      if (list.empty()) continue;
      s = std::move(list.back());
      list.pop_back();
      break;
    }
    --idle_count_;
    auto w = waiters_.pop(codel_.standing());
    // Its own loop marks it kMigrating or kActive when it hands it over (see deliver()).
    s->setState(ServerConn::State::kMigrating);
    out.emplace_back(std::move(w->value.client), std::move(s));
  }
}

void Pool::forgetIdle(ServerConn* server) {
  std::lock_guard lock(mu_);
  removeIdleLocked(server);
}

void Pool::removeIdleLocked(ServerConn* server) {
  for (auto& list : idle_) {
    auto it = std::find_if(list.begin(), list.end(),
                           [server](const auto& s) { return s.get() == server; });
    if (it != list.end()) {
      list.erase(it);
      --idle_count_;
      return;
    }
  }
}

void Pool::setHolders(std::string holders) {
  std::lock_guard lock(mu_);
  holders_ = std::move(holders);
}

std::optional<TimePoint> Pool::oldestWaiter() const {
  std::lock_guard lock(mu_);
  return waiters_.oldest();
}

void Pool::launchConnectLocked(net::EventLoop* loop) {
  ++total_;
  ++login_;
  ++current_generation_;
  ServerLogin login = settings_.login;
  login.scram_client_key = scram_client_key_;
  if (login.secret.empty()) login.secret = learned_secret_;
  auto server = std::make_shared<ServerConn>(this, loop, registry_->nextServerId());
  server->generation = generation_;
  auto self = shared_from_this();
  loop->post([self, server, login = std::move(login)]() mutable {
    self->shard(server->loop()->index()).server_connects.add();
    server->connect(login, [self, server](Status st, std::string sqlstate) {
      self->onLoginDone(server, std::move(st), sqlstate);
    });
  });
}

Pool::AcquireResult Pool::acquire(const std::shared_ptr<PoolClient>& client,
                                  const std::string& fair_key) {
  net::EventLoop* loop = client->clientLoop();
  std::unique_lock lock(mu_);
  auto& local = idle_[loop->index()];
  if (!paused_ && !local.empty() && waiters_.empty() &&
      (!settings_.adaptive || activeLocked() < adaptive_.limit())) {
    // Most recently used first, so surplus servers age out; server_round_robin spreads the
    // load over all of them instead.
    std::shared_ptr<ServerConn> s;
    if (settings_.server_round_robin) {
      s = std::move(local.front());
      local.erase(local.begin());
    } else {
      s = std::move(local.back());
      local.pop_back();
    }
    --idle_count_;
    s->setState(ServerConn::State::kActive);
    return {std::move(s), 0};
  }
  if (settings_.max_waiting_clients > 0 && int(waiters_.size()) >= settings_.max_waiting_clients) {
    ErrorInfo e;
    e.sqlstate = sqlstate::kTooManyConnections;
    e.message = fmt::format("sluice: pool {} is saturated: {} (max_waiting_clients = {})", name(),
                            saturationMessageLocked(), settings_.max_waiting_clients);
    e.hint =
        "retry later; raise pool_size or max_waiting_clients, or shorten what holds the servers "
        "(SHOW HOLDERS names the clients)";
    lock.unlock();
    failWaiters({client}, e, stats::CloseReason::kPoolSaturated);
    return {nullptr, 0};
  }
  uint64_t id = next_wait_id_++;
  waiters_.push(id, fair_key, now(), Waiter{client});
  if (waiters_.size() == 1 && !paused_ &&
      (!settings_.adaptive || activeLocked() < adaptive_.limit())) {
    // Nobody was ahead: take an idle server on another loop, or grow the pool.
    for (size_t i = 0; i < idle_.size(); ++i) {
      if (idle_[i].empty()) continue;
      auto s = std::move(idle_[i].back());
      idle_[i].pop_back();
      --idle_count_;
      waiters_.remove(id);
      // Its own loop marks it kMigrating when it detaches it (see deliver()).
      lock.unlock();
      deliver(client, std::move(s));
      return {nullptr, id};
    }
  }
  if (down_) {
    // Server logins keep failing: a retryable error now beats waiting out query_wait_timeout.
    waiters_.remove(id);
    ErrorInfo e = unreachableErrorLocked();
    lock.unlock();
    failWaiters({client}, e, stats::CloseReason::kDatabaseUnavailable);
    return {nullptr, 0};
  }
  // One connect per waiter beyond what is already logging in.
  growLocked(loop, false);
  return {nullptr, id};
}

bool Pool::cancelWait(uint64_t wait_id) {
  std::lock_guard lock(mu_);
  return waiters_.remove(wait_id).has_value();
}

// Hands `server` to `client`. Runs on the server's loop, or on any thread for a server in
// kMigrating that sits in no list (then the move is posted to its loop first).
void Pool::deliver(std::shared_ptr<PoolClient> client, std::shared_ptr<ServerConn> server) {
  net::EventLoop* target = client->clientLoop();
  net::EventLoop* from = server->loop();
  if (from == target) {
    target->post([client = std::move(client), server = std::move(server)]() mutable {
      if (server->state() != ServerConn::State::kClosed) {
        server->setState(ServerConn::State::kActive);
      }
      client->onServerAssigned(std::move(server));
    });
    return;
  }
  from->post([this, client = std::move(client), server = std::move(server), target]() mutable {
    if (server->writeInFlight()) {
      // A completed write's handler is still queued on this loop; move after it has run.
      deliver(std::move(client), std::move(server));
      return;
    }
    if (server->state() != ServerConn::State::kClosed) server->detachFromLoop();
    target->post([client = std::move(client), server = std::move(server), target]() mutable {
      if (server->state() != ServerConn::State::kClosed) server->attachToLoop(target);
      client->onServerAssigned(std::move(server));
    });
  });
}

void Pool::release(std::shared_ptr<ServerConn> server, TimePoint t) {
  // A client's lease ends here (not a fresh login's or a reset's): attach() stamped its start.
  TimePoint leased = server->attached() ? server->lastUsed() : TimePoint{};
  server->detach(t);
  // A budget shared with other pools: a client of another pool that has waited longer than
  // anyone here gets this slot (the server closes, that pool connects). Looked up before taking
  // mu_, since it locks the other pools.
  std::optional<TimePoint> elsewhere;
  if (budget_shared_.load(std::memory_order_relaxed) && registry_->anyBudgetBlocked()) {
    elsewhere = registry_->oldestBlockedWaiter(database_, user_, this);
  }
  std::unique_lock lock(mu_);
  if (settings_.adaptive && leased != TimePoint{}) {
    adaptive_.sample(t, std::chrono::duration<double>(t - leased).count(), activeLocked());
  }
  if (elsewhere) {
    auto mine = waiters_.oldest();
    if (!mine || *elsewhere < *mine) {
      lock.unlock();
      server->close("its shared budget slot goes to a pool whose client waited longer");
      return;
    }
  }
  bool too_old =
      settings_.server_lifetime.count() > 0 && t - server->createdAt() >= settings_.server_lifetime;
  bool stale = server->generation < generation_;
  if (too_old || stale || paused_ || total_ > settings_.pool_size + settings_.reserve_pool_size) {
    lock.unlock();
    server->close(too_old   ? "server_lifetime reached"
                  : stale   ? "pool reconfigured"
                  : paused_ ? "pool paused"
                            : "pool shrank");
    return;
  }
  bool within_limit = !settings_.adaptive || activeLocked() <= adaptive_.limit();
  if (auto w = within_limit ? waiters_.pop(codel_.standing()) : std::nullopt) {
    codel_.sample(t, std::chrono::duration_cast<Millis>(t - w->since));
    if (waiters_.empty()) codel_.onEmpty();
    server->setState(ServerConn::State::kMigrating);
    lock.unlock();
    deliver(std::move(w->value.client), std::move(server));
    return;
  }
  server->setState(ServerConn::State::kIdle);
  idle_[server->loop()->index()].push_back(server);
  ++idle_count_;
  lock.unlock();
  server->startIdleWatch();
}

void Pool::resetAndRelease(std::shared_ptr<ServerConn> server, bool full) {
  std::string sql;
  {
    std::lock_guard lock(mu_);
    sql = settings_.server_reset_query;
  }
  server->detach();
  std::string then;  // a second query, run after `sql` succeeded
  if (full && protocol::inspectSql(sql).command != protocol::SqlCommand::kDiscardAll) {
    (sql.empty() ? sql : then) = "DISCARD ALL";
  }
  if (sql.empty()) {
    release(std::move(server));
    return;
  }
  auto self = shared_from_this();
  auto finish = [self, server](Status st, const std::string& ran) {
    if (!st) {
      server->close("server_reset_query failed: " + st.message());
      return false;
    }
    if (protocol::deallocatesAll(ran)) server->statements().forgetAll();
    // The tracked parameters PostgreSQL reports came back with ParameterStatus; search_path is
    // known only from what the reset ran.
    switch (protocol::searchPathAfter(ran)) {
      case protocol::SearchPathAfter::kUnchanged:
        break;
      case protocol::SearchPathAfter::kDefault:
        server->setTracked(protocol::kSearchPathSlot, protocol::kSearchPathDefault);
        break;
      case protocol::SearchPathAfter::kChanged:
        server->setTracked(protocol::kSearchPathSlot, protocol::kSearchPathUnknown);
        break;
    }
    return true;
  };
  server->runInternal(sql, [self, server, sql, then, finish](Status st) {
    if (!finish(st, sql)) return;
    if (then.empty()) {
      self->release(server);
      return;
    }
    server->runInternal(then, [self, server, then, finish](Status st2) {
      if (finish(st2, then)) self->release(server);
    });
  });
}

void Pool::rollbackAndRelease(std::shared_ptr<ServerConn> server, bool then_reset) {
  server->detach();
  auto self = shared_from_this();
  server->runInternal("ROLLBACK", [self, server, then_reset](Status st) {
    if (!st) {
      server->close("ROLLBACK after idle_transaction_timeout failed: " + st.message());
    } else if (then_reset) {
      self->resetAndRelease(server);
    } else {
      self->release(server);
    }
  });
}

void Pool::onServerClosed(ServerConn* server) {
  bool shared = false;
  {
    std::lock_guard lock(mu_);
    --total_;
    if (server->generation == generation_) --current_generation_;
    removeIdleLocked(server);  // if it was idle (close() usually took it out already)
    registry_->releaseBudget(database_, user_);
    shared = settings_.max_db_connections > 0 || settings_.max_user_connections > 0;
    // Whoever waits gets a fresh connect in place of the one that closed; a slot of a budget
    // shared with other pools goes to the pool whose client has waited longest (below).
    if (!shared) growLocked(server->loop(), false);
  }
  if (shared) registry_->growLongestWaiting(database_, user_);
}

void Pool::onLoginDone(const std::shared_ptr<ServerConn>& server, Status st,
                       const std::string& sqlstate) {
  std::vector<std::shared_ptr<PoolClient>> to_fail;
  ErrorInfo err;
  stats::CloseReason fail_reason = stats::CloseReason::kServerLoginFailed;
  registry_->releaseLoginSlot(database_);
  {
    std::lock_guard lock(mu_);
    --login_;
    if (st) {
      if (down_) {
        SLOG_INFO(
            "pool {}: server login succeeded after {} failures; the database is reachable "
            "again",
            name(), unreachable_failures_);
      }
      login_failures_ = 0;
      unreachable_failures_ = 0;
      last_failure_busy_ = false;
      down_ = false;
      retry_at_ = {};
      if (!has_welcome_) {
        welcome_ = server->welcome();
        welcome_tracked_ = server->tracked();
        has_welcome_ = true;
      } else if (server->tracked() == welcome_tracked_) {
        server->adoptTracked(welcome_tracked_);  // one shared set for the pool's usual values
      }
      if (total_ - login_ >= settings_.min_pool_size) warmed_ = true;
    } else {
      shard(server->loop()->index()).server_login_failures.add();
      if (server->createdAt() >= last_backoff_at_) ++login_failures_;
      last_login_error_ = st.message();
      last_login_sqlstate_ = sqlstate;
      last_login_error_at_ = now();
      SLOG_WARN("pool {}: server login failed: {}", name(), st.message());
      // A refusal that retrying cannot fix (bad password, no such database or role) goes to
      // every waiting client now; anything else is retried with backoff while they wait.
      bool permanent = sqlstate.rfind("28", 0) == 0 || sqlstate == "3D000" || sqlstate == "42501" ||
                       sqlstate == "0A000";
      last_failure_busy_ = sqlstate == sqlstate::kTooManyConnections;
      if (permanent) {
        while (auto w = waiters_.pop()) to_fail.push_back(std::move(w->value.client));
        err.severity = "FATAL";
        err.sqlstate = sqlstate;
        err.message = fmt::format("sluice: could not log in to the server for pool {}: {}", name(),
                                  st.message());
      } else {
        // Logins launched together fail together: one backoff step per round, not per login.
        if (server->createdAt() >= last_backoff_at_) backOffLocked();
        // PostgreSQL is full (53300: too many clients, or the rest is reserved): it is up, and
        // servers come back as their clients finish, so the clients keep waiting. Anything
        // else, several times in a row, means the database cannot be reached: say so now
        // rather than at query_wait_timeout.
        if (!last_failure_busy_) {
          if (unreachable_failures_++ == 0) down_since_ = std::chrono::system_clock::now();
          if (unreachable_failures_ >= kDownAfterFailures) {
            if (!down_) {
              SLOG_WARN(
                  "pool {}: {} server logins failed in a row; failing waiting and new "
                  "clients fast until a login succeeds",
                  name(), unreachable_failures_);
            }
            down_ = true;
            while (auto w = waiters_.pop()) to_fail.push_back(std::move(w->value.client));
            err = unreachableErrorLocked();
            fail_reason = stats::CloseReason::kDatabaseUnavailable;
          }
        }
      }
    }
  }
  if (!to_fail.empty()) failWaiters(std::move(to_fail), err, fail_reason);
  if (st) {
    SLOG_INFO("{} new server connection{}", server->describe(),
              server->tlsDescription().empty() ? "" : " (" + server->tlsDescription() + ")");
    release(server);
    // Logins were capped by server_connect_parallelism: start the next ones for who still waits.
    std::lock_guard lock(mu_);
    growLocked(server->loop(), false);
    keepMinimumLocked();
  }
}

ErrorInfo Pool::unreachableErrorLocked() const {
  ErrorInfo e;
  e.severity = "FATAL";
  e.sqlstate = sqlstate::kConnectionFailure;
  const ServerLogin& l = settings_.login;
  e.message = fmt::format(
      "sluice: database {} on {}:{} is unreachable since {}: {} server logins failed in a row, the "
      "last: {}",
      l.dbname, l.host.empty() ? l.unix_dir : l.host, l.port, isoTimestamp(down_since_),
      unreachable_failures_, last_login_error_);
  e.hint =
      "retry later: sluice keeps trying in the background and serves clients again after the "
      "first login that succeeds (/readyz says when)";
  return e;
}

void Pool::failWaiters(std::vector<std::shared_ptr<PoolClient>> clients, const ErrorInfo& e,
                       stats::CloseReason reason) {
  for (auto& c : clients) {
    c->clientLoop()->post([c, e, reason] { c->onAcquireFailed(e, reason); });
  }
}

std::string Pool::saturationMessageLocked() const {
  int idle = idle_count_;
  int active = total_ - idle - login_;
  std::string out = fmt::format("{} of {} in use, {} logging in, {} waiting", active,
                                settings_.pool_size, login_, waiters_.size());
  if (!holders_.empty()) out += "; held by application_name " + holders_;
  return out;
}

void Pool::janitor(TimePoint t) {
  std::vector<std::shared_ptr<ServerConn>> to_close;
  std::vector<std::shared_ptr<PoolClient>> timed_out;
  std::vector<std::shared_ptr<PoolClient>> shed;
  std::vector<std::pair<std::shared_ptr<PoolClient>, std::shared_ptr<ServerConn>>> handovers;
  ErrorInfo timeout_err;
  ErrorInfo shed_err;
  {
    std::lock_guard lock(mu_);
    // Idle servers past server_idle_timeout or server_lifetime, or beyond a shrunken pool.
    for (auto& list : idle_) {
      for (auto it = list.begin(); it != list.end();) {
        auto& s = *it;
        bool idle_out = settings_.server_idle_timeout.count() > 0 &&
                        t - s->lastUsed() >= settings_.server_idle_timeout &&
                        total_ - int(to_close.size()) > settings_.min_pool_size;
        bool too_old = settings_.server_lifetime.count() > 0 &&
                       t - s->createdAt() >= settings_.server_lifetime;
        bool excess = total_ - int(to_close.size()) > settings_.pool_size;
        if (idle_out || too_old || excess || paused_ || s->generation < generation_) {
          to_close.push_back(std::move(s));
          it = list.erase(it);
          --idle_count_;
        } else {
          ++it;
        }
      }
    }
    // Waiters past query_wait_timeout.
    if (settings_.query_wait_timeout.count() > 0) {
      auto ids = waiters_.arrivedBefore(t - settings_.query_wait_timeout);
      if (!ids.empty()) {
        timeout_err.sqlstate = sqlstate::kQueryCanceled;
        timeout_err.message = fmt::format(
            "sluice: no server connection within query_wait_timeout ({} s) for pool {}: {}",
            settings_.query_wait_timeout.count() / 1000.0, name(), saturationMessageLocked());
        if (!last_login_error_.empty() && login_failures_ > 0) {
          timeout_err.detail = "last server login error: " + last_login_error_;
        }
        timeout_err.hint =
            "raise pool_size or query_wait_timeout, or find who holds the connections "
            "(SHOW CLIENTS, SHOW SERVERS)";
        for (auto id : ids) {
          if (auto w = waiters_.remove(id)) timed_out.push_back(std::move(w->value.client));
        }
      }
    }
    // CoDel: a queue whose oldest client has waited past the target for an interval stands
    // as much as one whose served clients all did. While it stands, waiters older than
    // codel_deadline fail now (53300, retryable) and the newest are served first (release()).
    if (auto oldest = waiters_.oldest()) {
      codel_.sample(t, std::chrono::duration_cast<Millis>(t - *oldest));
    } else {
      codel_.onEmpty();
    }
    if (codel_.standing() && settings_.codel_deadline.count() > 0) {
      auto ids = waiters_.arrivedBefore(t - settings_.codel_deadline);
      if (!ids.empty()) {
        shed_err.sqlstate = sqlstate::kTooManyConnections;
        shed_err.message = fmt::format(
            "sluice: pool {} is overloaded: its wait queue has stood above codel_target ({} ms) "
            "for codel_interval ({} ms), so clients waiting longer than codel_deadline ({} ms) "
            "are turned away while newer ones are served: {}",
            name(), settings_.codel_target.count(), settings_.codel_interval.count(),
            settings_.codel_deadline.count(), saturationMessageLocked());
        shed_err.hint =
            "retry later; raise pool_size, or shorten what holds the servers (SHOW HOLDERS names "
            "the clients)";
        for (auto id : ids) {
          if (auto w = waiters_.remove(id)) shed.push_back(std::move(w->value.client));
        }
      }
    }
    // The adaptive limit rose, or servers went idle above it: idle servers go to waiters.
    if (settings_.adaptive) serveWithinLimitLocked(handovers);
    // Grow: one connect per waiter not yet covered; the reserve pool after its timeout.
    if (!waiters_.empty()) {
      bool reserve = !waiters_.arrivedBefore(t - settings_.reserve_pool_timeout).empty();
      growLocked(nullptr, reserve);
    }
    keepMinimumLocked();
    // While the database is down nobody waits, so the janitor probes it: one login at a time,
    // after the backoff.
    if (down_ && login_ == 0 && mayOpenLocked(false)) {
      launchConnectLocked(loops_[next_loop_++ % loops_.size()]);
    }
  }
  for (auto& s : to_close) {
    s->loop()->post([s] { s->close("server_idle_timeout, server_lifetime or pool resize"); });
  }
  if (!timed_out.empty()) {
    failWaiters(std::move(timed_out), timeout_err, stats::CloseReason::kQueryWaitTimeout);
  }
  if (!shed.empty()) failWaiters(std::move(shed), shed_err, stats::CloseReason::kOverloadShed);
  for (auto& [client, server] : handovers) deliver(std::move(client), std::move(server));
  bool blocked = false;
  bool by_db = false;
  bool by_user = false;
  {
    std::lock_guard lock(mu_);
    blocked = budget_blocked_ && !waiters_.empty();
    if (waiters_.empty()) setBudgetBlockedLocked(false);  // else until a connect gets a slot
    by_db = settings_.max_db_connections > 0;
    by_user = settings_.max_user_connections > 0;
  }
  // Clients wait on a full max_db_connections/max_user_connections budget while another pool
  // that shares it sits on idle servers: close one of those so the slot comes here.
  if (blocked) registry_->evictIdleFor(by_db ? database_ : "", by_user ? user_ : "", this);
}

bool Pool::closeOneIdle(const std::string& reason) {
  std::shared_ptr<ServerConn> victim;
  {
    std::lock_guard lock(mu_);
    for (auto& list : idle_) {
      if (list.empty()) continue;
      // The front of each list is the least recently used.
      if (!victim || list.front()->lastUsed() < victim->lastUsed()) victim = list.front();
    }
    if (!victim) return false;
    auto& list = idle_[victim->loop()->index()];
    list.erase(list.begin());
    --idle_count_;
  }
  victim->loop()->post([victim, reason] { victim->close(reason); });
  return true;
}

void Pool::closeIdle(const std::string& reason) {
  std::vector<std::shared_ptr<ServerConn>> to_close;
  {
    std::lock_guard lock(mu_);
    ++generation_;
    current_generation_ = 0;
    for (auto& list : idle_) {
      for (auto& s : list) to_close.push_back(std::move(s));
      list.clear();
    }
    idle_count_ = 0;
  }
  for (auto& s : to_close) s->loop()->post([s, reason] { s->close(reason); });
}

PoolStats Pool::stats() const {
  std::lock_guard lock(mu_);
  PoolStats st;
  st.database = database_;
  st.user = user_;
  st.mode = settings_.mode;
  st.pool_size = settings_.pool_size;
  st.total = total_;
  st.idle = idle_count_;
  st.login = login_;
  st.active = total_ - idle_count_ - login_;
  st.waiting = int(waiters_.size());
  st.clients = clients_.load(std::memory_order_relaxed);
  if (auto o = waiters_.oldest()) st.max_wait_s = secondsSince(*o);
  st.paused = paused_;
  st.stale = total_ - current_generation_;
  st.warming = !warmed_ && settings_.min_pool_size > 0;
  st.standing = codel_.standing();
  st.down = down_;
  st.limit = settings_.adaptive ? adaptive_.limit() : settings_.pool_size;
  return st;
}

void Pool::setPaused(bool paused) {
  std::vector<std::shared_ptr<ServerConn>> to_close;
  {
    std::lock_guard lock(mu_);
    if (paused_ == paused) return;
    paused_ = paused;
    if (paused) {
      for (auto& list : idle_) {
        for (auto& s : list) to_close.push_back(std::move(s));
        list.clear();
      }
      idle_count_ = 0;
    } else {
      growLocked(nullptr, false);  // the clients that queued meanwhile
    }
  }
  for (auto& s : to_close) s->loop()->post([s] { s->close("pool paused"); });
}

Pool::LoginHealth Pool::loginHealth() const {
  std::lock_guard lock(mu_);
  return {login_failures_, last_login_error_, last_login_error_at_, last_failure_busy_, down_};
}

}  // namespace sluice::pool
