"""Shutting down never loses a transaction the client saw committed."""

import signal
import threading

import pytest
from harness import wait_until


@pytest.fixture
def shutdown_table(pg):
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP TABLE IF EXISTS shutdown_t")
        c.execute("CREATE TABLE shutdown_t (client int, seq int, PRIMARY KEY (client, seq))")
    yield "shutdown_t"
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP TABLE shutdown_t")


def test_sigint_keeps_acknowledged_commits(poolers, pg, shutdown_table):
    p = poolers(settings={"default_pool_size": 3, "query_wait_timeout": 30})
    n = 6
    acked: list[set] = [set() for _ in range(n)]
    stop = threading.Event()

    def client(i):
        try:
            with p.connect() as c:
                seq = 0
                while not stop.is_set():
                    c.execute("BEGIN")
                    c.execute("INSERT INTO shutdown_t VALUES (%s, %s)", (i, seq))
                    c.execute("SELECT pg_sleep(0.005)")
                    c.execute("COMMIT")
                    acked[i].add(seq)  # only after the pooler relayed COMMIT's success
                    seq += 1
        except Exception:
            pass  # expected once the pooler goes away

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(map(len, acked)) >= 100, 20, what="100 commits")
    p.kill(signal.SIGINT)
    assert p.wait_exit(20) == 0, p.log()[-3000:]
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a client hung after the pooler exited"
    with pg.connect("appdb") as direct:
        stored = {(c, s) for c, s in direct.execute("SELECT client, seq FROM shutdown_t")}
    missing = {(i, s) for i in range(n) for s in acked[i]} - stored
    assert not missing, f"{len(missing)} acknowledged commits lost, e.g. {sorted(missing)[:5]}"
    # Nothing is left half-done on the servers either.
    pg.wait_backends(lambda k: k == 0, "sluice_md5", timeout=10)


def test_sigint_with_idle_clients_exits_promptly(poolers):
    p = poolers(settings={"pool_mode": "transaction"})
    conns = [p.connect() for _ in range(3)]
    for c in conns:
        c.execute("SELECT 1")
    p.kill(signal.SIGINT)
    assert p.wait_exit(15) == 0
    for c in conns:
        with pytest.raises(Exception):
            c.execute("SELECT 1")
        c.close()
