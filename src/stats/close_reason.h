// Why a client connection closed: one table gives each reason its enum, its log token (also the
// metric label of sluice_client_disconnects_total) and the SQLSTATE the client is sent ("" when
// the client is not told anything). Constants only; thread-safe.
#pragma once

#include <cstddef>

namespace sluice::stats {

// X(enum, token, sqlstate, timeout): `timeout` is the kind label of sluice_pool_timeouts_total
// for the reasons that are a timeout expiring, "" for the others.
#define SLUICE_CLOSE_REASONS(X)                                                                \
  X(kClientTerminate, "client_terminate", "", "") /* the client sent Terminate */              \
  X(kClientEof, "client_eof", "", "")             /* the client went away */                   \
  X(kClientIoError, "client_io_error", "", "")    /* reading or writing failed */              \
  X(kCancelRequest, "cancel_request", "", "")     /* a CancelRequest connection */             \
  X(kTlsFailed, "tls_failed", "", "")             /* handshake or TLS error: no way to tell */ \
  X(kBadStartup, "bad_startup", "08P01", "")                                                   \
  X(kNoUser, "no_user", "28000", "")                                                           \
  X(kNotAllowed, "not_allowed", "28000", "")                                                   \
  X(kAuthFailed, "auth_failed", "28P01", "")                                                   \
  X(kAuthQueryFailed, "auth_query_failed", "08006", "") /* auth_user's lookup failed */        \
  X(kMaxPendingLogins, "max_pending_logins", "53300", "")                                      \
  X(kUnknownDatabase, "unknown_database", "3D000", "")                                         \
  X(kDatabaseDisabled, "database_disabled", "55000", "") /* DISABLE db */                      \
  X(kUnsupportedParameter, "unsupported_parameter", "0A000", "")                               \
  X(kMaxClientConn, "max_client_conn", "53300", "")                                            \
  X(kShuttingDown, "shutting_down", "57P03", "")                                               \
  X(kProtocolViolation, "protocol_violation", "08P01", "")                                     \
  X(kParameterSyncFailed, "parameter_sync_failed", "22023", "")                                \
  X(kTransactionInStatementMode, "transaction_in_statement_mode", "0A000", "")                 \
  X(kServerLost, "server_lost", "08006", "")                                                   \
  X(kServerLoginFailed, "server_login_failed", "08006",                                        \
    "") /* the server's own SQLSTATE, if any */                                                \
  X(kQueryWaitTimeout, "query_wait_timeout", "57014", "query_wait_timeout")                    \
  X(kPoolSaturated, "pool_saturated", "53300", "")             /* max_waiting_clients */       \
  X(kOverloadShed, "overload_shed", "53300", "codel_deadline") /* CoDel */                     \
  X(kDatabaseUnavailable, "database_unavailable", "08006", "") /* logins keep failing */       \
  X(kClientLoginTimeout, "client_login_timeout", "08P01", "client_login_timeout")              \
  X(kClientIdleTimeout, "client_idle_timeout", "57P05", "client_idle_timeout")                 \
  X(kQueryTimeout, "query_timeout", "57014", "query_timeout")                                  \
  X(kIdleTransactionTimeout, "idle_transaction_timeout", "25P03", "idle_transaction_timeout")  \
  X(kShutdown, "shutdown", "57P01", "")                                                        \
  X(kAdminKill, "admin_kill", "57P01", "")

enum class CloseReason : int {
#define SLUICE_X(e, token, state, timeout) e,
  SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
};

inline constexpr size_t kNumCloseReasons = 0
#define SLUICE_X(e, token, state, timeout) +1  // NOLINT(bugprone-macro-parentheses): a sum
    SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
    ;

inline const char* closeReasonToken(CloseReason r) {
  static constexpr const char* kTokens[] = {
#define SLUICE_X(e, token, state, timeout) token,
      SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
  };
  return kTokens[static_cast<int>(r)];
}

inline const char* closeReasonSqlstate(CloseReason r) {
  static constexpr const char* kStates[] = {
#define SLUICE_X(e, token, state, timeout) state,
      SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
  };
  return kStates[static_cast<int>(r)];
}

inline const char* closeReasonTimeout(CloseReason r) {
  static constexpr const char* kTimeouts[] = {
#define SLUICE_X(e, token, state, timeout) timeout,
      SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
  };
  return kTimeouts[static_cast<int>(r)];
}

}  // namespace sluice::stats
