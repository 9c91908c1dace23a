"""Timeouts: every wait has a deadline and the client is told when it passes."""

import socket
import time

import pgwire
import pytest
from harness import IS_SLUICE, wait_until


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0


def test_query_wait_timeout(poolers):
    p = poolers(settings={"default_pool_size": 1, "query_wait_timeout": 1})
    with p.connect() as holder, p.wire() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        t0 = time.monotonic()
        with pytest.raises(pgwire.ServerError) as exc:
            waiter.query("SELECT 1")
        waited = elapsed_since(t0)
        holder.execute("COMMIT")
    assert 0.8 <= waited <= 5, f"error after {waited:.2f}s"
    err = exc.value
    assert "query_wait_timeout" in err.message, err
    # PgBouncer 1.18: FATAL 08P01 "query_wait_timeout", then it closes the connection.
    assert err.sqlstate == ("57014" if IS_SLUICE else "08P01"), err


def test_query_timeout(poolers, pg):
    p = poolers(settings={"default_pool_size": 1, "query_timeout": 1})
    with p.wire() as w:
        t0 = time.monotonic()
        with pytest.raises(pgwire.ServerError) as exc:
            w.query("SELECT pg_sleep(30)")
        waited = elapsed_since(t0)
    assert 0.8 <= waited <= 5, f"error after {waited:.2f}s"
    assert "timeout" in exc.value.message, exc.value
    if not IS_SLUICE:
        # PgBouncer 1.18: FATAL 08P01 "query timeout", and closes client and server.
        assert (exc.value.sqlstate, exc.value.message) == ("08P01", "query timeout")
        assert exc.value.closed
    # The pool is not left stuck behind the timed-out query.
    with p.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_idle_transaction_timeout(poolers):
    p = poolers(settings={"default_pool_size": 1, "idle_transaction_timeout": 1,
                          "query_wait_timeout": 20})
    with p.wire() as idler, p.connect() as other:
        idler.query("BEGIN")
        idler.query("SELECT 1")
        # Waits for the only server, which the idle transaction holds until the timeout.
        t0 = time.monotonic()
        assert other.execute("SELECT 2").fetchone()[0] == 2
        waited = elapsed_since(t0)
        assert 0.8 <= waited <= 6, f"served after {waited:.2f}s"
        err = idler.wait_error(5)
    assert err is None or err.closed, "idle-in-transaction client was not disconnected"
    # PgBouncer 1.18: FATAL 08P01 "idle transaction timeout".
    if not IS_SLUICE:
        assert err.fields == {"S": "FATAL", "C": "08P01", "M": "idle transaction timeout"}
    else:
        assert err.sqlstate == "25P03" and "idle_transaction_timeout (1 s)" in err.message, err


@pytest.mark.sluice_only(reason="PgBouncer 1.18 closes the server of a timed-out transaction")
def test_idle_transaction_timeout_rolls_back_and_gives_the_server_to_the_next(poolers, pg):
    p = poolers(settings={"default_pool_size": 1, "idle_transaction_timeout": 1,
                          "query_wait_timeout": 20})
    with pg.connect(dbname="appdb") as c:
        c.execute("DROP TABLE IF EXISTS itt")
        c.execute("CREATE TABLE itt (v int)")
        c.execute("GRANT ALL ON itt TO PUBLIC")
    with p.wire() as idler, p.connect() as other:
        idler.query("BEGIN")
        pid = idler.query("SELECT pg_backend_pid()").rows[0][0]
        idler.query("INSERT INTO itt VALUES (1)")
        # The waiter gets the same backend, with the idle transaction rolled back.
        row = other.execute("SELECT pg_backend_pid(), (SELECT count(*) FROM itt)").fetchone()
        assert (str(row[0]), row[1]) == (pid, 0), row
        assert other.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True
        err = idler.wait_error(5)
    assert err is None or err.closed


def test_client_idle_timeout(poolers):
    p = poolers(settings={"client_idle_timeout": 1})
    with p.wire() as w:
        w.query("SELECT 1")
        t0 = time.monotonic()
        err = w.wait_error(6)
        assert elapsed_since(t0) >= 0.8
    assert err is None or err.closed, "idle client was not disconnected"
    # PgBouncer 1.18: FATAL 08P01 "client_idle_timeout".
    if not IS_SLUICE:
        assert err.fields == {"S": "FATAL", "C": "08P01", "M": "client_idle_timeout"}


def test_busy_client_is_not_idle(poolers):
    p = poolers(settings={"client_idle_timeout": 1})
    with p.connect() as c:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert c.execute("SELECT 1").fetchone()[0] == 1
            time.sleep(0.2)


def test_server_lifetime_recycles_servers(poolers):
    p = poolers(settings={"default_pool_size": 1, "server_lifetime": 1})
    with p.connect() as c:
        first = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        wait_until(lambda: c.execute("SELECT pg_backend_pid()").fetchone()[0] != first,
                   10, 0.1, "a new server after server_lifetime")


def test_server_idle_timeout_closes_servers(poolers, pg):
    p = poolers(settings={"server_idle_timeout": 1})
    with p.connect() as c:
        c.execute("SELECT 1")
        assert pg.backend_count("sluice_md5") >= 1
        t0 = time.monotonic()
        pg.wait_backends(lambda n: n == 0, "sluice_md5", timeout=10)
        assert elapsed_since(t0) >= 0.5
        # The client stays connected and gets a fresh server on demand.
        assert c.execute("SELECT 1").fetchone()[0] == 1


@pytest.fixture
def blackhole():
    """A TCP port that completes handshakes (kernel backlog) but never accepts or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_server_connect_timeout_unresponsive_server(poolers, blackhole):
    p = poolers(settings={"server_connect_timeout": 1, "query_wait_timeout": 4},
                databases={"hole": {"host": "127.0.0.1", "port": blackhole, "dbname": "appdb"}})
    t0 = time.monotonic()
    with pytest.raises(Exception) as exc:
        with p.connect(dbname="hole", connect_timeout=20) as c:
            c.execute("SELECT 1")
    waited = elapsed_since(t0)
    assert 0.8 <= waited <= 10, f"error after {waited:.2f}s"
    # PgBouncer 1.18 keeps retrying the server and fails the client at query_wait_timeout:
    # FATAL 08P01 "query_wait_timeout".
    if not IS_SLUICE:
        assert "query_wait_timeout" in str(exc.value)


def test_server_connect_refused(poolers):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    p = poolers(settings={"server_connect_timeout": 1, "query_wait_timeout": 4},
                databases={"nowhere": {"host": "127.0.0.1", "port": port, "dbname": "appdb"}})
    t0 = time.monotonic()
    with pytest.raises(Exception):
        with p.connect(dbname="nowhere", connect_timeout=20) as c:
            c.execute("SELECT 1")
    assert elapsed_since(t0) <= 10
