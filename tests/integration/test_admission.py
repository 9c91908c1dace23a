"""Admission control (issue 6): a database that is down fails clients fast and comes back by
itself; PostgreSQL's own 53300 keeps clients queued; max_waiting_clients refuses with a message
naming the holders; CoDel sheds stale waiters of a standing queue; min_pool_size is opened
before /readyz says ready; budget_check compares the pools with max_connections; a budget shared
by two pools serves the longest waiter.

sluice only: PgBouncer 1.18 has none of these (it waits out query_wait_timeout, hands
PostgreSQL's 53300 to the client, and serves pools sharing max_db_connections in a fixed order).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import psycopg
import pytest

from harness import free_port, run_threads, sqlstate, wait_until
from test_http import get_json, scrape, start

pytestmark = pytest.mark.sluice_only(reason="admission control is sluice's own")


class Forwarder:
    """A TCP forwarder from a free port to PostgreSQL that can be switched on and off: while
    off nothing listens there (connection refused), as for a database that is down."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target = target_port
        self.loop = asyncio.new_event_loop()
        self.server = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _pipe(self, r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _handle(self, cr, cw):
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, sw), self._pipe(sr, cw))

    def on(self):
        async def start():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)

    def off(self):
        async def stop():
            self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)

    def close(self):
        if self.server:
            self.off()
        self.loop.call_soon_threadsafe(self.loop.stop)


def metric(p, name, **labels):
    """The sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for lab, v in scrape(p).get(name, []):
        if all(lab.get(k) == val for k, val in labels.items()):
            total += v
    return total


def test_a_down_database_fails_clients_fast_and_comes_back(poolers, pg):
    fwd = Forwarder(pg.port)  # off: connection refused
    try:
        p = start(poolers, query_wait_timeout=60, server_login_retry=1, databases={
            "appdb": {"host": "127.0.0.1", "port": fwd.port, "dbname": "appdb"}})
        t0 = time.monotonic()
        err = p.login_error(timeout=30)
        waited = time.monotonic() - t0
        # Not query_wait_timeout's 57014 after 60 s: a retryable connection failure that says
        # since when, after a few failed logins.
        assert err.sqlstate == "08006", err
        assert "is unreachable since" in err.message and "server logins failed in a row" in \
            err.message, err
        assert waited < 30, waited
        # A new client fails at once now.
        t1 = time.monotonic()
        err2 = p.login_error(timeout=30)
        assert err2.sqlstate == "08006" and time.monotonic() - t1 < 5, err2
        status, body = get_json(p.http_port, "/readyz")
        assert status == 503 and body["pools"][0].get("down") is True, body
        assert metric(p, "sluice_pool_database_down") == 1
        assert metric(p, "sluice_client_disconnects_total", reason="database_unavailable") >= 2
        # The database comes back: the janitor's probe login finds it, clients are served.
        fwd.on()

        def served():
            try:
                with p.connect() as c:
                    return c.execute("SELECT 1").fetchone()[0] == 1
            except psycopg.Error:
                return False
        wait_until(served, 20, interval=0.2, what="served again after the database came back")
        assert "reachable again" in p.log()
        wait_until(lambda: get_json(p.http_port, "/readyz")[0] == 200, 10, what="/readyz 200")
        assert metric(p, "sluice_pool_database_down") == 0
    finally:
        fwd.close()


def test_postgres_full_keeps_clients_queued_not_53300(poolers, pg):
    """A role with CONNECTION LIMIT 2 behind a pool of 5: PostgreSQL answers the third login
    with 53300 "too many connections for role". Clients wait for the two servers instead of
    getting that error, and all are served."""
    pg.execute("CREATE ROLE sluice_limited LOGIN PASSWORD 'limitedpass' CONNECTION LIMIT 2")
    try:
        p = start(poolers, default_pool_size=5, query_wait_timeout=30, server_login_retry=1,
                  databases={"appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                                       "user": "sluice_limited", "password": "limitedpass"}})

        def work(i):
            with p.connect() as c:
                for _ in range(3):
                    c.execute("SELECT pg_sleep(0.3)")
            return i
        results = run_threads(work, 6, timeout=60)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures
        assert "too many connections for role" in p.log()  # it did happen, sluice absorbed it
        status, body = get_json(p.http_port, "/readyz")
        assert status == 200, body  # full is degraded at worst, never unavailable
        assert pg.backend_count(user="sluice_limited") <= 2
    finally:
        pg.terminate_all()
        pg.execute("DROP ROLE sluice_limited")


def test_max_waiting_clients_refuses_with_53300_naming_the_holders(poolers, pg):
    p = start(poolers, default_pool_size=1, max_waiting_clients=2, query_wait_timeout=30)
    holder = p.connect(application_name="batch-job")
    holder.execute("BEGIN")
    holder.execute("SELECT 1")
    waiters = []

    def wait_one(i):
        with p.connect(application_name="web") as c:
            return c.execute("SELECT 1").fetchone()[0]
    threads = [threading.Thread(target=lambda: waiters.append(wait_one(0)), daemon=True)
               for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: p.admin("SHOW POOLS")[0]["cl_waiting"] == 2, 10, what="2 waiting")
    time.sleep(1.2)  # the App names the holders about once a second while clients wait
    w = p.wire(application_name="web")
    with pytest.raises(Exception) as exc:
        w.query("SELECT 1")
    err = exc.value
    assert getattr(err, "sqlstate", None) == "53300", err
    assert "max_waiting_clients = 2" in err.message, err.message
    assert 'held by application_name "batch-job" 1' in err.message, err.message
    holder.execute("COMMIT")
    for t in threads:
        t.join(10)
    assert waiters == [1, 1]
    holder.close()
    assert metric(p, "sluice_client_disconnects_total", reason="pool_saturated") == 1


def test_codel_sheds_stale_waiters_of_a_standing_queue(poolers, pg):
    """Pool 1, eight clients each running 0.15 s transactions back to back: the queue stands.
    With CoDel the stale waiters get 53300 while the pool keeps serving; every error is the
    shed one, never query_wait_timeout."""
    p = start(poolers, default_pool_size=1, query_wait_timeout=60, codel_target="50ms",
              codel_interval="300ms", codel_deadline="600ms")
    stop = time.monotonic() + 6
    standing_seen = []

    def watch():
        while time.monotonic() < stop:
            if metric(p, "sluice_pool_queue_standing") == 1:
                standing_seen.append(True)
                return
            time.sleep(0.1)
    wt = threading.Thread(target=watch, daemon=True)
    wt.start()

    def work(i):
        done, shed = 0, []
        while time.monotonic() < stop:
            try:
                with p.connect(application_name=f"w{i}") as c:
                    while time.monotonic() < stop:
                        c.execute("SELECT pg_sleep(0.15)")
                        done += 1
            except psycopg.Error as e:
                shed.append((sqlstate(e), str(e)))
        return done, shed
    results = run_threads(work, 8, timeout=60)
    wt.join(5)
    errs = [e for r in results for e in r[1]]
    assert sum(r[0] for r in results) > 10, results
    assert errs, "a standing queue should have shed someone"
    # libpq loses the SQLSTATE of an error that comes right before the close: check the text.
    assert all(s in ("53300", None) and "codel_deadline" in m for s, m in errs), errs
    assert standing_seen, "sluice_pool_queue_standing never reported 1"
    assert metric(p, "sluice_pool_timeouts_total", kind="codel_deadline") == len(errs)


def test_min_pool_size_is_open_before_readyz_and_before_any_client(poolers, pg):
    p = start(poolers, min_pool_size=3, default_pool_size=5, databases={
        "appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                  "user": "sluice_trust"}})
    pg.wait_backends(lambda n: n == 3, user="sluice_trust", timeout=10)
    wait_until(lambda: get_json(p.http_port, "/readyz")[0] == 200, 10, what="/readyz ready")
    assert metric(p, "sluice_pool_warming") == 0
    rows = p.admin("SHOW SERVERS")
    assert len(rows) == 3, rows


def test_readyz_waits_for_min_pool_size(poolers, pg):
    fwd = Forwarder(pg.port)
    try:
        p = start(poolers, min_pool_size=2, server_login_retry=1, databases={
            "appdb": {"host": "127.0.0.1", "port": fwd.port, "dbname": "appdb",
                      "user": "sluice_trust"}})
        status, body = get_json(p.http_port, "/readyz")
        assert status == 503, body
        fwd.on()
        wait_until(lambda: get_json(p.http_port, "/readyz")[0] == 200, 20, what="/readyz ready")
        assert pg.backend_count(user="sluice_trust") >= 2
    finally:
        fwd.close()


def test_budget_check_refuses_or_warns(poolers, pg):
    max_conn = int(pg.execute("SHOW max_connections")[0][0])
    big = max_conn + 50
    dbs = {"appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                     "user": "sluice_trust", "pool_size": big}}
    p = poolers(settings={"budget_check": "refuse"}, databases=dbs, start=False)
    out = subprocess.run(p.command(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    assert "budget_check" in out.stderr and str(max_conn) in out.stderr, out.stderr
    p2 = poolers(databases=dbs)  # default: warn, and start
    wait_until(lambda: "budget_check:" in p2.log(), 10, what="the budget warning")
    with p2.connect(user="sluice_trust") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_a_shared_budget_serves_the_longest_waiter_not_the_first_pool(poolers, pg):
    """max_db_connections = 1 shared by two users' pools, both busy: each must get turns (a
    pool that holds the one slot must not keep it while the other pool's clients wait)."""
    p = start(poolers, max_db_connections=1, default_pool_size=1, query_wait_timeout=20)
    stop = time.monotonic() + 5
    b_done = []

    def flood(i):
        n = 0
        with p.connect(user="sluice_md5") as c:
            while time.monotonic() < stop:
                c.execute("SELECT pg_sleep(0.05)")
                n += 1
        return n

    def other():
        with p.connect(user="sluice_trust") as c:
            while time.monotonic() < stop:
                c.execute("SELECT pg_sleep(0.05)")
                b_done.append(1)
    bt = threading.Thread(target=other, daemon=True)
    bt.start()
    results = run_threads(flood, 6, timeout=60)
    bt.join(30)
    assert not [r for r in results if isinstance(r, BaseException)], results
    a_done = sum(results)
    print(f"shared budget: user A (6 clients) {a_done} transactions, user B (1 client) "
          f"{len(b_done)}")
    # Served by who waited longest, each pool gets turns in proportion to its waiting clients.
    # (Before, whichever pool got the slot first kept it: A 0, B 98.)
    assert a_done >= 5 and len(b_done) >= 3, (a_done, len(b_done))


def test_adaptive_pool_size_shrinks_under_cpu_contention_and_serves_everyone(poolers, pg):
    """pool_size_mode = adaptive, pool 16, 16 clients running CPU-bound queries on a 2-core
    machine: each query takes many times longer when 16 run at once than when 2 do, so the limit
    must come down from 16 (PostgreSQL was queueing the work on its CPUs), and every query still
    succeeds. The limit is in /metrics and in SHOW POOLS."""
    p = start(poolers, pool_size_mode="adaptive", default_pool_size=16, min_pool_size=1,
              query_wait_timeout=60)
    stop = time.monotonic() + 8
    limits = []

    def watch():
        while time.monotonic() < stop:
            v = metric(p, "sluice_pool_server_limit")
            if v > 0:  # 0 until the pool exists
                limits.append(v)
            time.sleep(0.2)
    wt = threading.Thread(target=watch, daemon=True)
    wt.start()

    def work(i):
        n = 0
        with p.connect(application_name="crunch") as c:
            while time.monotonic() < stop:
                c.execute("SELECT count(*) FROM generate_series(1, 200000)")
                n += 1
        return n
    results = run_threads(work, 16, timeout=90)
    wt.join(5)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(results) > 0
    print(f"adaptive limit over the run: {limits}")
    # It starts at the minimum and grows while latency stays near its base; on 2 cores, 16
    # concurrent CPU-bound queries take several times longer, so it never reaches 16.
    assert limits and max(limits[len(limits) // 2:]) < 16, limits
    assert min(limits) >= 1
    row = p.admin("SHOW POOLS")[0]
    assert "sluice_limit" in row and 1 <= row["sluice_limit"] <= 16, row
