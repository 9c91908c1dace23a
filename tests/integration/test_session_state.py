"""Session state in transaction pooling (issue 4): LISTEN, session advisory locks, temporary
tables, WITH HOLD cursors, SQL PREPARE and SET ROLE pin the client to its server
(session_state = pin, the default) or are refused (session_state = refuse); transaction-scoped
look-alikes pin nothing; clients see sluice's ParameterStatus. PgBouncer 1.18 has none of this
(it hands the server to the next client and the state leaks or is lost), so most tests are
sluice_only; the "does not pin" ones run against both."""

from __future__ import annotations

import asyncio
import re
import struct
import threading

import asyncpg
import psycopg
import pytest

import pgwire
from harness import BackendSampler, free_port, wait_until
from test_http import scrape, value

DB = {"database": "appdb", "user": "sluice_md5"}
sluice_only = pytest.mark.sluice_only(reason="session_state pinning is sluice's (issue 4)")


def start(poolers, **settings):
    port = free_port()
    p = poolers(settings={"default_pool_size": 1, "http_listen": f"127.0.0.1:{port}",
                          **settings})
    p.http_port = port
    return p


def ensure_role(pg):
    pg.execute("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pin_role') "
               "THEN CREATE ROLE pin_role; END IF; END$$")
    pg.execute("GRANT pin_role TO sluice_md5")


class Waiter:
    """A second client's query in a thread: did it get a server, and when."""

    def __init__(self, p, sql="SELECT pg_backend_pid()"):
        self.conn = p.connect(application_name="second")
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(sql,), daemon=True)
        self.thread.start()

    def _run(self, sql):
        try:
            self.result = self.conn.execute(sql).fetchone()[0]
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def done(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def close(self):
        self.conn.close()


# kind -> (statements that create the state, a check in a later transaction that it is there)
def check_listen(p, pg, c):
    got = []
    c.add_notify_handler(got.append)
    with pg.connect(dbname="appdb") as other:  # LISTEN/NOTIFY are per database
        other.execute("NOTIFY pin_jobs, 'hello'")
    wait_until(lambda: c.execute("SELECT 1") and got, 5, what="the notification")
    assert [(n.channel, n.payload) for n in got] == [("pin_jobs", "hello")]


def check_advisory(p, pg, c):
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    rows = pg.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 "
                      "AND granted")
    assert rows == [(pid,)]


def check_temp(p, pg, c):
    assert c.execute("SELECT a FROM pin_tmp").fetchall() == [(7,)]


def check_with_hold(p, pg, c):
    assert c.execute("FETCH ABSOLUTE 1 FROM pin_cur").fetchone() == (1,)
    assert c.execute("FETCH ABSOLUTE 3 FROM pin_cur").fetchone() == (3,)


def check_prepare(p, pg, c):
    assert c.execute("EXECUTE pin_q(21)").fetchone() == (42,)


def check_role(p, pg, c):
    assert c.execute("SELECT current_user").fetchone() == ("pin_role",)


# kind -> a check, on the next client of the same backend, that the state is gone
GONE = {
    "listen": "SELECT count(*) FROM pg_listening_channels()",
    "advisory_lock": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                     "AND pid = pg_backend_pid()",
    "temp_table": "SELECT count(*) FROM pg_class WHERE relname = 'pin_tmp'",
    "with_hold": "SELECT count(*) FROM pg_cursors",
    "sql_prepare": "SELECT count(*) FROM pg_prepared_statements",
    "session_authorization": "SELECT count(*) FROM (SELECT current_user) u "
                             "WHERE current_user <> 'sluice_md5'",
}

KINDS = {
    "listen": (["LISTEN pin_jobs"], check_listen, "LISTEN"),
    "advisory_lock": (["SELECT pg_advisory_lock(4242)"], check_advisory,
                      "a session advisory lock"),
    "temp_table": (["CREATE TEMP TABLE pin_tmp (a int)", "INSERT INTO pin_tmp VALUES (7)"],
                   check_temp, "a temporary table"),
    "with_hold": (["DECLARE pin_cur SCROLL CURSOR WITH HOLD FOR SELECT generate_series(1, 3)"],
                  check_with_hold, "a cursor WITH HOLD"),
    "sql_prepare": (["PREPARE pin_q (int) AS SELECT $1 * 2"], check_prepare,
                    "an SQL-level prepared statement"),
    "session_authorization": (["SET ROLE pin_role"], check_role, "a session role change"),
}


@sluice_only
@pytest.mark.parametrize("kind", list(KINDS))
def test_pin_keeps_session_state_and_the_server(poolers, pg, kind):
    ensure_role(pg)
    statements, check, what = KINDS[kind]
    p = start(poolers, query_wait_timeout=30)
    first = p.connect(application_name="pinner")
    pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    for sql in statements:
        first.execute(sql)
    # Several transactions later the state is still there, on the same backend.
    for _ in range(3):
        first.execute("BEGIN")
        first.execute("SELECT 1")
        first.execute("COMMIT")
        check(p, pg, first)
        assert first.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    # The only server is pinned: a second client waits until the first leaves.
    second = Waiter(p)
    assert not second.done(1.0), "the second client got a server while the first was pinned"
    [holder] = [r for r in p.admin("SHOW HOLDERS") if r["application_name"] == "pinner"]
    assert holder["pinned"] == kind
    metrics = scrape(p)
    assert value(metrics, "sluice_pool_pins_total", kind=kind, **DB) == 1
    assert value(metrics, "sluice_pool_pinned_clients", **DB) == 1
    first.close()
    assert second.done(10), "the second client never got a server after the first left"
    assert second.error is None, second.error
    # The pinned server was reset (DISCARD ALL) and handed on: same backend, state gone.
    assert second.result == pid
    assert second.conn.execute(GONE[kind]).fetchone() == (0,)
    assert second.conn.execute("SELECT current_user").fetchone() == ("sluice_md5",)
    second.close()
    assert value(scrape(p), "sluice_pool_pinned_clients", **DB) == 0
    lines = re.findall(r".*pinned to its server connection.*", p.log())
    assert len(lines) == 1, lines
    assert re.search(rf"\[C\d+ appdb/sluice_md5@127\.0\.0\.1:\d+\] pinned to its server "
                     rf"connection for the rest of its session: {re.escape(what)}.*"
                     rf"application_name \"pinner\", address 127\.0\.0\.1:\d+", lines[0]), lines
    if kind == "advisory_lock":
        assert pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objid = 4242") == [(0,)]


@sluice_only
@pytest.mark.parametrize("reset_query", ["DISCARD ALL", "", "DEALLOCATE ALL"])
def test_a_pinned_server_is_reset_and_reused_when_its_client_leaves(poolers, pg, reset_query):
    """server_reset_query runs, then DISCARD ALL if it is not that already (with an empty one,
    DISCARD ALL alone): the lock, the temporary table and sluice's prepared statements on that
    backend are gone, and the next client gets the same backend, not a new one."""
    p = start(poolers, query_wait_timeout=30, server_reset_query=reset_query)
    with BackendSampler(pg, "sluice_md5") as sampler:
        first = p.connect(application_name="pinner", prepare_threshold=0)
        assert first.execute("SELECT %s::int * 2", (21,)).fetchone() == (42,)  # sluice_s1
        pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
        first.execute("SELECT pg_advisory_lock(4242)")
        first.execute("CREATE TEMP TABLE pin_tmp (a int)")
        first.close()
        with p.connect(prepare_threshold=0) as second:
            assert second.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
            assert pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") \
                == [(0,)]
            assert second.execute("SELECT to_regclass('pin_tmp') IS NULL").fetchone() == (True,)
            # The statement map of that server was forgotten with DISCARD ALL: the same text is
            # prepared again rather than bound to a statement that is gone.
            assert second.execute("SELECT %s::int * 2", (4,)).fetchone() == (8,)
    assert sampler.max <= 1, sampler.samples
    assert "closing" not in "\n".join(line for line in p.log().splitlines() if "[S" in line)


@sluice_only
def test_a_pinned_client_leaving_inside_a_transaction_closes_its_server(poolers, pg):
    p = start(poolers, query_wait_timeout=30)
    first = p.connect()
    pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    first.execute("LISTEN pin_jobs")
    first.execute("BEGIN")
    first.close()
    with p.connect() as second:
        assert second.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        assert second.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)


@sluice_only
def test_pin_is_logged_once_and_counted_by_its_first_kind(poolers, pg):
    p = start(poolers)
    with p.connect(application_name="many") as c:
        c.execute("LISTEN a")
        c.execute("LISTEN b")
        c.execute("SELECT pg_advisory_lock(99)")
        metrics = scrape(p)
        assert value(metrics, "sluice_pool_pins_total", kind="listen", **DB) == 1
        assert value(metrics, "sluice_pool_pins_total", kind="advisory_lock", **DB) == 0
    assert len(re.findall(r"pinned to its server connection", p.log())) == 1


@sluice_only
def test_pin_from_an_extended_protocol_parse(poolers, pg):
    # psycopg sends a query with parameters as Parse/Bind/Execute: the Parse text pins.
    p = start(poolers, query_wait_timeout=30)
    c = p.connect(application_name="ext")
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    c.execute("SELECT pg_advisory_lock(%s)", (4242,))
    c.execute("SELECT 1")
    assert pg.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") \
        == [(pid,)]
    assert value(scrape(p), "sluice_pool_pins_total", kind="advisory_lock", **DB) == 1
    c.close()


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _parse(name: str, sql: str) -> bytes:
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def _bind(stmt: str) -> bytes:
    return _msg(b"B", b"\0" + stmt.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


_EXECUTE = _msg(b"E", b"\0" + struct.pack("!I", 0))
_SYNC = _msg(b"S", b"")


def _until_ready(w) -> list:
    out = []
    while True:
        kind, body = w.read_message()
        out.append((kind, body))
        if kind == b"Z":
            return out


@sluice_only
def test_refuse_a_parse_in_protocol_order(poolers, pg):
    """Under refuse, a Parse that would create session state gets the same 0A000 as a Query, in
    the ParseComplete's place; PostgreSQL then skips the rest of the batch up to the Sync, as
    after a Parse that failed on its own."""
    p = start(poolers, session_state="refuse", query_wait_timeout=30)
    with p.wire() as w:
        w.sock.sendall(_parse("ok", "SELECT 41 + 1") + _bind("ok") + _EXECUTE
                       + _parse("l", "LISTEN pin_jobs") + _bind("l") + _EXECUTE
                       + _parse("", "SELECT 2") + _SYNC)
        got = _until_ready(w)
        assert [k for k, _ in got] == [b"1", b"2", b"D", b"C", b"E", b"Z"], got
        err = pgwire._fields(got[4][1])
        assert err["C"] == "0A000" and err["S"] == "ERROR", err
        assert err["M"].startswith("sluice: LISTEN is session state"), err
        assert "session_state = refuse" in err["M"], err
        assert got[5][1] == b"I"
        # The unnamed statement, inside a transaction: the refusal aborts it.
        assert w.query("BEGIN").status == b"T"
        w.sock.sendall(_parse("", "CREATE TEMP TABLE pin_tmp (a int)") + _bind("")
                       + _EXECUTE + _SYNC)
        got = _until_ready(w)
        assert [k for k, _ in got] == [b"E", b"Z"] and got[1][1] == b"E", got
        assert pgwire._fields(got[0][1])["M"].startswith("sluice: a temporary table")
        w.query("ROLLBACK")
        # The connection is usable; "ok" exists, "l" does not.
        w.sock.sendall(_bind("ok") + _EXECUTE + _SYNC)
        assert [k for k, _ in _until_ready(w)] == [b"2", b"D", b"C", b"Z"]
        w.sock.sendall(_bind("l") + _EXECUTE + _SYNC)
        got = _until_ready(w)
        assert [k for k, _ in got] == [b"E", b"Z"]
        assert pgwire._fields(got[0][1])["C"] == "26000"
        # Nothing was created and nothing pinned: another client gets the only server.
        with p.connect() as other:
            assert other.execute("SELECT 1").fetchone() == (1,)
            assert other.execute("SELECT pg_listening_channels()").fetchall() == []
    assert value(scrape(p), "sluice_pool_pinned_clients", **DB) == 0


@sluice_only
def test_refuse_a_parse_from_psycopg(poolers, pg):
    p = start(poolers, session_state="refuse", query_wait_timeout=30)
    with p.connect(prepare_threshold=0) as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute("SELECT pg_advisory_lock(%s)", (4242,))
        assert e.value.diag.message_primary.startswith("sluice: a session advisory lock")
        assert c.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            with c.transaction():
                c.execute("SELECT 1")
                c.execute("SELECT pg_try_advisory_lock(%s)", (4242,))
        assert c.execute("SELECT %s::int", (3,)).fetchone() == (3,)
    assert pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                      "AND objid = 4242") == [(0,)]
    assert value(scrape(p), "sluice_pool_pins_total", kind="advisory_lock", **DB) == 0


@sluice_only
def test_refuse_pins_a_parse_when_prepared_statements_are_off(poolers, pg):
    # max_prepared_statements = 0: no rewriter to answer in the Parse's place, so it is pinned.
    p = start(poolers, session_state="refuse", max_prepared_statements=0)
    with p.connect() as c:
        c.execute("SELECT pg_advisory_lock(%s)", (4242,))
        assert value(scrape(p), "sluice_pool_pins_total", kind="advisory_lock", **DB) == 1


@sluice_only
def test_do_blocks_that_create_state_pin_or_are_refused(poolers, pg):
    """A DO block's body is searched for the same statements (also inside EXECUTE strings).
    Functions called by name are not seen: their bodies are not in the query text."""
    p = start(poolers, query_wait_timeout=30)
    with p.connect() as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.execute("DO $$BEGIN PERFORM pg_advisory_lock(4242); END$$")
        assert value(scrape(p), "sluice_pool_pins_total", kind="advisory_lock", **DB) == 1
        assert pg.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objid = 4242") == [(pid,)]
    r = start(poolers, session_state="refuse")
    with r.connect() as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute("DO $$BEGIN EXECUTE 'LISTEN ' || 'pin_jobs'; END$$")
        assert e.value.diag.message_primary.startswith("sluice: LISTEN"), e.value
        c.execute("DO $$DECLARE temp int; BEGIN temp := 1; END$$")  # only looks like state
        assert c.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)


@sluice_only
def test_second_client_times_out_naming_the_pool_while_the_server_is_pinned(poolers, pg):
    p = start(poolers, query_wait_timeout=1)
    with p.connect() as first:
        first.execute("LISTEN pin_jobs")
        with p.connect() as second:
            # libpq drops the SQLSTATE of an error right before the close; the text stays.
            with pytest.raises(psycopg.OperationalError) as e:
                second.execute("SELECT 1")
            assert "query_wait_timeout" in str(e.value) and "appdb/sluice_md5" in str(e.value)
        first.execute("SELECT 1")  # the pinned client is unaffected


@sluice_only
@pytest.mark.parametrize("kind", list(KINDS))
def test_refuse_answers_0A000_and_the_connection_stays_usable(poolers, pg, kind):
    ensure_role(pg)
    statements, _, what = KINDS[kind]
    p = start(poolers, session_state="refuse")
    with p.connect() as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(statements[0])
        msg = e.value.diag.message_primary
        assert e.value.sqlstate == "0A000"
        assert msg.startswith(f"sluice: {what}"), msg
        assert "transaction pooling cannot carry" in msg, msg
        assert "session_state = refuse" in msg and "session_state = pin" in msg, msg
        assert "pool_mode = session" in msg and "appdb/sluice_md5" in msg, msg
        assert c.execute("SELECT 41 + 1").fetchone() == (42,)
        # Inside a transaction the refusal aborts it, as PostgreSQL's own error would.
        c.execute("BEGIN")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute(statements[0])
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.execute("ROLLBACK")
        assert c.execute("SELECT 2").fetchone() == (2,)
        # Nothing was created and nothing pinned: another client gets the only server.
        with p.connect() as other:
            assert other.execute("SELECT 1").fetchone() == (1,)
    assert value(scrape(p), "sluice_pool_pinned_clients", **DB) == 0
    if kind == "advisory_lock":
        assert pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objid = 4242") == [(0,)]


@sluice_only
def test_refuse_in_a_multi_statement_query(poolers, pg):
    p = start(poolers, session_state="refuse")
    with p.connect() as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("SELECT 1; LISTEN pin_jobs")
        assert c.execute("SELECT 3").fetchone() == (3,)


@pytest.mark.parametrize("sql", [
    "SELECT pg_advisory_xact_lock(4242)",
    "SELECT 'LISTEN x', 'CREATE TEMP TABLE t()'",
    "SELECT 1 -- ; LISTEN x",
    "CREATE TEMP TABLE pin_gone (a int) ON COMMIT DROP",
])
def test_transaction_scoped_lookalikes_do_not_pin(poolers, pg, sql):
    p = poolers(settings={"default_pool_size": 1, "query_wait_timeout": 30})
    with p.connect() as first:
        first.execute("BEGIN")
        first.execute(sql)
        first.execute("COMMIT")
        first.execute(sql)  # outside a block too
        second = Waiter(p, "SELECT 1")
        assert second.done(5), "the second client waited: the first client was pinned"
        assert second.error is None, second.error
        second.close()
    assert "pinned" not in p.log()


@sluice_only
def test_sluice_reports_itself_in_parameter_status(poolers):
    p = poolers()
    with p.connect() as c:
        version = c.info.parameter_status("sluice_version")
        assert version is not None and re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert c.info.parameter_status("sluice_pool_mode") == "transaction"
        assert c.execute("SELECT 1").fetchone() == (1,)

    async def via_asyncpg():
        conn = await asyncpg.connect(**{k: v for k, v in p.conn_kwargs().items()
                                        if k not in ("connect_timeout", "sslmode", "dbname")},
                                     database="appdb", ssl=False)
        try:
            settings = conn.get_settings()
            return settings.sluice_pool_mode, await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == ("transaction", 1)
