// Session state that transaction pooling cannot carry (issue 4): which SQL in a Query or Parse
// text leaves something behind in the PostgreSQL session that the next transaction, on another
// server connection, would not find (a session advisory lock, LISTEN, a temporary table, a
// WITH HOLD cursor, an SQL-level prepared statement, a changed role). The session uses the answer
// to pin the client to its server or to refuse the query (`session_state`). The same pass tells
// whether the text may change the session's search_path, which sluice then reads from the server
// and carries to the client's next servers (PostgreSQL 15 does not report it).
//
// Pure functions over a string, no state; thread-safe. inspectSessionEffects() runs on every
// Query and Parse in transaction and statement pooling, so it rejects ordinary SQL after one
// vectorized pass and a look at the first word; only candidates are lexed.
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

// What running a query text may leave in the session. Two bytes, returned in a register.
struct SessionEffects {
  SessionState state = SessionState::kNone;  // the first session state it creates
  // It may change the session-level search_path (SET [SESSION] search_path / SCHEMA, RESET
  // search_path, RESET ALL, DISCARD ALL, set_config() unless visibly transaction-local or of
  // another parameter, or a DO block mentioning search_path or set_config). A superset: the
  // session reads the value back from the server (SHOW search_path) after such a transaction.
  bool search_path = false;
};

// The effects of `sql` (one or more statements). Case-insensitive; string literals (also E''
// and dollar-quoted), quoted identifiers and comments never match, except in the body of a DO
// block. Session state recognized: pg_advisory_lock, pg_try_advisory_lock and their _shared
// variants anywhere (the _xact_ ones are transaction-scoped: not state); LISTEN; CREATE [OR
// REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ... unless ON COMMIT DROP; DECLARE ... WITH HOLD;
// PREPARE name [(types)] AS (not PREPARE TRANSACTION); SET [SESSION] ROLE and SET [SESSION]
// SESSION AUTHORIZATION (not SET LOCAL). A DO block's body (its string literals, nested quotes
// included) is searched word by word for the same things (lock function names, LISTEN, CREATE
// TEMP, WITH HOLD, PREPARE, SET ROLE / SESSION AUTHORIZATION) without regard to quoting or
// comments: a conservative check that may pin a block that only mentions them.
// Not seen: state created inside functions (called by name, their bodies are elsewhere),
// SELECT ... INTO TEMP, EXPLAIN ANALYZE CREATE TEMP TABLE ... AS.
SessionEffects inspectSessionEffects(std::string_view sql);
inline SessionState inspectSessionState(std::string_view sql) {
  return inspectSessionEffects(sql).state;
}

// What running `sql` (one or more statements; sluice's server_reset_query) leaves search_path
// as, judged by the last statement that may change it: untouched, the session default (DISCARD
// ALL, RESET ALL, RESET search_path, SET [SESSION] search_path TO|= DEFAULT), or anything else.
enum class SearchPathAfter : uint8_t { kUnchanged, kDefault, kChanged };
SearchPathAfter searchPathAfter(std::string_view sql);

}  // namespace sluice::protocol
