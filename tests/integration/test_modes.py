"""Pool modes: which client gets which server, and when."""

import threading

import pgwire
import pytest
from harness import BackendSampler, errors, run_threads


def backend_pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_session_mode_keeps_one_server_per_client(poolers):
    p = poolers(settings={"pool_mode": "session", "default_pool_size": 2})
    with p.connect() as a, p.connect() as b:
        a.execute("CREATE TEMP TABLE mine (x int)")
        pids_a, pids_b = set(), set()
        for i in range(5):
            with a.transaction():
                a.execute("INSERT INTO mine VALUES (%s)", (i,))
                pids_a.add(backend_pid(a))
            with b.transaction():
                pids_b.add(backend_pid(b))
        assert len(pids_a) == 1 and len(pids_b) == 1, (pids_a, pids_b)
        assert pids_a != pids_b
        # The temp table lives in a's server session, so it survives between transactions.
        assert a.execute("SELECT count(*) FROM mine").fetchone()[0] == 5
        with pytest.raises(Exception):
            b.execute("SELECT count(*) FROM mine")


def test_transaction_mode_shares_servers(poolers, pg):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 2})
    n = 10
    everyone_connected = threading.Barrier(n, timeout=20)

    def client(i):
        pids = set()
        with p.connect() as c:
            everyone_connected.wait()
            for _ in range(5):
                with c.transaction():
                    pids.add(backend_pid(c))
                    c.execute("SELECT pg_sleep(0.02)")
        return pids

    with BackendSampler(pg, "sluice_md5") as sampler:
        results = run_threads(client, n)
    assert not errors(results), errors(results)
    all_pids = set().union(*results)
    assert 1 <= len(all_pids) <= 2, all_pids
    assert sampler.max <= 2, sampler.samples
    # Ten clients on two servers: at least one server served more than one client.
    assert sum(len(r) for r in results) > len(all_pids)


def test_statement_mode_runs_autocommit_statements(poolers, pg):
    p = poolers(settings={"pool_mode": "statement", "default_pool_size": 1})
    with p.connect() as a, p.connect() as b:
        for i in range(3):
            assert a.execute("SELECT %s::int", (i,)).fetchone()[0] == i
            assert b.execute("SELECT 'b'").fetchone()[0] == "b"
        assert backend_pid(a) == backend_pid(b)  # one server, shared statement by statement
    assert pg.backend_count("sluice_md5") <= 1


def test_statement_mode_refuses_explicit_transaction(poolers):
    p = poolers(settings={"pool_mode": "statement"})
    with p.wire() as w:
        assert w.query("SELECT 1").rows == [("1",)]
        with pytest.raises(pgwire.ServerError) as exc:
            w.query("BEGIN")
    # PgBouncer 1.18: FATAL 08P01 "transaction blocks not allowed in statement pooling mode".
    assert "transaction" in exc.value.message
    # A driver that opens transactions implicitly is refused the same way.
    with p.connect(autocommit=False) as c, pytest.raises(Exception) as exc2:
        c.execute("SELECT 1")
    assert "transaction" in str(exc2.value)


def test_session_mode_resets_server_between_clients(poolers):
    p = poolers(settings={"pool_mode": "session", "default_pool_size": 1})
    with p.connect() as a:
        a.execute("CREATE TEMP TABLE leftover (x int)")
        a.execute("SET statement_timeout = '123s'")
        pid = backend_pid(a)
    with p.connect() as b:
        assert backend_pid(b) == pid  # the same server, handed on
        assert b.execute("SHOW statement_timeout").fetchone()[0] != "123s"
        assert b.execute("SELECT to_regclass('pg_temp.leftover')").fetchone()[0] is None


def test_client_gone_mid_transaction_is_rolled_back(poolers, pg):
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("CREATE TABLE IF NOT EXISTS gone_t (x int)")
        c.execute("TRUNCATE gone_t")
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 1,
                          "query_wait_timeout": 10})
    a = p.wire()
    a.query("BEGIN")
    a.query("INSERT INTO gone_t VALUES (1)")
    a.sock.close()  # vanishes without Terminate, transaction open
    with p.connect() as b:
        assert b.execute("SELECT count(*) FROM gone_t").fetchone()[0] == 0
        with b.transaction():  # the server is usable, not stuck in the old transaction
            b.execute("INSERT INTO gone_t VALUES (2)")
        assert b.execute("SELECT array_agg(x) FROM gone_t").fetchone()[0] == [2]
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP TABLE gone_t")


def test_pool_mode_per_user_overrides_the_default(poolers):
    # [users] pool_mode=session for one user while the default is transaction.
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 2},
                user_settings={"sluice_scram": {"pool_mode": "session"}})
    with p.connect("sluice_scram") as a:
        pids = {backend_pid(a) for _ in range(5)}
        a.execute("CREATE TEMP TABLE mine (x int)")
        assert a.execute("SELECT count(*) FROM mine").fetchone()[0] == 0
    assert len(pids) == 1


def test_pool_mode_per_database_overrides_the_default(poolers, pg):
    db = {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb"}
    p = poolers(settings={"pool_mode": "session"},
                databases={"appdb": db, "stmtdb": {**db, "pool_mode": "statement"}})
    with p.wire(dbname="stmtdb") as w:
        with pytest.raises(pgwire.ServerError):
            w.query("BEGIN")
