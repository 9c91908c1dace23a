"""search_path in transaction pooling (issue 4). PostgreSQL 15 does not report search_path with
ParameterStatus, so sluice reads it back (SHOW search_path) after a transaction that may have
changed it and sets it on every server the client gets; a server another client changed is set
back first. Two clients share one server (pool size 1), each with its own table `sp_t` in its
schema.

PgBouncer 1.18 does not track search_path (1.20+ does with track_extra_parameters = search_path),
so a client's value does not follow it and leaks to the next client: the tests that need it to
are sluice_only. Those where PostgreSQL itself reverts the value (SET LOCAL, rolled-back
transactions) and session mode's DISCARD ALL run against both."""

from __future__ import annotations

import struct

import pytest

sluice_only = pytest.mark.sluice_only(
    reason="PgBouncer 1.18 does not track search_path (track_extra_parameters is 1.20+)")


@pytest.fixture
def schemas(pg):
    """public.sp_t, sp_a.sp_t and sp_b.sp_t, each holding the name of its schema."""
    with pg.connect("appdb", user="sluice_md5") as c:
        for schema in ("public", "sp_a", "sp_b"):
            c.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            c.execute(f"DROP TABLE IF EXISTS {schema}.sp_t")
            c.execute(f"CREATE TABLE {schema}.sp_t (v text)")
            c.execute(f"INSERT INTO {schema}.sp_t VALUES ('{schema}')")
    yield
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP SCHEMA IF EXISTS sp_a, sp_b CASCADE")
        c.execute("DROP TABLE IF EXISTS public.sp_t")


def one_server(poolers, **settings):
    return poolers(settings={"pool_mode": "transaction", "default_pool_size": 1,
                             "query_wait_timeout": 30, **settings})


def where(c) -> tuple[str, int]:
    """Which schema's sp_t the client sees, and on which backend."""
    return c.execute("SELECT v, pg_backend_pid() FROM sp_t").fetchone()


def sees(c) -> str:
    return where(c)[0]


@sluice_only
def test_set_follows_its_client_and_never_leaks(poolers, schemas):
    p = one_server(poolers)
    with p.connect(application_name="a") as a, p.connect(application_name="b") as b:
        a.execute("SET search_path TO sp_a")
        pids = set()
        for _ in range(2):
            for c, want in ((a, "sp_a"), (b, "public")):
                v, pid = where(c)
                assert v == want
                pids.add(pid)
        assert len(pids) == 1, f"the clients did not share the one server: {pids}"
        assert a.execute("SHOW search_path").fetchone()[0] == "sp_a"
        b.execute("SET SESSION search_path = sp_b, public")
        assert (sees(a), sees(b), sees(a)) == ("sp_a", "sp_b", "sp_a")
        # RESET and SET ... TO DEFAULT go back to the session default, for that client only.
        a.execute("RESET search_path")
        assert (sees(b), sees(a), sees(b)) == ("sp_b", "public", "sp_b")
        b.execute("SET search_path TO DEFAULT")
        a.execute("SET SCHEMA 'sp_a'")
        assert (sees(b), sees(a), sees(b)) == ("public", "sp_a", "public")


def test_set_local_is_not_kept(poolers, schemas):
    p = one_server(poolers)
    with p.connect() as a, p.connect() as b:
        a.execute("BEGIN")
        a.execute("SET LOCAL search_path TO sp_a")
        assert sees(a) == "sp_a"
        a.execute("COMMIT")
        assert (sees(a), sees(b), sees(a)) == ("public", "public", "public")


def test_set_in_a_transaction_that_fails_or_rolls_back_is_not_kept(poolers, schemas):
    p = one_server(poolers)
    with p.connect() as a, p.connect() as b:
        a.execute("BEGIN")
        a.execute("SET search_path TO sp_a")
        a.execute("ROLLBACK")
        assert (sees(a), sees(b), sees(a)) == ("public", "public", "public")
        a.execute("BEGIN")
        a.execute("SET search_path TO sp_a")
        with pytest.raises(Exception):
            a.execute("SELECT 1 / 0")
        a.execute("COMMIT")  # answered ROLLBACK
        assert (sees(a), sees(b), sees(a)) == ("public", "public", "public")
        # Two statements in one Query run in one implicit transaction.
        with pytest.raises(Exception):
            a.execute("SET search_path TO sp_a; SELECT 1 / 0")
        assert (sees(a), sees(b), sees(a)) == ("public", "public", "public")


@sluice_only
def test_savepoints_keep_what_postgresql_keeps(poolers, schemas):
    p = one_server(poolers)
    with p.connect() as a, p.connect() as b:
        a.execute("BEGIN")
        a.execute("SET search_path TO sp_a")
        a.execute("SAVEPOINT s")
        with pytest.raises(Exception):
            a.execute("SELECT 1 / 0")
        a.execute("ROLLBACK TO SAVEPOINT s")
        a.execute("COMMIT")
        assert (sees(b), sees(a)) == ("public", "sp_a")
        a.execute("BEGIN")
        a.execute("SAVEPOINT s")
        a.execute("SET search_path TO sp_b")
        a.execute("ROLLBACK TO SAVEPOINT s")
        a.execute("COMMIT")
        assert (sees(b), sees(a)) == ("public", "sp_a")


@sluice_only
def test_set_config_is_followed_unless_local(poolers, schemas):
    p = one_server(poolers)
    with p.connect() as a, p.connect() as b:
        a.execute("SELECT set_config('search_path', 'sp_a', false)")
        assert (sees(a), sees(b), sees(a)) == ("sp_a", "public", "sp_a")
        a.execute("BEGIN")
        a.execute("SELECT set_config('search_path', 'sp_b', true)")
        assert sees(a) == "sp_b"
        a.execute("COMMIT")
        assert (sees(b), sees(a)) == ("public", "sp_a")
        # With a parameter, and inside a DO block: the value is read back all the same.
        a.execute("SELECT set_config('search_path', %s, false)", ("sp_b",))
        assert (sees(b), sees(a)) == ("public", "sp_b")
        a.execute("DO $$BEGIN PERFORM set_config('search_path', 'sp_a', false); END$$")
        assert (sees(b), sees(a)) == ("public", "sp_a")


_SYNC = b"S" + struct.pack("!I", 4)


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _until_ready(w) -> list:
    out = []
    while True:
        kind, body = w.read_message()
        out.append(kind)
        if kind == b"Z":
            return out


@sluice_only
def test_extended_protocol_set_named_and_unnamed(poolers, schemas):
    """JDBC's setSchema() and drivers without a simple-query path send SET as Parse/Bind/Execute:
    an unnamed statement, or (after prepareThreshold) a named one bound again in a later
    transaction, when the client may have changed search_path in between."""
    p = one_server(poolers)
    with p.connect(prepare_threshold=0) as a, p.connect() as b:
        a.execute("SET search_path TO sp_a", prepare=True)  # Parse _pg3_0, Bind, Execute
        assert (sees(b), sees(a)) == ("public", "sp_a")
        a.execute("RESET search_path")
        assert (sees(b), sees(a)) == ("public", "public")
        a.execute("SET search_path TO sp_a", prepare=True)  # only a Bind of _pg3_0 now
        assert (sees(b), sees(a)) == ("public", "sp_a")
        with p.wire() as w:
            w.sock.sendall(_msg(b"P", b"\0SET search_path TO sp_b\0" + struct.pack("!H", 0))
                           + _msg(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
                           + _msg(b"E", b"\0" + struct.pack("!I", 0)) + _SYNC)
            assert _until_ready(w) == [b"1", b"2", b"C", b"Z"]
            assert (sees(b), sees(a)) == ("public", "sp_a")
            assert w.query("SELECT v FROM sp_t").rows == [("sp_b",)]


@sluice_only
def test_a_startup_search_path_is_set_on_every_server(poolers, pg, schemas):
    """pgJDBC's currentSchema sends search_path in the startup packet; PgBouncer 1.18 refuses
    it unless it is in ignore_startup_parameters, and then drops it."""
    p = one_server(poolers)
    with p.wire(search_path="sp_b") as w, p.connect() as b:
        assert w.query("SELECT v FROM sp_t").rows == [("sp_b",)]
        assert sees(b) == "public"
        assert w.query("SELECT v FROM sp_t").rows == [("sp_b",)]
        # A new server (the old one was terminated while idle) gets it too.
        pg.terminate_all()
        pg.wait_backends(lambda n: n == 0, user="sluice_md5")
        assert w.query("SELECT v FROM sp_t").rows == [("sp_b",)]


@sluice_only
def test_a_set_search_path_survives_a_new_server(poolers, pg, schemas):
    p = one_server(poolers)
    with p.connect() as a:
        a.execute("SET search_path TO sp_a")
        old = where(a)[1]
        pg.terminate_all()
        pg.wait_backends(lambda n: n == 0, user="sluice_md5")
        v, pid = where(a)
        assert v == "sp_a" and pid != old


@sluice_only
def test_server_reset_query_always_keeps_each_clients_search_path(poolers, schemas):
    p = one_server(poolers, server_reset_query_always=1)
    with p.connect() as a, p.connect() as b:
        a.execute("SET search_path TO sp_a")
        assert (sees(a), sees(b), sees(a), sees(a)) == ("sp_a", "public", "sp_a", "sp_a")


def test_session_mode_discard_all_resets_it_for_the_next_client(poolers, schemas):
    p = poolers(settings={"pool_mode": "session", "default_pool_size": 1})
    with p.connect() as a:
        a.execute("SET search_path TO sp_a")
        pid = where(a)[1]
    with p.connect() as b:
        assert where(b) == ("public", pid)


@sluice_only
def test_session_mode_without_a_reset_query_does_not_leak_it(poolers, schemas):
    """With server_reset_query empty PgBouncer hands the next client the previous one's
    search_path; sluice does not know what a session-mode client set, so it sets the next
    client's value (here the default) before that client's first query."""
    p = poolers(settings={"pool_mode": "session", "default_pool_size": 1,
                          "server_reset_query": ""})
    with p.connect() as a:
        a.execute("SET search_path TO sp_a")
        pid = where(a)[1]
    with p.connect() as b:
        assert where(b) == ("public", pid)


@sluice_only
def test_a_client_that_quits_right_after_changing_it_does_not_cost_a_server(poolers, schemas):
    """A client that goes away (without a Terminate, as when it is killed) while sluice reads
    search_path back: the server still goes back to the pool, with the value it has, and the
    next client gets the same backend, set back."""
    p = one_server(poolers)
    with p.connect() as b:
        pid = where(b)[1]
    for i in range(6):
        w = p.wire()
        w.query("SET search_path TO sp_a" if i % 2 else "DISCARD ALL")
        w.sock.close()
        with p.connect() as b:
            assert where(b) == ("public", pid)
    assert "closing" not in "\n".join(line for line in p.log().splitlines() if "[S" in line)
