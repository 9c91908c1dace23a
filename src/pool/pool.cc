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

bool Pool::mayOpenLocked(bool reserve) {
  if (paused_) return false;
  int limit = settings_.pool_size + (reserve ? settings_.reserve_pool_size : 0);
  if (total_ >= limit) return false;
  if (now() < retry_at_) return false;
  if (registry_->tryTakeBudget(database_, user_, settings_.max_db_connections,
                               settings_.max_user_connections)) {
    return true;
  }
  budget_blocked_ = true;
  return false;
}

void Pool::growLocked(net::EventLoop* loop, bool reserve) {
  // One connect per waiter not already covered by a login in flight, at most
  // server_connect_parallelism logins at once (no login storms against PostgreSQL).
  while (int(waiters_.size()) > login_ && login_ < settings_.server_connect_parallelism &&
         mayOpenLocked(reserve)) {
    launchConnectLocked(loop ? loop : loops_[next_loop_++ % loops_.size()]);
  }
}

void Pool::launchConnectLocked(net::EventLoop* loop) {
  ++total_;
  ++login_;
  ++current_generation_;
  ServerLogin login = settings_.login;
  login.scram_client_key = scram_client_key_;
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
  if (!paused_ && !local.empty() && waiters_.empty()) {
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
  uint64_t id = next_wait_id_++;
  waiters_.push(id, fair_key, now(), Waiter{client});
  if (waiters_.size() == 1 && !paused_) {
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
  server->detach(t);
  std::unique_lock lock(mu_);
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
  if (auto w = waiters_.pop()) {
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

void Pool::onServerClosed(ServerConn* server) {
  // Pools that share a max_db/max_user budget with this one pick up the freed slot at the next
  // janitor tick (every 100 ms).
  std::lock_guard lock(mu_);
  {
    --total_;
    if (server->generation == generation_) --current_generation_;
    for (auto& list : idle_) {
      auto it = std::find_if(list.begin(), list.end(),
                             [server](const auto& s) { return s.get() == server; });
      if (it != list.end()) {
        list.erase(it);
        --idle_count_;
        break;
      }
    }
    registry_->releaseBudget(database_, user_);
    // Whoever waits gets a fresh connect in place of the one that closed.
    growLocked(server->loop(), false);
  }
}

void Pool::onLoginDone(const std::shared_ptr<ServerConn>& server, Status st,
                       const std::string& sqlstate) {
  std::vector<std::shared_ptr<PoolClient>> to_fail;
  ErrorInfo err;
  {
    std::lock_guard lock(mu_);
    --login_;
    if (st) {
      login_failures_ = 0;
      retry_at_ = {};
      if (!has_welcome_) {
        welcome_ = server->welcome();
        welcome_tracked_ = server->tracked();
        has_welcome_ = true;
      } else if (server->tracked() == welcome_tracked_) {
        server->adoptTracked(welcome_tracked_);  // one shared set for the pool's usual values
      }
    } else {
      shard(server->loop()->index()).server_login_failures.add();
      ++login_failures_;
      last_login_error_ = st.message();
      last_login_sqlstate_ = sqlstate;
      last_login_error_at_ = now();
      SLOG_WARN("pool {}: server login failed: {}", name(), st.message());
      // A refusal that retrying cannot fix (bad password, no such database or role) goes to
      // every waiting client now; anything else is retried with backoff while they wait.
      bool permanent = sqlstate.rfind("28", 0) == 0 || sqlstate == "3D000" || sqlstate == "42501" ||
                       sqlstate == "0A000";
      if (permanent) {
        while (auto w = waiters_.pop()) to_fail.push_back(std::move(w->value.client));
        err.severity = "FATAL";
        err.sqlstate = sqlstate;
        err.message = fmt::format("sluice: could not log in to the server for pool {}: {}", name(),
                                  st.message());
      } else {
        auto backoff = std::min<long long>(settings_.server_login_retry.count(),
                                           100LL << std::min(login_failures_, 10));
        retry_at_ = now() + Millis(backoff);
      }
    }
  }
  if (!to_fail.empty()) failWaiters(std::move(to_fail), err);
  if (st) {
    SLOG_INFO("{} new server connection", server->describe());
    release(server);
    // Logins were capped by server_connect_parallelism: start the next ones for who still waits.
    std::lock_guard lock(mu_);
    growLocked(server->loop(), false);
  }
}

void Pool::failWaiters(std::vector<std::shared_ptr<PoolClient>> clients, const ErrorInfo& e) {
  for (auto& c : clients) {
    c->clientLoop()->post([c, e] { c->onAcquireFailed(e); });
  }
}

std::string Pool::saturationMessageLocked() const {
  int idle = idle_count_;
  int active = total_ - idle - login_;
  return fmt::format("{} of {} in use, {} logging in, {} waiting", active, settings_.pool_size,
                     login_, waiters_.size());
}

void Pool::janitor(TimePoint t) {
  std::vector<std::shared_ptr<ServerConn>> to_close;
  std::vector<std::shared_ptr<PoolClient>> timed_out;
  ErrorInfo timeout_err;
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
    // Grow: one connect per waiter not yet covered; the reserve pool after its timeout.
    if (!waiters_.empty()) {
      bool reserve = !waiters_.arrivedBefore(t - settings_.reserve_pool_timeout).empty();
      growLocked(nullptr, reserve);
    }
    // Keep min_pool_size open.
    while (total_ < settings_.min_pool_size && login_ < settings_.server_connect_parallelism &&
           mayOpenLocked(false)) {
      launchConnectLocked(loops_[next_loop_++ % loops_.size()]);
    }
  }
  for (auto& s : to_close) {
    s->loop()->post([s] { s->close("server_idle_timeout, server_lifetime or pool resize"); });
  }
  if (!timed_out.empty()) failWaiters(std::move(timed_out), timeout_err);
  bool blocked = false;
  bool by_db = false;
  bool by_user = false;
  {
    std::lock_guard lock(mu_);
    blocked = budget_blocked_ && !waiters_.empty();
    budget_blocked_ = false;
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
  return {login_failures_, last_login_error_, last_login_error_at_};
}

}  // namespace sluice::pool
