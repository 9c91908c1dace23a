// Golden strings for inspectSessionState(): what pins a client in transaction pooling and, as
// important, what must not (literals, comments, dollar quotes, the _xact_ lock functions).
#include "protocol/session_state.h"

#include <gtest/gtest.h>

#include <string>

namespace sluice::protocol {
namespace {

using S = SessionState;

S inspect(const std::string& sql) { return inspectSessionState(sql); }

TEST(SessionState, OrdinaryQueriesAreNotState) {
  for (const char* sql : {
           "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
           "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
           "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
           "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, now())",
           "BEGIN",
           "COMMIT;",
           "SET statement_timeout = 0",
           "SET LOCAL ROLE alice",
           "SET LOCAL SESSION AUTHORIZATION alice",
           "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
           "SETTINGS",
           "select settings from t",
           "RESET ROLE",
           "CREATE TABLE t (a int)",
           "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
           "create temporary table t as select 1 on commit drop",
           "DECLARE c CURSOR FOR SELECT 1",
           "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
           "DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold",
           "PREPARE TRANSACTION 'gid1'",
           "DEALLOCATE ALL",
           "DISCARD ALL",
           "UNLISTEN *",
           "NOTIFY chan, 'LISTEN x'",
           "",
           ";",
           "   ",
           "  ;  ",
       }) {
    EXPECT_EQ(inspect(sql), S::kNone) << sql;
  }
}

TEST(SessionState, TransactionScopedAdvisoryLocksAreNotState) {
  EXPECT_EQ(inspect("SELECT pg_advisory_xact_lock(42)"), S::kNone);
  EXPECT_EQ(inspect("SELECT pg_try_advisory_xact_lock(1, 2)"), S::kNone);
  EXPECT_EQ(inspect("SELECT pg_advisory_xact_lock_shared(42)"), S::kNone);
  EXPECT_EQ(inspect("SELECT pg_advisory_unlock(42)"), S::kNone);
  EXPECT_EQ(inspect("SELECT pg_advisory_unlock_all()"), S::kNone);
  EXPECT_EQ(inspect("SELECT * FROM advisory_locks"), S::kNone);
  EXPECT_EQ(inspect("SELECT pg_advisory_lock FROM t"), S::kNone);  // a column, not a call
}

TEST(SessionState, QuotedTextAndCommentsNeverMatch) {
  for (const char* sql : {
           "SELECT 'LISTEN x'",
           "SELECT 'LISTEN x';",
           "SELECT 'a'; SELECT 'LISTEN x'",
           "SELECT 'x; LISTEN y'",
           "SELECT 'pg_advisory_lock(1)'",
           "SELECT $$ pg_advisory_lock(1) $$",
           "SELECT $tag$ ; LISTEN x; $tag$",
           "SELECT E'\\'; LISTEN x'",
           "SELECT 'it''s; LISTEN x'",
           "SELECT \"LISTEN\" FROM t; SELECT 1",
           "-- LISTEN x\nSELECT 1",
           "/* CREATE TEMP TABLE t() */ SELECT 1",
           "/* nested /* ; LISTEN x */ still ; comment */ SELECT 1",
           "SELECT 1 -- ; LISTEN x",
           "SELECT 1; -- pg_advisory_lock(1)",
           "SELECT 'advisory'",
       }) {
    EXPECT_EQ(inspect(sql), S::kNone) << sql;
  }
}

TEST(SessionState, EachKind) {
  EXPECT_EQ(inspect("SELECT pg_advisory_lock(42)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("select pg_try_advisory_lock(1, 2)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT PG_ADVISORY_LOCK_SHARED(7)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT pg_try_advisory_lock_shared ($1)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT pg_catalog.pg_advisory_lock(1)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT \"pg_advisory_lock\"(1)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("WITH x AS (SELECT pg_advisory_lock(hashtext('job'))) SELECT 1"),
            S::kAdvisoryLock);
  EXPECT_EQ(inspect("LISTEN jobs"), S::kListen);
  EXPECT_EQ(inspect("listen \"Jobs\";"), S::kListen);
  EXPECT_EQ(inspect("CREATE TEMP TABLE t (a int)"), S::kTempTable);
  EXPECT_EQ(inspect("create temporary table t as select 1"), S::kTempTable);
  EXPECT_EQ(inspect("CREATE GLOBAL TEMPORARY TABLE t (a int)"), S::kTempTable);
  EXPECT_EQ(inspect("CREATE LOCAL TEMP TABLE t (a int) ON COMMIT DELETE ROWS"), S::kTempTable);
  EXPECT_EQ(inspect("CREATE TEMP VIEW v AS SELECT 1"), S::kTempTable);
  EXPECT_EQ(inspect("CREATE OR REPLACE TEMP VIEW v AS SELECT 1"), S::kTempTable);
  EXPECT_EQ(inspect("CREATE TEMP SEQUENCE s"), S::kTempTable);
  EXPECT_EQ(inspect("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), S::kWithHold);
  EXPECT_EQ(inspect("declare c no scroll cursor with hold for select * from t"), S::kWithHold);
  EXPECT_EQ(inspect("PREPARE q AS SELECT 1"), S::kSqlPrepare);
  EXPECT_EQ(inspect("prepare q (int, text) as select $1, $2"), S::kSqlPrepare);
  EXPECT_EQ(inspect("PREPARE \"Q\"(int[]) AS SELECT $1"), S::kSqlPrepare);
  EXPECT_EQ(inspect("PREPARE transaction AS SELECT 1"), S::kSqlPrepare);  // a statement named so
  EXPECT_EQ(inspect("SET ROLE alice"), S::kSessionAuthorization);
  EXPECT_EQ(inspect("set session role alice"), S::kSessionAuthorization);
  EXPECT_EQ(inspect("SET SESSION AUTHORIZATION alice"), S::kSessionAuthorization);
  EXPECT_EQ(inspect("SET SESSION SESSION AUTHORIZATION DEFAULT"), S::kSessionAuthorization);
  EXPECT_EQ(inspect("SET role TO 'alice'"), S::kSessionAuthorization);
}

TEST(SessionState, CallsAreFoundBehindWhitespaceCommentsAndQuotes) {
  EXPECT_EQ(inspect("SELECT pg_advisory_lock\n\t (1)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT pg_advisory_lock /* why */ (1)"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT x FROM t WHERE pg_try_advisory_lock(id) AND a IN (1, 2)"),
            S::kAdvisoryLock);
  EXPECT_EQ(inspect("SELECT count(*), max(a), coalesce(b, 0) FROM t"), S::kNone);
  EXPECT_EQ(inspect("SELECT my_pg_advisory_lock(1)"), S::kNone);
  EXPECT_EQ(inspect("SELECT pg_advisory_locks(1)"), S::kNone);
  EXPECT_FALSE(inspectSessionEffects("SELECT reset_config(1)").search_path);
  EXPECT_TRUE(inspectSessionEffects("SELECT set_config ('search_path', 'a', false)").search_path);
}

TEST(SessionState, LeadingCommentsWhitespaceAndCase) {
  EXPECT_EQ(inspect("   \n\t LiStEn x"), S::kListen);
  EXPECT_EQ(inspect("-- a job runner\nLISTEN jobs"), S::kListen);
  EXPECT_EQ(inspect("/* app=worker */ CREATE TEMP TABLE t(a int)"), S::kTempTable);
  EXPECT_EQ(inspect("\r\n  set Role bob  ;\n"), S::kSessionAuthorization);
  EXPECT_EQ(inspect("Select Pg_Advisory_Lock(1)"), S::kAdvisoryLock);
}

TEST(SessionState, MultiStatementQueries) {
  EXPECT_EQ(inspect("SELECT 1; LISTEN jobs"), S::kListen);
  EXPECT_EQ(inspect("SELECT 'a;b'; LISTEN jobs;"), S::kListen);
  EXPECT_EQ(inspect("BEGIN; CREATE TEMP TABLE t(a int); COMMIT"), S::kTempTable);
  EXPECT_EQ(inspect("SELECT 1;\nSET ROLE alice"), S::kSessionAuthorization);
  EXPECT_EQ(inspect("SELECT 1; SELECT pg_advisory_xact_lock(1); SELECT 2"), S::kNone);
  // The first state found is the one reported.
  EXPECT_EQ(inspect("LISTEN a; SELECT pg_advisory_lock(1)"), S::kListen);
}

TEST(SessionState, LongQueriesUseTheVectorPathAndItsOverlappingTail) {
  std::string pad(100, 'x');
  for (size_t len = 0; len < 40; ++len) {
    std::string filler = "SELECT '" + std::string(len, 'a') + "' AS c";
    EXPECT_EQ(inspect(filler), S::kNone) << len;
    EXPECT_EQ(inspect(filler + "; LISTEN x"), S::kListen) << len;
    EXPECT_EQ(inspect("SELECT pg_advisory_lock(1), '" + std::string(len, 'a') + "'"),
              S::kAdvisoryLock)
        << len;
    EXPECT_EQ(inspect("SELECT " + std::string(len, ' ') + "pg_advisory_lock(1)"), S::kAdvisoryLock)
        << len;
  }
  EXPECT_EQ(inspect("SELECT " + pad + " FROM t WHERE v = 1"), S::kNone);
}

bool path(const std::string& sql) { return inspectSessionEffects(sql).search_path; }

TEST(SessionState, SearchPathChanges) {
  for (const char* sql : {
           "SET search_path TO tenant_a",
           "set search_path = 'a', \"B c\", public",
           "SET SESSION search_path TO DEFAULT",
           "SET \"search_path\" TO x",
           "SET SCHEMA 'tenant_a'",
           "set session schema 'tenant_a';",
           "RESET search_path",
           "reset all",
           "DISCARD ALL",
           "SELECT 1; SET search_path TO a",
           "SET search_path TO a; SELECT 1",
           "/* tenant */ SET search_path TO a",
           "SELECT set_config('search_path', 'a', false)",
           "select pg_catalog.set_config('search_path', $1, false)",
           "SELECT set_config($1, $2, false)",
           "SELECT set_config('SEARCH_PATH', 'a', 'false')",
           "SELECT set_config('search_path', 'a', $3)",
           "SELECT set_config('search_path', 'a', false), 1",
           "SELECT \"set_config\"('search_path', 'a', false)",
           "SELECT SET_CONFIG('search_path', 'a', f(1, 2))",
           "SELECT set_config(E'search_path', 'a', false)",  // not decoded: assume the worst
       }) {
    EXPECT_TRUE(path(sql)) << sql;
    EXPECT_EQ(inspect(sql), S::kNone) << sql;
  }
}

TEST(SessionState, SearchPathLookalikes) {
  for (const char* sql : {
           "SET LOCAL search_path TO a",
           "SET LOCAL SCHEMA 'a'",
           "SHOW search_path",
           "SELECT current_setting('search_path')",
           "SELECT search_path FROM t",
           "SELECT 'SET search_path TO a'",
           "SELECT set_config('search_path', 'a', true)",
           "SELECT set_config('search_path', 'a', 'on')",
           "SELECT set_config('statement_timeout', '0', false)",
           "SELECT set_config FROM t",
           "SELECT 'set_config(1)'",
           "SELECT my_set_configure(1)",
           "SET search_path_x TO 1",
           "SET statement_timeout = 0",
           "RESET ROLE",
           "RESET statement_timeout",
           "DISCARD PLANS",
           "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
       }) {
    EXPECT_FALSE(path(sql)) << sql;
  }
}

TEST(SessionState, DoBlocksAreSearchedWordByWord) {
  EXPECT_EQ(inspect("DO $$BEGIN PERFORM pg_advisory_lock(1); END$$"), S::kAdvisoryLock);
  EXPECT_EQ(inspect("do 'begin execute ''LISTEN jobs''; end'"), S::kListen);
  EXPECT_EQ(inspect("DO $body$ BEGIN CREATE TEMP TABLE t (a int); END $body$"), S::kTempTable);
  EXPECT_EQ(inspect("DO LANGUAGE plpgsql $$ BEGIN EXECUTE format('SET ROLE %I', 'x'); END $$"),
            S::kSessionAuthorization);
  EXPECT_EQ(inspect("DO $$ BEGIN EXECUTE 'DECLARE c CURSOR WITH HOLD FOR SELECT 1'; END $$"),
            S::kWithHold);
  EXPECT_EQ(inspect("DO $$ BEGIN EXECUTE 'PREPARE q AS SELECT 1'; END $$ LANGUAGE plpgsql"),
            S::kSqlPrepare);
  EXPECT_EQ(inspect("SELECT 1; DO $$ BEGIN PERFORM pg_try_advisory_lock(1); END $$"),
            S::kAdvisoryLock);
  EXPECT_TRUE(path("DO $$ BEGIN PERFORM set_config('search_path', 'a', false); END $$"));
  EXPECT_TRUE(path("DO $$ BEGIN SET search_path TO a; END $$"));
  for (const char* sql : {
           "DO $$ BEGIN PERFORM pg_advisory_xact_lock(1); END $$",
           "DO $$ DECLARE temp int; BEGIN temp := 1; END $$",
           "DO $$ BEGIN UPDATE t SET hold = 1; END $$",
           "DO $$ BEGIN RAISE NOTICE 'unlisten'; END $$",
           "DOT",
           "done",
       }) {
    EXPECT_EQ(inspect(sql), S::kNone) << sql;
    EXPECT_FALSE(path(sql)) << sql;
  }
  // A function body is not a DO block: its text is not searched.
  EXPECT_EQ(inspect("CREATE FUNCTION f() RETURNS void AS $$ SELECT pg_advisory_lock(1) $$ "
                    "LANGUAGE sql"),
            S::kNone);
}

TEST(SessionState, SetConfigAtEveryOffsetOfTheVectorPath) {
  for (size_t len = 0; len < 40; ++len) {
    std::string pad(len, ' ');
    EXPECT_TRUE(path("SELECT" + pad + " set_config('search_path', 'a', false)")) << len;
    EXPECT_TRUE(path("SELECT" + pad + " SET_CONFIG('search_path', 'a', false)")) << len;
    EXPECT_FALSE(path("SELECT" + pad + " x_y FROM pgbench_accounts")) << len;
  }
}

TEST(SessionState, SearchPathAfterAResetQuery) {
  using A = SearchPathAfter;
  EXPECT_EQ(searchPathAfter("DISCARD ALL"), A::kDefault);
  EXPECT_EQ(searchPathAfter("RESET ALL; DEALLOCATE ALL"), A::kDefault);
  EXPECT_EQ(searchPathAfter("reset search_path"), A::kDefault);
  EXPECT_EQ(searchPathAfter("SET search_path TO DEFAULT"), A::kDefault);
  EXPECT_EQ(searchPathAfter("SET SESSION search_path = default"), A::kDefault);
  EXPECT_EQ(searchPathAfter("DEALLOCATE ALL"), A::kUnchanged);
  EXPECT_EQ(searchPathAfter(""), A::kUnchanged);
  EXPECT_EQ(searchPathAfter("SELECT 1"), A::kUnchanged);
  EXPECT_EQ(searchPathAfter("SET LOCAL search_path TO a"), A::kUnchanged);
  EXPECT_EQ(searchPathAfter("SET search_path TO a"), A::kChanged);
  EXPECT_EQ(searchPathAfter("RESET ALL; SET search_path TO a"), A::kChanged);
  EXPECT_EQ(searchPathAfter("SET search_path TO a; RESET ALL"), A::kDefault);
  EXPECT_EQ(searchPathAfter("SET search_path TO default, a"), A::kChanged);
  EXPECT_EQ(searchPathAfter("SELECT my_reset()"), A::kUnchanged);  // not seen: functions
}

TEST(SessionState, LabelsAndNames) {
  EXPECT_STREQ(sessionStateLabel(S::kAdvisoryLock), "advisory_lock");
  EXPECT_STREQ(sessionStateLabel(S::kSessionAuthorization), "session_authorization");
  EXPECT_STREQ(sessionStateWhat(S::kListen), "LISTEN");
  EXPECT_STREQ(sessionStateLabel(S::kNone), "");
  EXPECT_EQ(kNumSessionStates, 6u);
  EXPECT_EQ(sessionStateIndex(S::kAdvisoryLock), 0u);
}

}  // namespace
}  // namespace sluice::protocol
