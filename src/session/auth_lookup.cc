#include "session/auth_lookup.h"

#include <fmt/format.h>

#include "common/log.h"
#include "protocol/sqlstate.h"

namespace sluice::session {

AuthLookup::AuthLookup(net::EventLoop* loop, std::shared_ptr<pool::Pool> pool, std::string query,
                       std::string user, Millis query_timeout, Done done)
    : loop_(loop),
      pool_(std::move(pool)),
      query_(std::move(query)),
      user_(std::move(user)),
      query_timeout_(query_timeout),
      done_(std::move(done)) {}

AuthLookup::~AuthLookup() = default;

void AuthLookup::start() { acquire(); }

void AuthLookup::acquire() {
  auto self = shared_from_this();  // the callbacks below may drop the owner's reference
  auto r = pool_->acquire(self, "auth_query");
  if (r.server) {
    onServerAssigned(std::move(r.server));
  } else {
    wait_id_ = r.wait_id;
  }
}

void AuthLookup::cancel() {
  if (finished_) return;
  finished_ = true;
  done_ = nullptr;
  if (wait_id_) pool_->cancelWait(wait_id_);
  wait_id_ = 0;
  if (timer_) loop_->cancelTimer(timer_);
  timer_ = 0;
  if (server_) {
    // Its query may still run: the server cannot go back before its ReadyForQuery.
    auto s = std::move(server_);
    s->close("the client left during its auth_query");
  }
}

void AuthLookup::onServerAssigned(std::shared_ptr<pool::ServerConn> server) {
  wait_id_ = 0;
  if (finished_) {
    if (server->state() != pool::ServerConn::State::kClosed) pool_->release(std::move(server));
    return;
  }
  if (server->state() == pool::ServerConn::State::kClosed || !server->looksAlive()) {
    if (server->state() != pool::ServerConn::State::kClosed) {
      server->close("found closed by the server when taken from the pool");
    }
    acquire();  // it died on the way; the pool gives another
    return;
  }
  server_ = std::move(server);
  auto self = shared_from_this();
  timer_ = loop_->runAfter(query_timeout_, [self] { self->onTimeout(); });
  server_->runInternalParams(query_, {user_}, [self](Status st) {
    if (self->finished_ || !self->server_) return;
    if (self->timer_) self->loop_->cancelTimer(self->timer_);
    self->timer_ = 0;
    auto server = std::move(self->server_);
    Outcome o;
    if (!st) {
      o.error.severity = "FATAL";
      o.error.sqlstate = sqlstate::kConnectionFailure;
      o.error.message = "sluice: auth_query failed: " + st.message();
      if (server->state() != pool::ServerConn::State::kClosed) {
        if (server->clean()) {
          self->pool_->release(std::move(server));
        } else {
          server->close("auth_query failed");
        }
      }
      self->finish(std::move(o));
      return;
    }
    const auto& row = server->internalRow();
    o.ok = true;
    // PgBouncer's shape: (user name, password); a one-column result is the password alone.
    if (row.size() >= 2) {
      o.secret = row[1];
    } else if (row.size() == 1) {
      o.secret = row[0];
    }
    if (o.secret && o.secret->empty()) o.secret.reset();  // an empty password logs in nobody
    if (server->state() != pool::ServerConn::State::kClosed) {
      self->pool_->release(std::move(server));
    }
    self->finish(std::move(o));
  });
}

void AuthLookup::onTimeout() {
  timer_ = 0;
  if (finished_ || !server_) return;
  auto server = std::move(server_);
  server->close("auth_query timed out");
  Outcome o;
  o.error.severity = "FATAL";
  o.error.sqlstate = sqlstate::kConnectionFailure;
  o.error.message = fmt::format(
      "sluice: auth_query did not answer within {} s (server_connect_timeout) on {}; check the "
      "auth_user's database or raise server_connect_timeout",
      query_timeout_.count() / 1000.0, pool_->name());
  finish(std::move(o));
}

void AuthLookup::onAcquireFailed(const protocol::ErrorInfo& error, stats::CloseReason reason) {
  wait_id_ = 0;
  if (finished_) return;
  Outcome o;
  o.error = error;
  o.error.severity = "FATAL";
  o.error.message = "sluice: auth_query could not get a connection as auth_user on " +
                    pool_->name() + ": " + error.message;
  o.reason = reason;
  finish(std::move(o));
}

void AuthLookup::finish(Outcome o) {
  if (finished_) return;
  finished_ = true;
  auto done = std::move(done_);
  done_ = nullptr;
  if (done) done(std::move(o));
}

}  // namespace sluice::session
