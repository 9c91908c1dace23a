"""Cancel requests reach the query they were meant for and no other."""

import threading
import time

import psycopg
import pytest
from harness import wait_until


def test_cancel_hits_only_its_client(poolers, pg):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 3,
                          "query_wait_timeout": 60})
    n, victim = 10, 4
    conns = [p.connect() for _ in range(n)]
    try:
        def client(i):
            try:
                conns[i].execute(f"SELECT pg_sleep(1) /* client {i} */")
                return ("ok", time.monotonic())
            except psycopg.Error as e:
                return (e.sqlstate, time.monotonic())

        results = [None] * n
        threads = []
        for i in range(n):
            def run(i=i):
                results[i] = client(i)
            t = threading.Thread(target=run, daemon=True)
            threads.append(t)
            t.start()
        # Cancel the victim once its query is running on a server.
        wait_until(lambda: any(f"/* client {victim} */" in (b["query"] or "")
                               and b["state"] == "active"
                               for b in pg.backends("sluice_md5")),
                   20, 0.02, "the victim's query to run")
        canceled_at = time.monotonic()
        conns[victim].cancel()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert results[victim][0] == "57014", results
        late = results[victim][1] - canceled_at
        assert late < 0.5, f"victim's query ended {late:.2f}s after the cancel"
        others = [r for i, r in enumerate(results) if i != victim]
        assert all(r[0] == "ok" for r in others), results
        # The victim's connection is still usable, and nobody else got hurt.
        assert conns[victim].execute("SELECT 1").fetchone()[0] == 1
        for c in conns:
            assert c.execute("SELECT 2").fetchone()[0] == 2
    finally:
        for c in conns:
            c.close()


def test_cancel_after_query_finished_is_harmless(poolers):
    p = poolers(settings={"default_pool_size": 1})
    with p.connect() as a, p.connect() as b:
        a.execute("SELECT 1")
        a.cancel()  # nothing running: must not cancel whatever b runs on the shared server
        assert b.execute("SELECT pg_sleep(0.3), 7").fetchone()[1] == 7
        assert a.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.sluice_only(reason="PgBouncer 1.18 drops a cancel request for a client that is "
                         "waiting for a server; the query runs once a server frees up")
def test_cancel_while_waiting_for_a_server(poolers):
    p = poolers(settings={"default_pool_size": 1, "query_wait_timeout": 30})
    with p.connect() as holder, p.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        outcome = {}

        def wait():
            t0 = time.monotonic()
            try:
                waiter.execute("SELECT 1")
                outcome["result"] = "ok"
            except psycopg.Error as e:
                outcome["result"] = e.sqlstate
            outcome["t"] = time.monotonic() - t0
        t = threading.Thread(target=wait, daemon=True)
        t.start()
        wait_until(lambda: any(r["cl_waiting"] for r in p.admin("SHOW POOLS")
                               if r["database"] == "appdb"), 10, 0.05, "a waiting client")
        waiter.cancel()
        t.join(10)
        assert not t.is_alive(), "canceled waiter still waiting"
        assert outcome["result"] == "57014", outcome
        holder.execute("COMMIT")
        assert waiter.execute("SELECT 1").fetchone()[0] == 1
