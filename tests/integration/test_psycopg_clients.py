"""psycopg 3 features through the pooler: pipeline mode, parameters, errors."""

import psycopg
import pytest


def test_pipeline_autocommit(poolers):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 1})
    with p.connect() as c, p.connect() as other:
        with c.pipeline():
            curs = [c.execute("SELECT %s::int, pg_backend_pid()", (i,)) for i in range(10)]
        assert [cur.fetchone()[0] for cur in curs] == list(range(10))
        assert other.execute("SELECT 'other'").fetchone()[0] == "other"


def test_pipeline_in_transaction(poolers, pg):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 1})
    with p.connect() as c:
        with c.transaction(), c.pipeline():
            c.execute("CREATE TEMP TABLE pipe_t (x int) ON COMMIT DROP")
            for i in range(20):
                c.execute("INSERT INTO pipe_t VALUES (%s)", (i,))
            cur = c.execute("SELECT sum(x) FROM pipe_t")
        assert cur.fetchone()[0] == sum(range(20))


def test_pipeline_error_recovers(poolers):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 1})
    with p.connect() as c:
        with pytest.raises(psycopg.errors.DivisionByZero):
            with c.pipeline():
                c.execute("SELECT 1")
                c.execute("SELECT 1 / %s::int", (0,))
                c.execute("SELECT 3")
        assert c.execute("SELECT %s::int", (5,)).fetchone()[0] == 5


def test_binary_parameters_and_results(poolers):
    p = poolers()
    with p.connect() as c:
        cur = c.cursor(binary=True)
        row = cur.execute("SELECT %b::bytea, %s::numeric, %s::text[]",
                          (b"\x00\xff" * 1000, 3.25, ["a", "b"])).fetchone()
        assert row == (b"\x00\xff" * 1000, pytest.approx(3.25), ["a", "b"])
