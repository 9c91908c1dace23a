// Why a client connection closed: one table gives each reason its enum, its log token (also the
// metric label of sluice_client_disconnects_total) and the SQLSTATE the client is sent ("" when
// the client is not told anything). Constants only; thread-safe.
#pragma once

#include <cstddef>

namespace sluice::stats {

// X(enum, token, sqlstate)
#define SLUICE_CLOSE_REASONS(X)                                                 \
  X(kClientTerminate, "client_terminate", "") /* the client sent Terminate */   \
  X(kClientEof, "client_eof", "")             /* the client went away */        \
  X(kClientIoError, "client_io_error", "")    /* reading or writing failed */   \
  X(kCancelRequest, "cancel_request", "")     /* a CancelRequest connection */  \
  X(kBadStartup, "bad_startup", "08P01")                                        \
  X(kNoUser, "no_user", "28000")                                                \
  X(kNotAllowed, "not_allowed", "28000")                                        \
  X(kAuthFailed, "auth_failed", "28P01")                                        \
  X(kUnknownDatabase, "unknown_database", "3D000")                              \
  X(kDatabaseDisabled, "database_disabled", "55000") /* DISABLE db */           \
  X(kUnsupportedParameter, "unsupported_parameter", "0A000")                    \
  X(kMaxClientConn, "max_client_conn", "53300")                                 \
  X(kShuttingDown, "shutting_down", "57P03")                                    \
  X(kProtocolViolation, "protocol_violation", "08P01")                          \
  X(kParameterSyncFailed, "parameter_sync_failed", "22023")                     \
  X(kTransactionInStatementMode, "transaction_in_statement_mode", "0A000")      \
  X(kServerLost, "server_lost", "08006")                                        \
  X(kNoServer, "no_server", "57014") /* query_wait_timeout or a failed login */ \
  X(kClientLoginTimeout, "client_login_timeout", "08P01")                       \
  X(kClientIdleTimeout, "client_idle_timeout", "57P05")                         \
  X(kQueryTimeout, "query_timeout", "57014")                                    \
  X(kIdleTransactionTimeout, "idle_transaction_timeout", "25P03")               \
  X(kShutdown, "shutdown", "57P01")                                             \
  X(kAdminKill, "admin_kill", "57P01")

enum class CloseReason : int {
#define SLUICE_X(e, token, state) e,
  SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
};

inline constexpr size_t kNumCloseReasons = 0
#define SLUICE_X(e, token, state) +1  // NOLINT(bugprone-macro-parentheses): a sum
    SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
    ;

inline const char* closeReasonToken(CloseReason r) {
  static constexpr const char* kTokens[] = {
#define SLUICE_X(e, token, state) token,
      SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
  };
  return kTokens[static_cast<int>(r)];
}

inline const char* closeReasonSqlstate(CloseReason r) {
  static constexpr const char* kStates[] = {
#define SLUICE_X(e, token, state) state,
      SLUICE_CLOSE_REASONS(SLUICE_X)
#undef SLUICE_X
  };
  return kStates[static_cast<int>(r)];
}

}  // namespace sluice::stats
