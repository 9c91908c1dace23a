"""Pool size, client limit, reserve pool and per-database limits."""

import threading
import time

from harness import IS_SLUICE, BackendSampler, errors, run_threads, wait_until


def test_pool_size_holds_under_200_clients(poolers, pg):
    p = poolers(settings={"default_pool_size": 5, "max_client_conn": 300,
                          "query_wait_timeout": 60})
    n = 200
    all_in = threading.Barrier(n, timeout=60)

    def client(i):
        with p.connect() as c:
            all_in.wait()
            for _ in range(3):
                with c.transaction():
                    c.execute("SELECT pg_sleep(0.01)")
        return True

    with BackendSampler(pg, "sluice_md5") as sampler:
        results = run_threads(client, n, timeout=90)
    assert not errors(results), errors(results)[:3]
    assert results.count(True) == n
    assert sampler.max <= 5, f"peak {sampler.max} backends"
    assert sampler.max >= 2, "clients never overlapped; the test did not load the pool"


def test_max_client_conn(poolers):
    p = poolers(settings={"max_client_conn": 3})
    held = [p.connect() for _ in range(3)]
    try:
        err = p.login_error()
        # PgBouncer 1.18: FATAL 08P01 "no more connections allowed (max_client_conn)".
        assert err.severity == "FATAL"
        assert "max_client_conn" in err.message, err
        if IS_SLUICE:
            assert err.sqlstate == "53300", err
        else:
            assert err.message == "no more connections allowed (max_client_conn)"
        for c in held:  # the clients already in are not disturbed
            assert c.execute("SELECT 1").fetchone()[0] == 1
    finally:
        for c in held:
            c.close()
    # A slot that frees up can be used again.
    wait_until(lambda: _connects(p), 10, 0.1, "a freed client slot")


def _connects(p) -> bool:
    try:
        p.connect().close()
        return True
    except Exception:
        return False


def test_reserve_pool_serves_a_waiting_client(poolers, pg):
    p = poolers(settings={"default_pool_size": 2, "reserve_pool_size": 1,
                          "reserve_pool_timeout": 0.5, "query_wait_timeout": 20})
    holders = [p.connect() for _ in range(2)]
    for h in holders:
        h.execute("BEGIN")
        h.execute("SELECT 1")
    assert pg.wait_backends(lambda n: n == 2, "sluice_md5") == 2
    with p.connect() as third:
        t0 = time.monotonic()
        assert third.execute("SELECT 3").fetchone()[0] == 3
        waited = time.monotonic() - t0
    assert 0.4 <= waited <= 5, f"served after {waited:.2f}s"
    assert pg.backend_count("sluice_md5") == 3
    for h in holders:
        h.execute("COMMIT")
        h.close()


def test_max_db_connections_spans_user_pools(poolers, pg):
    # Servers of one user's pool are only closed (making room for the other's) when idle long
    # enough, so keep server_idle_timeout short.
    p = poolers(settings={"default_pool_size": 3, "server_idle_timeout": 1,
                          "query_wait_timeout": 30},
                databases={"appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                                     "max_db_connections": 3}})
    users = ["sluice_md5"] * 3 + ["sluice_trust"] * 3
    seen_users = set()

    def client(i):
        with p.connect(users[i]) as c:
            for _ in range(2):
                with c.transaction():
                    c.execute("SELECT pg_sleep(0.3)")
            seen_users.add(c.execute("SELECT current_user").fetchone()[0])
        return True

    with BackendSampler(pg, None) as sampler:
        results = run_threads(client, len(users), timeout=60)
    assert not errors(results), errors(results)
    assert seen_users == {"sluice_md5", "sluice_trust"}
    assert sampler.max <= 3, f"peak {sampler.max} backends for appdb"
    assert sampler.max >= 2


def test_max_user_connections_spans_database_pools(poolers, pg):
    # Two database entries (two pools) for one user share max_user_connections.
    db = {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb"}
    p = poolers(settings={"default_pool_size": 4, "server_idle_timeout": 1,
                          "query_wait_timeout": 30},
                databases={"appdb": db, "appdb2": db},
                user_settings={"sluice_md5": {"max_user_connections": 2}})
    names = ["appdb", "appdb2"] * 3

    def client(i):
        with p.connect(dbname=names[i]) as c:
            for _ in range(2):
                with c.transaction():
                    c.execute("SELECT pg_sleep(0.2)")
        return True

    with BackendSampler(pg, "sluice_md5") as sampler:
        results = run_threads(client, len(names), timeout=60)
    assert not errors(results), errors(results)
    assert sampler.max <= 2, f"peak {sampler.max} backends for sluice_md5"
