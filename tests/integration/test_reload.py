"""SIGHUP reloads pgbouncer.ini into the running pooler."""

import threading

from harness import BackendSampler, errors, run_threads, wait_until


def test_reload_grows_pool(poolers, pg):
    p = poolers(settings={"default_pool_size": 2, "query_wait_timeout": 60})
    stop = threading.Event()

    def busy(i):
        with p.connect() as c:
            while not stop.is_set():
                with c.transaction():
                    c.execute("SELECT pg_sleep(0.05)")

    worker = threading.Thread(target=lambda: results.extend(run_threads(busy, 8, 60)),
                              daemon=True)
    results: list = []
    worker.start()
    try:
        with BackendSampler(pg, "sluice_md5") as before:
            pg.wait_backends(lambda n: n == 2, "sluice_md5")
            wait_until(lambda: len(before.samples) > 20, 5)
        assert before.max == 2, before.samples
        p.rewrite(settings={"default_pool_size": 4})
        pg.wait_backends(lambda n: n == 4, "sluice_md5", timeout=10)
        with BackendSampler(pg, "sluice_md5") as after:
            wait_until(lambda: len(after.samples) > 20, 5)
        assert after.max == 4, after.samples
    finally:
        stop.set()
        worker.join(30)
    assert not errors(results), errors(results)
    config = {r["key"]: r["value"] for r in p.admin("SHOW CONFIG")}
    assert config["default_pool_size"] == "4"


def test_reload_adds_database(poolers, pg):
    p = poolers()
    p.rewrite(databases={**p.databases, "appdb2": p.default_database("appdb")})

    def connects():
        try:
            with p.connect(dbname="appdb2") as c:
                return c.execute("SELECT current_database()").fetchone()[0]
        except Exception:
            return None
    assert wait_until(connects, 10, 0.1, "appdb2 to appear") == "appdb"
    assert any(r["name"] == "appdb2" for r in p.admin("SHOW DATABASES"))
