"""Zero-downtime operations (issue 7): RELOAD under load loses no transaction; SHUTDOWN and SIGINT
drain (in-flight transactions complete, new clients are refused cleanly); a rolling restart with
so_reuseport hands new clients to a second process while the first drains, with no client error.

The clients are `faultlib.Ledger`s: rows inserted in transactions, each COMMIT the pooler
acknowledged checked in the table afterwards, every error classified (a SQLSTATE, or an unclean
close, reset or hang). See tests/integration/test_faults.py for the fault scenarios.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pgwire
import psycopg
import pytest
from faultlib import Ledger, assert_settled, classify
from harness import IS_SLUICE, PASSWORDS, wait_until

MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def config_value(p, key: str) -> str:
    return {r["key"]: r["value"] for r in p.admin("SHOW CONFIG")}[key]


@pytest.mark.parametrize("how", ["console", "sighup"])
def test_reload_under_load_loses_no_transaction(poolers, pg, how):
    p = poolers(settings={"default_pool_size": 3, "query_wait_timeout": 30})
    steady = Ledger(p, pg, f"ledger_reload_{how}", n=4).start()
    churn = Ledger(p, pg, f"ledger_reload_churn_{how}", n=2, reconnect_each=True).start()
    try:
        steady.wait_commits(20)
        for size in (5, 2, 4, 3):  # grow, shrink below the clients, grow, back
            p.rewrite(settings={"default_pool_size": size}, reload=False)
            if how == "console":
                p.admin("RELOAD")
            else:
                p.reload()
            wait_until(lambda: config_value(p, "default_pool_size") == str(size), 10, 0.05,
                       f"default_pool_size {size} to be loaded")
            steady.wait_commits(20)
            churn.wait_commits(5)
    finally:
        steady.stop()
        churn.stop()
    print(steady.summary(), churn.summary())
    for ledger in (steady, churn):
        assert not ledger.errors(), ledger.summary()  # not even a clean error
        ledger.assert_durable()
    assert_settled(p, pg, 3)


def new_client_refused(p) -> str | None:
    """How a new client is turned away now: 'refused' (nothing listens), a SQLSTATE, or None if
    it got in. Anything else (a hang, a close without an error) fails the test."""
    try:
        with p.wire(timeout=10) as w:
            w.query("SELECT 1")
        return None
    except ConnectionRefusedError:
        return "refused"
    except pgwire.ServerError as e:
        assert e.sqlstate, e.fields
        return e.sqlstate
    except (OSError, pgwire.ConnectionClosed) as e:
        raise AssertionError(f"a new client was turned away uncleanly: {classify(e)} {e!r}")


@pytest.mark.parametrize("how", ["console", "sigint"])
def test_shutdown_lets_open_transactions_commit(poolers, pg, how):
    if how == "console" and not IS_SLUICE:
        pytest.skip("PgBouncer 1.18's SHUTDOWN exits at once (WAIT_FOR_SERVERS came in 1.23)")
    p = poolers(settings={"default_pool_size": 4})
    with pg.connect("appdb") as c:
        c.execute("DROP TABLE IF EXISTS drain_t")
        c.execute("CREATE TABLE drain_t (client int, seq int, PRIMARY KEY (client, seq))")
        c.execute("GRANT ALL ON drain_t TO PUBLIC")
    open_tx = [p.wire(timeout=20) for _ in range(3)]
    for i, w in enumerate(open_tx):
        w.query("BEGIN")
        w.query(f"INSERT INTO drain_t VALUES ({i}, 0)")
    idle = p.wire(timeout=20)
    idle.query("SELECT 1")
    if how == "console":
        p.admin("SHUTDOWN")
    else:
        p.kill(signal.SIGINT)
    # New clients are turned away at once, cleanly, while the transactions are still open.
    # (PgBouncer 1.18 keeps listening and lets them wait until it exits.)
    if IS_SLUICE:
        refusal = wait_until(lambda: new_client_refused(p), 10, 0.05, "new clients to be refused")
        print(f"a new client during the drain: {refusal}")
    assert p.running, "the pooler exited with transactions still open"
    # The client between transactions is told and closed (PgBouncer 1.18 keeps it until exit).
    if IS_SLUICE:
        err = idle.wait_error(10)
        assert err is not None and err.sqlstate == "57P01", err
    # Every open transaction goes on and commits.
    for i, w in enumerate(open_tx):
        w.query(f"INSERT INTO drain_t VALUES ({i}, 1)")
        assert w.query("COMMIT").tags == ["COMMIT"]
    assert p.wait_exit(15) == 0, p.log()[-3000:]
    for w in open_tx:
        w.sock.close()
    idle.sock.close()
    with pg.connect("appdb") as c:
        rows = set(c.execute("SELECT client, seq FROM drain_t").fetchall())
    assert rows == {(i, s) for i in range(3) for s in (0, 1)}, rows
    pg.wait_backends(lambda k: k == 0, "sluice_md5", timeout=10)


@pytest.fixture
def tcp_migrate_req():
    """Sets net.ipv4.tcp_migrate_req (Linux >= 5.14) for the test and restores it afterwards."""
    if not MIGRATE_REQ.exists():
        pytest.skip("no net.ipv4.tcp_migrate_req on this kernel (needs Linux 5.14)")
    old = MIGRATE_REQ.read_text().strip()

    def set_to(value: str) -> None:
        try:
            MIGRATE_REQ.write_text(value)
        except OSError as e:
            pytest.skip(f"cannot write {MIGRATE_REQ}: {e}")
    yield set_to
    MIGRATE_REQ.write_text(old)


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queues of the listeners on port (ss's Recv-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


@pytest.mark.sluice_only(reason="PgBouncer 1.18 has no shutdown that waits for clients (SIGTERM "
                         "exits at once, SIGINT closes idle clients); 1.23's SIGTERM does")
def test_rolling_restart_with_so_reuseport(poolers, pg, tcp_migrate_req):
    """Old and new process share the port (so_reuseport); the old one gets SIGTERM: it closes its
    listener (the kernel moves connections still in its accept queue to the new one, with
    tcp_migrate_req = 1) and serves its connected clients until they leave. Clients that connect
    per transaction, and long-lived ones that reconnect afterwards, see no error at all."""
    tcp_migrate_req("1")
    settings = {"so_reuseport": 1, "default_pool_size": 4, "query_wait_timeout": 30}
    old = poolers(settings=settings)
    # Same port, same unix socket path: the new process takes the path over.
    new = poolers(settings={**settings, "listen_port": old.port,
                            "unix_socket_dir": str(old.sockdir)}, start=False)
    new.port = old.port
    churn = Ledger(old, pg, "ledger_rolling_churn", n=6, reconnect_each=True).start()
    long_lived = Ledger(old, pg, "ledger_rolling_long", n=3).start()
    after = None
    try:
        churn.wait_commits(30)
        long_lived.wait_commits(30)
        new.start()
        wait_until(lambda: "listening on 127.0.0.1" in new.log(), 10, 0.05, "the new process")
        # The hard case: connections the kernel completed for the old listener that the old
        # process has not accepted yet when it closes it. Stopping it for a moment fills its
        # accept queue (the kernel spreads new connections over both listeners).
        old.kill(signal.SIGSTOP)
        try:
            try:
                wait_until(lambda: accept_queue(old.port) >= 2, 5, 0.01, "a queue")
            except AssertionError:
                print("fewer than 2 connections queued on the old listener; going on")
        finally:
            old.kill(signal.SIGTERM)
            old.kill(signal.SIGCONT)
        wait_until(lambda: "SIGTERM" in old.log(), 10, 0.05, "the old process to get SIGTERM")
        # New connections reach the new process now; the old one still serves its clients.
        churn.wait_commits(60)
        long_lived.wait_commits(30)
        assert old.running, "the old process left before its clients did"
        # The long-lived clients leave (as after a deploy) and come back: to the new process.
        long_lived.stop()
        assert old.wait_exit(15) == 0, old.log()[-3000:]
        after = Ledger(new, pg, "ledger_rolling_after", n=3).start()
        after.wait_commits(30)
        churn.wait_commits(30)
    finally:
        churn.stop()
        long_lived.stop()
        if after is not None:
            after.stop()
    ledgers = [churn, long_lived] + ([after] if after else [])
    print(*(ledger.summary() for ledger in ledgers))
    for ledger in ledgers:
        assert not ledger.errors(), ledger.summary()
        ledger.assert_durable()
    stats = {r["database"]: r for r in new.admin("SHOW STATS")}
    assert int(stats["appdb"]["total_xact_count"]) > 0
    # The old process, leaving, did not remove the new one's unix socket.
    with psycopg.connect(host=str(old.sockdir), port=old.port, dbname="appdb",
                         user="sluice_md5", password=PASSWORDS["sluice_md5"],
                         connect_timeout=10) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert_settled(new, pg, 4)


@pytest.mark.sluice_only(reason="sluice's own start-up check")
def test_reuseport_start_up_warning(poolers, tcp_migrate_req):
    warning = "so_reuseport is on but net.ipv4.tcp_migrate_req is 0"
    tcp_migrate_req("0")
    p = poolers(settings={"so_reuseport": 1})
    assert warning in p.log(), p.log()
    assert "sysctl -w net.ipv4.tcp_migrate_req=1" in p.log()
    r = poolers(settings={"so_reuseport": 0})
    assert warning not in r.log()
    tcp_migrate_req("1")
    q = poolers(settings={"so_reuseport": 1})
    assert warning not in q.log(), q.log()
