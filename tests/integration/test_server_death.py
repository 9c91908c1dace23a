"""A server that dies is noticed, its client told, and the pool carries on."""

import time

import pgwire
import pytest
from harness import IS_SLUICE, wait_until


def test_server_killed_mid_transaction(poolers, pg):
    p = poolers(settings={"default_pool_size": 1, "query_wait_timeout": 20})
    with p.wire() as victim:
        victim.query("BEGIN")
        pid = int(victim.query("SELECT pg_backend_pid()").rows[0][0])
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        t0 = time.monotonic()
        with pytest.raises((pgwire.ServerError, pgwire.ConnectionClosed, OSError)) as exc:
            victim.query("SELECT 1")
        assert time.monotonic() - t0 < 5
    if not IS_SLUICE:
        # PgBouncer 1.18 relays PostgreSQL's FATAL 57P01 and closes the client (then sends its
        # own FATAL 08P01 "server conn crashed?", which libpq shows too).
        assert isinstance(exc.value, pgwire.ServerError) and exc.value.sqlstate == "57P01"
    with p.connect() as fresh:
        new_pid = fresh.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert new_pid != pid


def test_idle_server_killed_is_replaced_transparently(poolers, pg):
    p = poolers(settings={"default_pool_size": 1})
    with p.connect() as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: pid not in {b["pid"] for b in pg.backends("sluice_md5")}, 5)
        # Between transactions the client holds no server, so it must not notice the loss.
        new_pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert new_pid != pid


def test_all_servers_killed_mid_transaction(poolers, pg):
    p = poolers(settings={"default_pool_size": 3, "query_wait_timeout": 20})
    conns = [p.connect() for _ in range(3)]
    try:
        for c in conns:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        pg.terminate_all()
        for c in conns:
            with pytest.raises(Exception):
                c.execute("SELECT 1")
        with p.connect() as fresh:
            assert fresh.execute("SELECT 1").fetchone()[0] == 1
        assert pg.backend_count("sluice_md5") >= 1
    finally:
        for c in conns:
            c.close()
