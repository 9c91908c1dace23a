"""Protocol-level prepared statements in transaction mode, with servers really shared."""

import asyncio
import re
import struct
import subprocess

import asyncpg
import psycopg
import pytest

import harness
import pgwire
from harness import BackendSampler, errors, run_threads

pytestmark = pytest.mark.sluice_only("PgBouncer 1.18 has no prepared statement support")

SETTINGS = {"pool_mode": "transaction", "default_pool_size": 3, "max_client_conn": 200,
            "query_wait_timeout": 60}


def test_pgbench_prepared_shares_servers(poolers, pg, bench_db):
    # -S: pgbench prepares each statement with a blocking PQprepare on first use, so a script
    # that holds a server across statements (TPC-B) can deadlock pgbench's own thread when the
    # pool is smaller than its clients per thread, with any pooler; -S does not hold one.
    p = poolers(settings=SETTINGS,
                databases={bench_db: {"host": "127.0.0.1", "port": pg.port, "dbname": bench_db}})
    with BackendSampler(pg, "sluice_md5", bench_db) as sampler:
        r = subprocess.run([str(harness.PG_BIN / "pgbench"), "-n", "-S", "-M", "prepared", "-c",
                            "12", "-j", "2", "-t", "200", bench_db], capture_output=True,
                           text=True, env=p.env(), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    assert re.search(r"actually processed: 2400/2400", out), out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or failed.group(1) == "0", out
    assert sampler.max <= 3, sampler.samples


def test_psycopg_server_side_prepared_statements(poolers):
    p = poolers(settings=SETTINGS)

    def worker(i):
        with p.connect(prepare_threshold=0) as c:
            for j in range(100):
                row = c.execute("SELECT %s::int + 1, %s::text", (j, f"w{i}")).fetchone()
                assert row == (j + 1, f"w{i}"), row
                with c.transaction():
                    got = c.execute("SELECT %s::int * 3", (j,)).fetchone()[0]
                    assert got == 3 * j
        return True

    results = run_threads(worker, 20, timeout=120)
    assert not errors(results), errors(results)[:3]


def test_asyncpg_default_statement_cache(poolers):
    p = poolers(settings=SETTINGS)
    kw = p.conn_kwargs()

    async def worker(i):
        conn = await asyncpg.connect(host="127.0.0.1", port=p.port, user=kw["user"],
                                     password=kw["password"], database=kw["dbname"])
        try:
            for j in range(100):
                assert await conn.fetchval("SELECT $1::int * 2", j) == 2 * j
                row = await conn.fetchrow("SELECT $1::text || 'x' AS v, $2::int AS n", f"a{i}", j)
                assert (row["v"], row["n"]) == (f"a{i}x", j)
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*[worker(i) for i in range(20)])

    asyncio.run(main())


def test_statement_survives_a_new_server_and_deallocate_all(poolers, pg):
    p = poolers(settings={**SETTINGS, "default_pool_size": 2})
    with p.connect(prepare_threshold=0) as a, p.connect(prepare_threshold=0) as b:
        for j in range(5):
            assert a.execute("SELECT %s::int", (j,)).fetchone()[0] == j
            assert b.execute("SELECT %s::int", (j,)).fetchone()[0] == j
        # Every server is replaced: the statements must be prepared again on the new ones.
        # Between transactions: wait until the backends are gone (pg_terminate_backend only
        # signals them), as a client that sends mid-termination would see the FATAL directly too.
        pg.terminate_all()
        pg.wait_backends(lambda n: n == 0, "sluice_md5")
        harness.wait_until(lambda: _works(a), 10, 0.1, "client a on a fresh server")
        assert a.execute("SELECT %s::int + 10", (1,)).fetchone()[0] == 11
    with p.wire() as w:
        w.query("DEALLOCATE ALL")


def _works(conn) -> bool:
    try:
        conn.execute("SELECT 1")
        return True
    except psycopg.Error as e:
        print("not yet:", type(e).__name__, e)
        return False


# -- DDL that changes a statement's result type, at the protocol level ---------------------------

def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _bind(stmt: str, *params: str) -> bytes:
    body = b"\0" + stmt.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    for v in params:
        body += struct.pack("!I", len(v)) + v.encode()
    return _msg(b"B", body + struct.pack("!H", 0))


_EXECUTE = _msg(b"E", b"\0" + struct.pack("!I", 0))
_SYNC = _msg(b"S", b"")


def _until_ready(w) -> list:
    """The answers up to and including the next ReadyForQuery, as (type, body)."""
    out = []
    while True:
        kind, body = w.read_message()
        out.append((kind, body))
        if kind == b"Z":
            return out


def test_write_returning_is_not_run_after_its_result_type_changed(poolers, pg):
    """A client's INSERT ... RETURNING * prepared before ALTER TABLE ADD COLUMN: PostgreSQL refuses
    to run it from then on (0A000), and so must sluice when it prepares the text again on a server
    (here: after PostgreSQL's own refusal made it drop the stale server statement). The refused
    run must not insert, the rest of its batch is skipped, the next batch runs."""
    p = poolers(settings={**SETTINGS, "default_pool_size": 1})
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP TABLE IF EXISTS ps_rt")
        c.execute("CREATE TABLE ps_rt (id int)")
    try:
        with p.wire() as w:
            q = "INSERT INTO ps_rt VALUES ($1) RETURNING *"
            w.sock.sendall(_msg(b"P", b"ins\0" + q.encode() + b"\0" + struct.pack("!HI", 1, 23))
                           + _msg(b"D", b"Sins\0") + _SYNC)
            got = _until_ready(w)
            assert [k for k, _ in got] == [b"1", b"t", b"T", b"Z"]
            assert struct.unpack("!H", got[2][1][:2])[0] == 1  # one column, as prepared
            w.sock.sendall(_bind("ins", "1") + _EXECUTE + _SYNC)
            assert [k for k, _ in _until_ready(w)] == [b"2", b"D", b"C", b"Z"]
            with pg.connect("appdb", user="sluice_md5") as c:
                c.execute("ALTER TABLE ps_rt ADD COLUMN note text DEFAULT 'n'")
            # The first run is refused by PostgreSQL itself, the second by sluice.
            for attempt in range(2):
                w.sock.sendall(_bind("ins", str(10 + attempt)) + _EXECUTE + _bind("ins", "99")
                               + _EXECUTE + _SYNC + _msg(b"Q", b"SELECT count(*) FROM ps_rt\0"))
                got = _until_ready(w)
                assert [k for k, _ in got] == [b"E", b"Z"], (attempt, got)
                err = pgwire._fields(got[0][1])
                assert err["C"] == "0A000" and err["R"] == "RevalidateCachedQuery", err
                assert err["M"] == "cached plan must not change result type", err
                got = _until_ready(w)
                assert [k for k, _ in got] == [b"T", b"D", b"C", b"Z"], got
                assert got[1][1].endswith(b"1"), got  # still only the first row
        with pg.connect("appdb", user="sluice_md5") as c:
            assert c.execute("SELECT id, note FROM ps_rt").fetchall() == [(1, "n")]
    finally:
        with pg.connect("appdb", user="sluice_md5") as c:
            c.execute("DROP TABLE IF EXISTS ps_rt")
