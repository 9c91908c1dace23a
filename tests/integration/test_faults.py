"""Fault injection (issue 7): backends killed mid-query and mid-COPY, PostgreSQL restarted under
load, a network partition longer than server_connect_timeout, clients vanishing mid-transaction,
cancels racing server reuse.

Every scenario checks the same four things afterwards (`faultlib`): the pooler still runs; no
leaked server (SHOW SERVERS is exactly PostgreSQL's backends of the role, the pool is idle and
within its size, a new client gets a server with no transaction open); no client hung (every read
has a deadline) and every error a client got was a PostgreSQL ErrorResponse with a SQLSTATE; every
COMMIT the pooler acknowledged is in the table (`Ledger`).

This module runs on a PostgreSQL cluster of its own (the `pg` fixture below), because a backend
killed with SIGKILL makes PostgreSQL restart every backend, and one test restarts it with pg_ctl.
Network faults come from `faultproxy.FaultProxy`, a TCP proxy between the pooler and PostgreSQL.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import threading
import time

import pgwire
import pytest
from faultlib import CrashablePostgres, Ledger, assert_settled, backend_pid_running, classify
from faultproxy import FaultProxy, _rst
from harness import IS_SLUICE, give, wait_until


@pytest.fixture(scope="module")
def pg(workdir):
    base = workdir / "pg-faults"
    base.mkdir()
    give(base)
    # The harness runs PostgreSQL with synchronous_commit = off, which acknowledges a COMMIT
    # before its WAL is written: a crash (a backend killed with SIGKILL) then loses commits that
    # were acknowledged, through any pooler. Durability after a crash needs it on.
    server = CrashablePostgres(base, conf={"synchronous_commit": "on"})
    try:
        server.start()
        with server.connect("appdb") as c:
            c.execute("CREATE TABLE big_t AS SELECT g AS id, repeat('x', 200) AS pad "
                      "FROM generate_series(1, 200000) g")
            c.execute("GRANT ALL ON big_t TO PUBLIC")
        yield server
    finally:
        server.stop()


def kill_backend(pg: CrashablePostgres, pid: int, how: str) -> None:
    if how == "terminate":
        assert pg.execute("SELECT pg_terminate_backend(%s)", (pid,))[0][0]
    else:
        os.kill(pid, signal.SIGKILL)  # PostgreSQL then restarts every backend (crash recovery)


def expect_clean_error(fn, what: str) -> pgwire.ServerError:
    """Runs fn, which must fail with a PostgreSQL error (an ErrorResponse with a SQLSTATE)."""
    try:
        fn()
    except pgwire.ServerError as e:
        assert e.sqlstate, f"{what}: error without SQLSTATE: {e.fields}"
        return e
    except (OSError, pgwire.ConnectionClosed) as e:
        raise AssertionError(f"{what}: no ErrorResponse, {classify(e)}: {e!r}") from None
    raise AssertionError(f"{what}: succeeded")


def check_clean(ledger: Ledger) -> None:
    """Every error a ledger client got was a PostgreSQL error with a SQLSTATE, none hung."""
    if IS_SLUICE:
        assert not ledger.unclean(), ledger.summary()
    elif ledger.unclean():
        # PgBouncer 1.18 sometimes resets a client whose server crashed (seen: a reset at COMMIT
        # when PostgreSQL restarted every backend); reported, not asserted.
        print(f"PgBouncer: unclean client errors {ledger.unclean()}")
    assert "hang" not in ledger.outcomes, ledger.summary()


SETTINGS = {"default_pool_size": 4, "query_wait_timeout": 30, "server_connect_timeout": 5}


# -- backends killed ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["terminate", "sigkill"])
def test_backend_killed_mid_query(poolers, pg, how):
    p = poolers(settings=SETTINGS)
    ledger = Ledger(p, pg, "ledger_kill_query").start()
    try:
        ledger.wait_commits(30)
        with p.wire(timeout=20) as victim:
            victim.send(b"Q", b"SELECT pg_sleep(30) /* victim */\0")
            pid = backend_pid_running(pg, "/* victim */")
            kill_backend(pg, pid, how)
            t0 = time.monotonic()
            err = expect_clean_error(victim.result, "victim")
            print(f"victim got {err} after {time.monotonic() - t0:.2f}s")
        ledger.wait_commits(30, timeout=40)  # the pool recovered under load
    finally:
        ledger.stop()
    print(ledger.summary())
    check_clean(ledger)
    ledger.assert_durable()
    assert_settled(p, pg, SETTINGS["default_pool_size"])


def _copy_data(row: bytes) -> bytes:
    return b"d" + struct.pack("!I", len(row) + 4) + row


@pytest.mark.parametrize("how", ["terminate", "sigkill"])
def test_backend_killed_mid_copy_from_stdin(poolers, pg, how):
    p = poolers(settings=SETTINGS)
    with pg.connect("appdb") as c:
        c.execute("DROP TABLE IF EXISTS copy_in_t")
        c.execute("CREATE TABLE copy_in_t (id int, pad text)")
        c.execute("GRANT ALL ON copy_in_t TO PUBLIC")
    ledger = Ledger(p, pg, "ledger_kill_copy_in", n=3).start()
    try:
        ledger.wait_commits(20)
        with p.wire(timeout=20) as w:
            w.send(b"Q", b"COPY copy_in_t FROM STDIN /* copy victim */\0")
            kind, _ = w.read_message()
            assert kind == b"G", kind  # CopyInResponse
            w.sock.sendall(b"".join(_copy_data(f"{i}\t{'y' * 100}\n".encode())
                                    for i in range(2000)))
            pid = backend_pid_running(pg, "/* copy victim */")
            kill_backend(pg, pid, how)
            # The client goes on with its COPY, as an application would, then ends it.
            try:
                for i in range(2000, 2200):
                    w.sock.sendall(_copy_data(f"{i}\t{'y' * 100}\n".encode()))
                w.send(b"c", b"")  # CopyDone
            except OSError:
                pass  # the pooler may already have closed; the error must still be readable
            if IS_SLUICE:
                expect_clean_error(w.result, "COPY FROM STDIN client")
            else:
                # PgBouncer 1.18 closes the client with the rest of the COPY unread, so the
                # kernel resets it and the client usually loses the error (sluice lingers).
                with pytest.raises((pgwire.ServerError, OSError, pgwire.ConnectionClosed)):
                    w.result()
        ledger.wait_commits(20, timeout=40)
    finally:
        ledger.stop()
    print(ledger.summary())
    check_clean(ledger)
    ledger.assert_durable()
    # The COPY was never committed: none of its rows exist.
    with pg.connect("appdb") as c:
        assert c.execute("SELECT count(*) FROM copy_in_t").fetchone()[0] == 0
    assert_settled(p, pg, SETTINGS["default_pool_size"])


def test_backend_killed_mid_copy_to_stdout(poolers, pg):
    p = poolers(settings=SETTINGS)
    ledger = Ledger(p, pg, "ledger_kill_copy_out", n=3).start()
    try:
        ledger.wait_commits(20)
        with p.wire(timeout=20) as w:
            w.send(b"Q", b"COPY big_t TO STDOUT /* copy out victim */\0")
            kind, _ = w.read_message()
            assert kind == b"H", kind  # CopyOutResponse
            for _ in range(100):
                kind, _ = w.read_message()
                assert kind == b"d", kind
            # The client now reads nothing, so the backend is blocked sending when it is killed.
            pid = backend_pid_running(pg, "/* copy out victim */")
            kill_backend(pg, pid, "terminate")
            rows = 100

            def drain():
                nonlocal rows
                while True:
                    kind, body = w.read_message()
                    if kind == b"d":
                        rows += 1
                    elif kind == b"E":
                        raise w._error(body)
                    elif kind == b"c":
                        raise AssertionError("COPY finished although its backend was killed")
            err = expect_clean_error(drain, "COPY TO STDOUT client")
            print(f"copy-out client read {rows} rows of 200000, then {err}")
            assert rows < 200000
        ledger.wait_commits(20, timeout=40)
    finally:
        ledger.stop()
    check_clean(ledger)
    ledger.assert_durable()
    assert_settled(p, pg, SETTINGS["default_pool_size"])


# -- PostgreSQL restarted -------------------------------------------------------------------------

def test_postgres_restart_under_load(poolers, pg):
    p = poolers(settings={**SETTINGS, "server_login_retry": 1})
    steady = Ledger(p, pg, "ledger_restart", n=4).start()
    churn = Ledger(p, pg, "ledger_restart_churn", n=2, reconnect_each=True).start()
    try:
        steady.wait_commits(40)
        churn.wait_commits(10)
        old = pg.postmaster_pid()
        pg.restart()  # pg_ctl restart -m fast, waits until PostgreSQL accepts connections
        assert pg.postmaster_pid() != old
        # Both kinds of client get through again without being restarted themselves.
        steady.wait_commits(40, timeout=40)
        churn.wait_commits(10, timeout=40)
    finally:
        steady.stop()
        churn.stop()
    print(steady.summary(), churn.summary())
    for ledger in (steady, churn):
        check_clean(ledger)
        ledger.assert_durable()
    assert_settled(p, pg, SETTINGS["default_pool_size"])


# -- network partition ----------------------------------------------------------------------------

@pytest.mark.parametrize("existing", ["stalled", "reset"])
def test_partition_longer_than_server_connect_timeout(poolers, pg, existing):
    proxy = FaultProxy(pg.port)
    try:
        settings = {"default_pool_size": 4, "query_wait_timeout": 15,
                    "server_connect_timeout": 1, "server_login_retry": 1}
        p = poolers(settings=settings, databases={
            "appdb": {"host": "127.0.0.1", "port": proxy.port, "dbname": "appdb"}})
        ledger = Ledger(p, pg, f"ledger_partition_{existing}", n=4, deadline=30).start()
        try:
            ledger.wait_commits(30)
            errors_before = sum(ledger.errors().values())
            proxy.partition(reset_existing=existing == "reset")
            t0 = time.monotonic()
            # Several times server_connect_timeout, then healed, whatever the clients do.
            healer = threading.Timer(3.5, proxy.heal)
            healer.start()
            # Meanwhile a new client needs a server: the old ones are gone (reset) or stuck
            # behind the partition (stalled). It gets a clean error, or it is served after the
            # heal, never a hang.
            try:
                with p.wire(timeout=30) as probe:
                    probe.query("SELECT 1")
                outcome = "served"
            except Exception as e:  # noqa: BLE001 -- classified below
                outcome = classify(e)
                assert isinstance(e, pgwire.ServerError) and e.sqlstate, repr(e)
            print(f"new client during the partition: {outcome} after "
                  f"{time.monotonic() - t0:.1f}s")
            if existing == "reset":
                # The pool had to log in through the black hole: server_connect_timeout
                # failed those logins, and the clients were told.
                assert outcome != "served" or sum(ledger.errors().values()) > errors_before
                if IS_SLUICE:
                    assert outcome == "08006", outcome
            healer.join()
            ledger.wait_commits(30, timeout=40)
        finally:
            ledger.stop()
        print(ledger.summary(), f"errors before the partition: {errors_before}")
        check_clean(ledger)
        ledger.assert_durable()
        assert_settled(p, pg, settings["default_pool_size"])
    finally:
        proxy.close()


def test_server_connections_half_closed_under_latency(poolers, pg):
    """Every server connection's PostgreSQL-to-pooler direction ends (EOF) while the pooler's
    direction stays open, under 5 ms of added latency: the pooler treats them as lost."""
    proxy = FaultProxy(pg.port)
    try:
        p = poolers(settings=SETTINGS, databases={
            "appdb": {"host": "127.0.0.1", "port": proxy.port, "dbname": "appdb"}})
        proxy.latency(0.005)
        ledger = Ledger(p, pg, "ledger_half_close", n=4).start()
        try:
            ledger.wait_commits(30)
            assert proxy.half_close_all() > 0
            ledger.wait_commits(30, timeout=40)
        finally:
            ledger.stop()
        print(ledger.summary())
        check_clean(ledger)
        ledger.assert_durable()
        assert_settled(p, pg, SETTINGS["default_pool_size"])
    finally:
        proxy.close()


# -- clients that vanish --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["fin", "rst", "rst_mid_query"])
def test_client_vanishes_mid_transaction(poolers, pg, how):
    """The transaction is rolled back and the server comes back clean: the next client on it
    (pool size 1: the same server, or a new one) finds no transaction, lock or row left."""
    p = poolers(settings={"default_pool_size": 1, "query_wait_timeout": 20})
    with pg.connect("appdb") as c:
        c.execute("DROP TABLE IF EXISTS vanish_t")
        c.execute("CREATE TABLE vanish_t (id int PRIMARY KEY)")
        c.execute("GRANT ALL ON vanish_t TO PUBLIC")
    w = p.wire()
    w.query("BEGIN")
    w.query("INSERT INTO vanish_t VALUES (1)")
    w.query("SELECT pg_advisory_xact_lock(7)")
    w.query("SET LOCAL application_name = 'vanished'")
    if how == "rst_mid_query":
        # sluice cancels the query of a server whose client vanished; PgBouncer 1.18 lets it
        # run to its end (then PostgreSQL finds the connection closed), so it gets a short one.
        w.send(b"Q", f"SELECT pg_sleep({60 if IS_SLUICE else 3}) /* vanishing */\0".encode())
        backend_pid_running(pg, "/* vanishing */")
    if how == "fin":
        w.sock.close()  # no Terminate message: the socket just closes
    else:
        _rst(w.sock)
    if how == "rst_mid_query":
        # The pooler closes that server (it is inside a query); PostgreSQL would only notice at
        # the query's end, holding its locks until then, unless the pooler cancels it.
        wait_until(lambda: not any("/* vanishing */" in (b["query"] or "")
                                   for b in pg.backends(None)), 15, 0.05,
                   "the vanished client's query to end")
    with p.wire(timeout=20) as nxt:
        res = nxt.query("BEGIN")
        assert res.status == b"T" and not res.notices, res  # 25001 would say one was open
        assert nxt.query("SELECT pg_try_advisory_xact_lock(7)").rows == [("t",)]
        assert nxt.query("SELECT count(*) FROM vanish_t").rows == [("0",)]
        assert nxt.query("SHOW application_name").rows != [("vanished",)]
        nxt.query("SET statement_timeout = '5s'")  # a leftover row lock would block this
        nxt.query("INSERT INTO vanish_t VALUES (1)")
        nxt.query("ROLLBACK")
    with pg.connect("appdb") as c:
        assert c.execute("SELECT count(*) FROM vanish_t").fetchone()[0] == 0
    assert_settled(p, pg, 1)


# -- cancels racing server reuse ------------------------------------------------------------------

def _send_cancel(port: int, key: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("!IIII", 16, 80877102, *key))


def test_cancel_racing_server_reuse(poolers, pg):
    """Racers send a CancelRequest the moment their query completes, when their server is being
    handed to the next client; bystanders, never cancelled, must never see 57014."""
    p = poolers(settings={"default_pool_size": 2, "query_wait_timeout": 30})
    n_racers, n_bystanders, duration = 4, 8, 4.0
    stop = threading.Event()
    lock = threading.Lock()
    stats = {"cancels": 0, "racer_57014": 0, "racer_ok": 0, "bystander_ok": 0,
             "bystander_57014": 0}
    bad: list[str] = []

    def guarded(fn):
        def run(i):
            try:
                fn(i)
            except Exception as e:  # noqa: BLE001 -- any of these fails the test
                with lock:
                    bad.append(f"{fn.__name__} {i}: {classify(e)} {e!r}")
        return run

    @guarded
    def racer(i):
        rnd = random.Random(i)
        with p.wire(timeout=20) as w:
            while not stop.is_set():
                w.send(b"Q", f"SELECT pg_sleep(0.00{rnd.randint(1, 9)}) /* racer {i} */\0"
                       .encode())
                err = None
                while True:
                    kind, body = w.read_message()
                    if kind == b"C":
                        # The query is done; its server goes back to the pool once PostgreSQL's
                        # ReadyForQuery (likely already in flight) passes the pooler.
                        if rnd.random() < 0.5:
                            _send_cancel(p.port, w.backend_key)
                            with lock:
                                stats["cancels"] += 1
                    elif kind == b"E":
                        err = pgwire._fields(body).get("C")
                    elif kind == b"Z":
                        break
                if rnd.random() < 0.5 and err is None:
                    _send_cancel(p.port, w.backend_key)  # after ReadyForQuery too
                    with lock:
                        stats["cancels"] += 1
                with lock:
                    if err == "57014":
                        stats["racer_57014"] += 1
                    elif err is None:
                        stats["racer_ok"] += 1
                    else:
                        bad.append(f"racer {i}: {err}")

    @guarded
    def bystander(i):
        with p.wire(timeout=20) as w:
            while not stop.is_set():
                try:
                    w.query(f"SELECT pg_sleep(0.01) /* bystander {i} */")
                    with lock:
                        stats["bystander_ok"] += 1
                except pgwire.ServerError as e:
                    with lock:
                        if e.sqlstate == "57014":
                            stats["bystander_57014"] += 1
                        else:
                            bad.append(f"bystander {i}: {e}")
                    if e.closed:
                        return

    threads = [threading.Thread(target=racer, args=(i,), daemon=True) for i in range(n_racers)]
    threads += [threading.Thread(target=bystander, args=(i,), daemon=True)
                for i in range(n_bystanders)]
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a client hung"
    print(stats)
    assert not bad, bad
    assert stats["cancels"] > 50 and stats["bystander_ok"] > 50, stats
    assert stats["bystander_57014"] == 0, f"a cancel hit another client's query: {stats}"
    assert_settled(p, pg, 2)
