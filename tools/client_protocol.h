// ClientProtocol: the client end of one PostgreSQL connection as a pure state machine (startup,
// trust / cleartext / md5 / SCRAM-SHA-256 login, simple-protocol queries), for the tools
// (`sluice stress`, `sluice check`). No I/O: bytes received are fed in, bytes to send are
// appended to a string the caller writes. Owned by one connection and used from one thread (not
// thread-safe). Whatever the server sends is untrusted: malformed input fails the connection
// with a message, never crashes.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/auth_crypto.h"

namespace sluice::tools {

// Why a connection or a query failed. Server errors carry the server's SQLSTATE; failures
// found on the client side (I/O, timeout, protocol) have an empty sqlstate.
struct Failure {
  std::string sqlstate;
  std::string message;
  bool fatal = false;  // the connection cannot be used any more
};

struct QueryResult {
  std::vector<std::string> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;
  std::string command_tag;       // of the last statement that completed
  std::optional<Failure> error;  // an ErrorResponse ended the query
};

class ClientProtocol {
 public:
  struct Login {
    std::string user;
    // A plain password, or an md5 secret ("md5" + 32 hex, enough to answer md5 requests).
    // Empty: only trust works.
    std::string password;
    std::string database;
    std::vector<std::pair<std::string, std::string>> params;  // extra startup parameters
  };
  enum class State {
    kNew,        // start() not called yet
    kLoggingIn,  // startup sent, until the first ReadyForQuery
    kReady,      // idle: a query may be sent
    kBusy,       // a query is in flight, until its ReadyForQuery
    kFailed,     // see failure()
  };

  explicit ClientProtocol(Login login) : login_(std::move(login)) {}

  // Appends the StartupMessage.
  void start(std::string& out);
  // Consumes every complete message at the front of `in` (erasing it) and appends what must be
  // sent back to `out`. Moves to kReady after login or when a query's ReadyForQuery arrives, to
  // kFailed on a login error, a FATAL error or a protocol violation.
  void onData(std::string& in, std::string& out);
  // Appends a Query; only in kReady.
  void sendQuery(std::string_view sql, std::string& out);

  State state() const { return state_; }
  // Set in kFailed: a login ErrorResponse, a FATAL error (the server closes next, so what it
  // said is kept rather than the EOF that follows), a protocol violation, or onEof().
  const std::optional<Failure>& failure() const { return failure_; }
  // The last query's result (valid in kReady after a sendQuery).
  const QueryResult& result() const { return result_; }
  // Transaction status of the last ReadyForQuery: 'I', 'T' or 'E'.
  char transactionStatus() const { return tx_status_; }
  const std::vector<std::pair<std::string, std::string>>& parameters() const { return params_; }
  // The caller saw end-of-stream (or an I/O error, `why`): fails unless already failed.
  void onEof(std::string_view why = "server closed the connection");

 private:
  void fail(std::string sqlstate, std::string message);
  void handleAuth(std::string_view payload, std::string& out);
  void handleMessage(char type, std::string_view payload, std::string& out);

  Login login_;
  State state_ = State::kNew;
  std::optional<Failure> failure_;
  QueryResult result_;
  char tx_status_ = 'I';
  std::optional<protocol::ScramClient> scram_;
  std::vector<std::pair<std::string, std::string>> params_;
};

}  // namespace sluice::tools
