// AuthLookup: one auth_query run for one client login (auth_user + auth_query). It borrows a
// server of the auth user's pool (the client's database, or auth_dbname, as auth_user) like any
// client of that pool, runs auth_query through the extended protocol with the client's user name
// as $1, gives the server back and hands the secret to its callback. Borrowing from a pool means
// a login storm shares that pool's few connections (pool_size) instead of opening one per login,
// and waits in its queue under query_wait_timeout; the query itself has server_connect_timeout.
//
// Owned by shared_ptr (the ClientSession, and the pool's wait queue while it waits); lives on
// the client's loop and is touched only there; not thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/clock.h"
#include "net/event_loop.h"
#include "pool/pool.h"
#include "protocol/wire.h"
#include "stats/close_reason.h"

namespace sluice::session {

class AuthLookup : public pool::PoolClient, public std::enable_shared_from_this<AuthLookup> {
 public:
  struct Outcome {
    bool ok = false;                    // the query ran; `secret` says what it found
    std::optional<std::string> secret;  // nullopt: no row, or a NULL password (no such user)
    protocol::ErrorInfo error;          // when !ok: what to tell the client
    stats::CloseReason reason = stats::CloseReason::kAuthQueryFailed;
  };
  using Done = std::function<void(Outcome)>;

  AuthLookup(net::EventLoop* loop, std::shared_ptr<pool::Pool> pool, std::string query,
             std::string user, Millis query_timeout, Done done);
  ~AuthLookup() override;

  void start();
  // The client went away: stop waiting, give back or close the server, never call `done`.
  void cancel();

  // pool::PoolClient
  void onServerAssigned(std::shared_ptr<pool::ServerConn> server) override;
  void onAcquireFailed(const protocol::ErrorInfo& error, stats::CloseReason reason) override;
  net::EventLoop* clientLoop() const override { return loop_; }

 private:
  void acquire();
  void finish(Outcome o);
  void onTimeout();

  net::EventLoop* loop_;
  std::shared_ptr<pool::Pool> pool_;
  std::string query_;
  std::string user_;
  Millis query_timeout_;
  Done done_;
  uint64_t wait_id_ = 0;
  std::shared_ptr<pool::ServerConn> server_;
  net::EventLoop::TimerId timer_ = 0;
  bool finished_ = false;
};

}  // namespace sluice::session
