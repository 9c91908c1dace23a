"""The client matrix of issue 4: real client libraries, many concurrent workers sharing a smaller
pool in transaction mode, named prepared statements, DEALLOCATE ALL and a DDL change mid-run.

Every workload writes rows tagged with its worker's id and reads back exactly its own values (and
its own running balance), so a statement run on the wrong server, a result from another client or
a lost write fails the test, not only an error. After each run the test checks the tables on
PostgreSQL directly, and that the pool really was smaller than the number of clients.

The clients live in tests/clients/ (node: `npm ci` from scripts/setup; java: compiled here with
javac against Debian's pgJDBC); SQLAlchemy and psycopg run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

import harness
from harness import BackendSampler

pytestmark = [pytest.mark.sluice_only("PgBouncer 1.18 has no prepared statement support in "
                                      "transaction mode"),
              pytest.mark.concurrency]

POOL_SIZE = 3
WORKERS = 12
ITERATIONS = 36
SETTINGS = {"pool_mode": "transaction", "default_pool_size": POOL_SIZE, "max_client_conn": 200,
            "query_wait_timeout": 60}
CLIENTS = harness.REPO / "tests" / "clients"
NODE_DIR = CLIENTS / "node"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")


def _require(ok: bool, what: str) -> None:
    """Skips only when a runtime is truly missing; scripts/setup installs all of them."""
    if not ok:
        pytest.skip(f"{what} missing: run scripts/setup")


@pytest.fixture
def tables(pg, request):
    """Fresh tables for one test: (rows table, balance table), both owned by sluice_md5."""
    base = "mx_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:40]
    t, acct = base, base + "_acct"
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute(f"DROP TABLE IF EXISTS {t}, {acct}")
        c.execute(f"CREATE TABLE {t} (worker int, seq int, val text NOT NULL, "
                  f"PRIMARY KEY (worker, seq))")
        c.execute(f"CREATE TABLE {acct} (worker int PRIMARY KEY, balance bigint NOT NULL)")
        c.execute(f"INSERT INTO {acct} SELECT g, 0 FROM generate_series(0, %s) g",
                  (WORKERS - 1,))
    yield t, acct
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute(f"DROP TABLE IF EXISTS {t}, {acct}")


def check_tables(pg, tables, workers: int = WORKERS, iterations: int = ITERATIONS,
                 ddl: bool = True) -> None:
    """What PostgreSQL itself holds after a run: every row of every worker, every balance."""
    t, acct = tables
    with pg.connect("appdb") as c:
        rows = c.execute(f"SELECT worker, seq, val FROM {t} ORDER BY worker, seq").fetchall()
        assert rows == [(w, j, f"w{w}-{j}") for w in range(workers) for j in range(iterations)]
        balances = c.execute(f"SELECT worker, balance FROM {acct} ORDER BY worker").fetchall()
        assert balances == [(w, sum(range(iterations))) for w in range(workers)]
        cols = [r[0] for r in c.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (t,)).fetchall()]
        assert cols == (["worker", "seq", "val", "note"] if ddl else ["worker", "seq", "val"])


def workload_env(p, tables) -> dict:
    t, acct = tables
    return {**p.env(), "PGDATABASE": "appdb", "MX_TABLE": t, "MX_ACCT": acct,
            "MX_WORKERS": str(WORKERS), "MX_ITERATIONS": str(ITERATIONS)}


def run_json(cmd: list[str], env: dict, cwd: Path, timeout: float = 90) -> dict:
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"exit {r.returncode}, no result line\nstdout:\n{r.stdout[-3000:]}\n" \
                  f"stderr:\n{r.stderr[-3000:]}"
    out = json.loads(lines[-1])
    assert out["ok"] and r.returncode == 0, json.dumps(out, indent=1)[:6000] + r.stderr[-2000:]
    return out["stats"]


# -- Node.js ------------------------------------------------------------------------------------

def node_ready() -> None:
    _require(shutil.which("node") is not None, "node")
    _require((NODE_DIR / "node_modules" / "pg").is_dir()
             and (NODE_DIR / "node_modules" / "postgres").is_dir(),
             "tests/clients/node/node_modules (npm ci)")


@pytest.mark.parametrize("driver", ["pg", "postgres"])
def test_node(poolers, pg, tables, driver):
    """node-postgres with named queries; postgres.js with its default prepare: true."""
    node_ready()
    p = poolers(settings=SETTINGS)
    with BackendSampler(pg, "sluice_md5") as sampler:
        stats = run_json(["node", "workload.js", driver], workload_env(p, tables), NODE_DIR)
    # Each worker got past its DEALLOCATE ALL: node-postgres saw its named statement gone, in its
    # own words, as PostgreSQL says it; postgres.js prepared again on that 26000 by itself.
    assert stats["deallocate_26000"] == WORKERS, stats
    # Worker 0 itself reads the new column after its ALTER; others as they get there.
    assert stats["after_ddl_reads"] >= ITERATIONS - ITERATIONS // 2, stats
    check_tables(pg, tables)
    assert 1 <= sampler.max <= POOL_SIZE, sampler.samples


# -- Java ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def java_classes(tmp_path_factory) -> Path:
    """tests/clients/java compiled against Debian's pgJDBC into a temp dir."""
    _require(shutil.which("javac") is not None and shutil.which("java") is not None, "a JDK")
    _require(JDBC_JAR.exists(), f"{JDBC_JAR} (libpostgresql-jdbc-java)")
    out = tmp_path_factory.mktemp("java")
    r = subprocess.run(["javac", "-d", str(out), "-cp", str(JDBC_JAR),
                        str(CLIENTS / "java" / "Workload.java")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_jdbc(poolers, pg, tables, java_classes):
    """pgJDBC with prepareThreshold=1 (every statement named from its first run), transactions,
    DatabaseMetaData, DEALLOCATE ALL (pgJDBC notices the tag) and an ALTER TABLE mid-run."""
    p = poolers(settings=SETTINGS)
    with BackendSampler(pg, "sluice_md5") as sampler:
        stats = run_json(["java", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                          "-cp", f"{JDBC_JAR}:{java_classes}", "Workload"],
                         workload_env(p, tables), CLIENTS / "java")
    assert stats["after_ddl_reads"] >= ITERATIONS - ITERATIONS // 2, stats
    assert stats["metadata_calls"] >= 2 * WORKERS, stats
    check_tables(pg, tables)
    assert 1 <= sampler.max <= POOL_SIZE, sampler.samples


# -- SQLAlchemy ---------------------------------------------------------------------------------
# Debian 12's SQLAlchemy is 1.4, which has no psycopg 3 dialect (postgresql+psycopg is 2.0): the
# psycopg flavour is postgresql+psycopg2 (client-side parameters, no server-side statements);
# psycopg 3 itself, with server-side statements, is test_psycopg3 below.

def _sql(tables) -> dict:
    t, acct = tables
    return {
        "ins": f"INSERT INTO {t} (worker, seq, val) VALUES (:w, :j, :v)",
        "upd": f"UPDATE {acct} SET balance = balance + :j WHERE worker = :w",
        "bal": f"SELECT balance FROM {acct} WHERE worker = :w",
        "agg": f"SELECT count(*), coalesce(sum(seq), 0) FROM {t} WHERE worker = :w",
        "one": f"SELECT val FROM {t} WHERE worker = :w AND seq = :j",
        "note": f"SELECT note, val FROM {t} WHERE worker = :w AND seq = :j",
        "all": f"SELECT seq, val FROM {t} WHERE worker = :w ORDER BY seq",
        "ddl": f"ALTER TABLE {t} ADD COLUMN note text NOT NULL DEFAULT 'noted'",
    }


def _check_iteration(w: int, j: int, balance: int, agg, one) -> None:
    assert tuple(agg) == (j + 1, j * (j + 1) // 2), (w, j, agg)
    assert one == f"w{w}-{j}", (w, j, one)


@pytest.mark.parametrize("poolclass", ["QueuePool", "NullPool"])
def test_sqlalchemy_asyncpg(poolers, pg, tables, poolclass):
    """SQLAlchemy's asyncpg dialect with asyncpg's and SQLAlchemy's default statement caches
    (no statement_cache_size=0, which PgBouncer users need), concurrent asyncio tasks."""
    import asyncio

    from sqlalchemy import pool, text
    from sqlalchemy.ext.asyncio import create_async_engine

    p = poolers(settings=SETTINGS)
    kw = p.conn_kwargs()
    q = {k: text(v) for k, v in _sql(tables).items()}
    ddl_done = asyncio.Event()
    counts = {"after_ddl": 0}

    async def worker(engine, w):
        balance = 0
        for j in range(ITERATIONS):
            async with engine.begin() as c:
                await c.execute(q["ins"], {"w": w, "j": j, "v": f"w{w}-{j}"})
                await c.execute(q["upd"], {"w": w, "j": j})
                b = (await c.execute(q["bal"], {"w": w})).scalar_one()
            balance += j
            assert b == balance, (w, j, b, balance)
            async with engine.connect() as c:
                agg = (await c.execute(q["agg"], {"w": w})).one()
                one = (await c.execute(q["one"], {"w": w, "j": j})).scalar_one()
                _check_iteration(w, j, balance, agg, one)
                if j == ITERATIONS // 3:
                    # What an application does after DEALLOCATE ALL: tell the driver, whose cached
                    # statements are gone (asyncpg then Closes the old names, a no-op).
                    await c.exec_driver_sql("DEALLOCATE ALL")
                    engine.sync_engine.dialect._invalidate_schema_cache()
                    assert (await c.execute(q["agg"], {"w": w})).one()[0] == j + 1
                if w == 0 and j == ITERATIONS // 2:
                    await c.execute(q["ddl"])
                    await c.commit()
                    ddl_done.set()
                if ddl_done.is_set():
                    row = (await c.execute(q["note"], {"w": w, "j": j})).one()
                    assert tuple(row) == ("noted", f"w{w}-{j}"), row
                    counts["after_ddl"] += 1
        async with engine.connect() as c:
            rows = (await c.execute(q["all"], {"w": w})).all()
        assert [tuple(r) for r in rows] == [(j, f"w{w}-{j}") for j in range(ITERATIONS)]

    async def main():
        url = (f"postgresql+asyncpg://{kw['user']}:{kw['password']}@127.0.0.1:{p.port}/appdb")
        args = ({"poolclass": pool.NullPool} if poolclass == "NullPool"
                else {"pool_size": 4, "max_overflow": 0, "pool_timeout": 30})
        engine = create_async_engine(url, connect_args={"timeout": 10}, **args)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(worker(engine, w) for w in range(WORKERS))), 60)
        finally:
            await engine.dispose()

    with BackendSampler(pg, "sluice_md5") as sampler:
        asyncio.run(main())
    assert counts["after_ddl"] >= ITERATIONS - ITERATIONS // 2, counts
    check_tables(pg, tables)
    assert 1 <= sampler.max <= POOL_SIZE, sampler.samples


@pytest.mark.parametrize("poolclass", ["QueuePool", "NullPool"])
def test_sqlalchemy_psycopg2(poolers, pg, tables, poolclass):
    """SQLAlchemy's psycopg2 dialect, QueuePool and NullPool, concurrent threads."""
    import threading

    from sqlalchemy import create_engine, pool, text

    p = poolers(settings=SETTINGS)
    kw = p.conn_kwargs()
    q = {k: text(v) for k, v in _sql(tables).items()}
    ddl_done = threading.Event()
    url = f"postgresql+psycopg2://{kw['user']}:{kw['password']}@127.0.0.1:{p.port}/appdb"
    args = ({"poolclass": pool.NullPool} if poolclass == "NullPool"
            else {"pool_size": 4, "max_overflow": 0, "pool_timeout": 30})
    engine = create_engine(url, future=True,
                           connect_args={"connect_timeout": 10, "sslmode": "disable"},
                           **args)

    def worker(w):
        balance = 0
        for j in range(ITERATIONS):
            with engine.begin() as c:
                c.execute(q["ins"], {"w": w, "j": j, "v": f"w{w}-{j}"})
                c.execute(q["upd"], {"w": w, "j": j})
                b = c.execute(q["bal"], {"w": w}).scalar_one()
            balance += j
            assert b == balance, (w, j, b, balance)
            with engine.connect() as c:
                _check_iteration(w, j, balance, c.execute(q["agg"], {"w": w}).one(),
                                 c.execute(q["one"], {"w": w, "j": j}).scalar_one())
                if j == ITERATIONS // 3:
                    c.exec_driver_sql("DEALLOCATE ALL")
                if w == 0 and j == ITERATIONS // 2:
                    c.execute(q["ddl"])
                    c.commit()
                    ddl_done.set()
                if ddl_done.is_set():
                    row = c.execute(q["note"], {"w": w, "j": j}).one()
                    assert tuple(row) == ("noted", f"w{w}-{j}"), row
        with engine.connect() as c:
            rows = c.execute(q["all"], {"w": w}).all()
        assert [tuple(r) for r in rows] == [(j, f"w{w}-{j}") for j in range(ITERATIONS)]
        return True

    try:
        with BackendSampler(pg, "sluice_md5") as sampler:
            results = harness.run_threads(worker, WORKERS, timeout=60)
    finally:
        engine.dispose()
    assert results == [True] * WORKERS, harness.errors(results)[:3]
    check_tables(pg, tables)
    assert 1 <= sampler.max <= POOL_SIZE, sampler.samples


# -- psycopg 3 ----------------------------------------------------------------------------------

def test_psycopg3(poolers, pg, tables):
    """psycopg 3 with prepare_threshold=0 (every query a named statement) in pipeline mode, COPY
    between prepared statements, DEALLOCATE ALL and DDL mid-run.
    test_prepared.py covers plain prepared reads; test_psycopg_clients.py pipelines unprepared."""
    import threading

    import psycopg

    t, acct = tables
    p = poolers(settings=SETTINGS)
    ddl_done = threading.Event()
    copy_rows = 4

    def worker(w):
        balance = 0
        with p.connect(prepare_threshold=0) as c:
            for j in range(ITERATIONS):
                with c.transaction(), c.pipeline():
                    c.execute(f"INSERT INTO {t} (worker, seq, val) VALUES (%s, %s, %s)",
                              (w, j, f"w{w}-{j}"))
                    c.execute(f"UPDATE {acct} SET balance = balance + %s WHERE worker = %s", (j, w))
                    bal = c.execute(f"SELECT balance FROM {acct} WHERE worker = %s", (w,))
                    agg = c.execute(f"SELECT count(*), coalesce(sum(seq), 0) FROM {t} "
                                    f"WHERE worker = %s", (w,))
                    one = c.execute(f"SELECT val FROM {t} WHERE worker = %s AND seq = %s", (w, j))
                balance += j
                assert bal.fetchone()[0] == balance, (w, j)
                _check_iteration(w, j, balance, agg.fetchone(), one.fetchone()[0])
                if j % 9 == 4:
                    # COPY out this worker's rows between prepared statements, on whatever
                    # server this transaction gets.
                    with c.cursor().copy(f"COPY (SELECT seq, val FROM {t} WHERE worker = {w} "
                                         f"ORDER BY seq) TO STDOUT") as cp:
                        got = [tuple(r) for r in cp.rows()]
                    assert got == [(str(k), f"w{w}-{k}") for k in range(j + 1)], (w, j)
                if j == ITERATIONS // 3:
                    # psycopg 3.1 does not notice DEALLOCATE ALL (nor on a direct connection):
                    # its next use of a statement must fail in its own words, then a DROP makes
                    # psycopg forget its statements (its rule for DROP and ROLLBACK).
                    c.execute("DEALLOCATE ALL", prepare=False)
                    with pytest.raises(psycopg.errors.InvalidSqlStatementName) as gone:
                        c.execute(f"SELECT val FROM {t} WHERE worker = %s AND seq = %s", (w, j))
                    assert '"_pg3_' in str(gone.value) and "sluice" not in str(gone.value)
                    c.execute("DROP TABLE IF EXISTS mx_no_such_table")
                    assert c.execute(f"SELECT val FROM {t} WHERE worker = %s AND seq = %s",
                                     (w, j)).fetchone()[0] == f"w{w}-{j}"
                if w == 0 and j == ITERATIONS // 2:
                    c.execute(f"ALTER TABLE {t} ADD COLUMN note text NOT NULL DEFAULT 'noted'")
                    ddl_done.set()
                if ddl_done.is_set():
                    row = c.execute(f"SELECT note, val FROM {t} WHERE worker = %s AND seq = %s",
                                    (w, j)).fetchone()
                    assert row == ("noted", f"w{w}-{j}"), row
            # COPY in (a side table of this worker's, in a transaction) then read it back
            # through a prepared statement.
            with c.transaction():
                c.execute(f"CREATE TEMP TABLE extra_{w} (k int, v text) ON COMMIT DROP")
                with c.cursor().copy(f"COPY extra_{w} (k, v) FROM STDIN") as cp:
                    for k in range(copy_rows):
                        cp.write_row((k, f"x{w}-{k}"))
                got = c.execute(f"SELECT count(*), string_agg(v, ',' ORDER BY k) "
                                f"FROM extra_{w} WHERE k >= %s", (0,)).fetchone()
            assert got == (copy_rows, ",".join(f"x{w}-{k}" for k in range(copy_rows))), got
        return True

    with BackendSampler(pg, "sluice_md5") as sampler:
        results = harness.run_threads(worker, WORKERS, timeout=60)
    assert results == [True] * WORKERS, harness.errors(results)[:3]
    check_tables(pg, tables)
    assert 1 <= sampler.max <= POOL_SIZE, sampler.samples


# -- DDL that changes a statement's result type -------------------------------------------------

def test_result_type_change_after_ddl_asyncpg(poolers, pg, tables):
    """`SELECT *` prepared by two asyncpg clients, then ALTER TABLE ADD COLUMN. On a direct
    connection each client's next run gets 0A000 "cached plan must not change result type", on
    which asyncpg prepares again and retries by itself: both see 4 columns, no error.

    Regression test (issue 4), pool of 1: client b's retry made sluice forget the server's stale
    statement and prepare the text afresh; client a's next Bind of its own (pre-DDL) statement
    then used a statement of 4 columns and a got rows of 4 columns under its 3-column
    description (asyncpg: ProtocolError). sluice now compares the result type of a statement it
    prepares again with the one the client's statement has, and answers 0A000 as PostgreSQL
    does when they differ."""
    import asyncio

    t, _ = tables
    p = poolers(settings={**SETTINGS, "default_pool_size": 1})
    kw = p.conn_kwargs()
    query = f"SELECT * FROM {t} WHERE worker = $1 ORDER BY seq"
    with pg.connect("appdb") as c:
        c.execute(f"INSERT INTO {t} VALUES (1, 0, 'a'), (2, 0, 'b')")

    async def main():
        a, b = [await asyncpg.connect(host="127.0.0.1", port=p.port, user=kw["user"],
                                      password=kw["password"], database="appdb", timeout=10)
                for _ in range(2)]
        try:
            assert [tuple(r) for r in await a.fetch(query, 1)] == [(1, 0, "a")]
            assert [tuple(r) for r in await b.fetch(query, 2)] == [(2, 0, "b")]
            with pg.connect("appdb") as c:
                c.execute(f"ALTER TABLE {t} ADD COLUMN note text NOT NULL DEFAULT 'n'")
            assert [tuple(r) for r in await b.fetch(query, 2)] == [(2, 0, "b", "n")]
            assert [tuple(r) for r in await a.fetch(query, 1)] == [(1, 0, "a", "n")]
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(main(), 30))
