// Session state that transaction pooling cannot carry (issue 4): which SQL in a Query or Parse
// text leaves something behind in the PostgreSQL session that the next transaction, on another
// server connection, would not find (a session advisory lock, LISTEN, a temporary table, a
// WITH HOLD cursor, an SQL-level prepared statement, a changed role). The session uses the answer
// to pin the client to its server or to refuse the query (`session_state`).
//
// Pure functions over a string, no state; thread-safe. inspectSessionState() runs on every Query
// and Parse in transaction and statement pooling, so it rejects ordinary SQL after one vectorized
// pass and a look at the first word; only candidates are lexed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sluice::protocol {

// X(enum, label, what): `label` is the `kind` label of sluice_pool_pins_total and what SHOW
// HOLDERS shows; `what` names the SQL in messages.
#define SLUICE_SESSION_STATES(X)                                                         \
  X(kAdvisoryLock, "advisory_lock", "a session advisory lock (pg_advisory_lock)")        \
  X(kListen, "listen", "LISTEN")                                                         \
  X(kTempTable, "temp_table", "a temporary table, view or sequence (CREATE TEMP)")       \
  X(kWithHold, "with_hold", "a cursor WITH HOLD (DECLARE ... WITH HOLD)")                \
  X(kSqlPrepare, "sql_prepare", "an SQL-level prepared statement (PREPARE name AS ...)") \
  X(kSessionAuthorization, "session_authorization",                                      \
    "a session role change (SET ROLE / SET SESSION AUTHORIZATION)")

enum class SessionState : uint8_t {
  kNone,  // nothing that outlives the transaction
#define SLUICE_X(e, label, what) e,
  SLUICE_SESSION_STATES(SLUICE_X)
#undef SLUICE_X
};

inline constexpr size_t kNumSessionStates = 0
#define SLUICE_X(e, label, what) +1  // NOLINT(bugprone-macro-parentheses): a sum
    SLUICE_SESSION_STATES(SLUICE_X)
#undef SLUICE_X
    ;

// Index 0 .. kNumSessionStates-1 of a state other than kNone (for arrays of counters).
inline size_t sessionStateIndex(SessionState s) { return size_t(s) - 1; }
const char* sessionStateLabel(SessionState s);  // "advisory_lock"; "" for kNone
const char* sessionStateWhat(SessionState s);   // "LISTEN"; "" for kNone

// The first session state `sql` (one or more statements) creates, or kNone. Case-insensitive;
// string literals (also E'' and dollar-quoted), quoted identifiers and comments never match.
// Recognized: pg_advisory_lock, pg_try_advisory_lock and their _shared variants anywhere (the
// _xact_ ones are transaction-scoped: not state); LISTEN; CREATE [OR REPLACE] [GLOBAL|LOCAL]
// TEMP|TEMPORARY ... unless ON COMMIT DROP; DECLARE ... WITH HOLD; PREPARE name [(types)] AS
// (not PREPARE TRANSACTION); SET [SESSION] ROLE and SET [SESSION] SESSION AUTHORIZATION (not
// SET LOCAL). Not seen: state created inside functions or DO blocks, SELECT ... INTO TEMP.
SessionState inspectSessionState(std::string_view sql);

}  // namespace sluice::protocol
