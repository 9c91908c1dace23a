"""Process-controlling console commands (PAUSE, RESUME, KILL, DISABLE, ENABLE, WAIT_CLOSE, SET)
and every SHOW command's columns, against PgBouncer 1.18's documented ones.

Run under POOLER=pgbouncer too: PgBouncer is the reference for what each command does."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from harness import ADMIN_PASSWORD, ADMIN_USER, IS_SLUICE, sqlstate, wait_until


def console(p) -> psycopg.Connection:
    return psycopg.connect(autocommit=True, row_factory=dict_row,
                           **p.conn_kwargs(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer"))


class Background:
    """Runs fn in a thread; .done tells whether it returned, .result/.error what it gave."""

    def __init__(self, fn):
        self.result = self.error = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as e:  # handed to the test
            self.error = e

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float = 10):
        self._thread.join(timeout)
        assert self.done, "still running"
        if self.error:
            raise self.error
        return self.result


def still_running(task: Background, seconds: float) -> bool:
    """True if task has not finished after `seconds` (it is blocked, as it should be)."""
    task._thread.join(seconds)
    return not task.done


def pool_row(p, database="appdb", user="sluice_md5") -> dict:
    rows = [r for r in p.admin("SHOW POOLS") if (r["database"], r["user"]) == (database, user)]
    return rows[0] if rows else {}


def two_databases(p_factory, pg, **settings):
    """appdb and otherdb (the same PostgreSQL database under a second name)."""
    return p_factory(settings=settings or None, databases={
        "appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb"},
        "otherdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb"}})


# ---- PAUSE / RESUME ---------------------------------------------------------------------------

def test_pause_waits_for_transactions_then_holds_clients_until_resume(poolers, pg):
    p = poolers()
    with p.connect() as holder, p.connect() as later, console(p) as admin:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        later.execute("SELECT 1")  # its server goes back idle
        pause = Background(lambda: admin.execute("PAUSE"))
        # PAUSE does not return while a transaction holds a server...
        assert still_running(pause, 0.7)
        holder.execute("SELECT 2")  # ...which may go on using it
        holder.execute("COMMIT")
        pause.wait(10)
        # Every server is closed once PAUSE returns.
        pg.wait_backends(lambda n: n == 0, user="sluice_md5")
        with pytest.raises(psycopg.Error) as e:
            p.admin("PAUSE")
        assert "already suspended/paused" in str(e.value), e.value

        # A client that wants a server now waits, without error, until RESUME.
        query = Background(lambda: later.execute("SELECT 42").fetchone())
        wait_until(lambda: int(pool_row(p).get("cl_waiting", 0)) == 1, 5,
                   what="the client to wait while paused")
        assert still_running(query, 0.3)
        p.admin("RESUME")
        assert query.wait(10) == (42,)
        assert holder.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.Error) as e:
        p.admin("RESUME")
    assert "not paused" in str(e.value), e.value  # PgBouncer: "pooler is not paused/suspended"


def test_pause_and_resume_one_database(poolers, pg):
    p = two_databases(poolers, pg)
    with p.connect(dbname="otherdb") as other, p.connect() as app:
        other.execute("SELECT 1")
        p.admin("PAUSE otherdb")
        dbs = {r["name"]: r for r in p.admin("SHOW DATABASES")}
        assert (dbs["otherdb"]["paused"], dbs["appdb"]["paused"]) == (1, 0), dbs
        query = Background(lambda: other.execute("SELECT 7").fetchone())
        assert app.execute("SELECT 1").fetchone() == (1,)  # the other database is unaffected
        assert still_running(query, 0.5)
        p.admin("RESUME otherdb")
        assert query.wait(10) == (7,)
        assert p.admin("SHOW DATABASES") and all(
            r["paused"] == 0 for r in p.admin("SHOW DATABASES"))
    with pytest.raises(psycopg.Error) as e:
        p.admin("RESUME otherdb")
    assert "otherdb is not paused" in str(e.value), e.value
    with pytest.raises(psycopg.Error) as e:
        p.admin("PAUSE nosuchdb")
    assert "no such database: nosuchdb" in str(e.value), e.value


# ---- KILL -------------------------------------------------------------------------------------

def test_kill_drops_the_database_connections_and_pauses_it(poolers, pg):
    p = two_databases(poolers, pg)
    with p.connect() as idle, p.connect() as in_tx, p.connect(dbname="otherdb") as other:
        idle.execute("SELECT 1")
        in_tx.execute("BEGIN")
        pid = in_tx.execute("SELECT pg_backend_pid()").fetchone()[0]
        other.execute("SELECT 1")
        p.admin("KILL appdb")
        for c in (idle, in_tx):
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
        wait_until(lambda: pid not in {b["pid"] for b in pg.backends()}, 10,
                   what="the killed transaction's backend to end")
        assert other.execute("SELECT 2").fetchone() == (2,)  # another database is untouched
        dbs = {r["name"]: r for r in p.admin("SHOW DATABASES")}
        assert dbs["appdb"]["paused"] == 1, dbs

        # New clients of the killed database wait until RESUME.
        def fresh():
            with p.connect() as c:
                return c.execute("SELECT 3").fetchone()
        late = Background(fresh)
        assert still_running(late, 0.7)
        p.admin("RESUME appdb")
        assert late.wait(10) == (3,)


# ---- DISABLE / ENABLE -------------------------------------------------------------------------

def test_disable_refuses_new_clients_and_enable_lets_them_in(poolers):
    p = poolers()
    with p.connect() as existing:
        existing.execute("SELECT 1")
        p.admin("DISABLE appdb")
        assert {r["name"]: r["disabled"] for r in p.admin("SHOW DATABASES")}["appdb"] == 1
        err = p.login_error()
        # PgBouncer 1.18: 'database "appdb" is disabled' (08P01)
        assert 'database "appdb" is disabled' in err.message, err
        if IS_SLUICE:
            assert err.sqlstate == "55000", err
        assert existing.execute("SELECT 2").fetchone() == (2,)  # clients already in stay
        p.admin("ENABLE appdb")
        with p.connect() as again:
            assert again.execute("SELECT 3").fetchone() == (3,)
    with pytest.raises(psycopg.Error) as e:
        p.admin("DISABLE nosuchdb")
    assert "no such database" in str(e.value), e.value
    with pytest.raises(psycopg.Error):
        p.admin("DISABLE")  # a database is required


# ---- WAIT_CLOSE -------------------------------------------------------------------------------

def test_wait_close_returns_once_reconnected_servers_are_closed(poolers, pg):
    p = poolers()
    with p.connect() as holder, console(p) as admin:
        holder.execute("BEGIN")
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        admin.execute("RECONNECT appdb")
        wait = Background(lambda: admin.execute("WAIT_CLOSE appdb"))
        assert still_running(wait, 0.7)  # the held server closes only when released
        holder.execute("COMMIT")
        wait.wait(10)
        wait_until(lambda: pid not in {b["pid"] for b in pg.backends()}, 5,
                   what="the reconnected server to close")
        # Nothing left to close: answers at once.
        admin.execute("WAIT_CLOSE")


# ---- SET --------------------------------------------------------------------------------------

def test_set_changes_a_setting_at_runtime(poolers):
    p = poolers(settings={"default_pool_size": 5})
    p.admin("SET default_pool_size = 3")
    p.admin("SET server_check_query = 'select ''x'''")
    config = {r["key"]: r["value"] for r in p.admin("SHOW CONFIG")}
    assert config["default_pool_size"] == "3", config
    assert config["server_check_query"] == "select 'x'", config
    # The new size holds: a 4th concurrent transaction waits.
    conns = [p.connect() for _ in range(4)]
    try:
        for c in conns[:3]:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        fourth = Background(lambda: conns[3].execute("SELECT 4").fetchone())
        wait_until(lambda: int(pool_row(p).get("cl_waiting", 0)) == 1, 5,
                   what="the fourth client to wait for the smaller pool")
        conns[0].execute("COMMIT")
        assert fourth.wait(10) == (4,)
    finally:
        for c in conns:
            c.close()
    for bad in ("SET nosuchkey = 1", "SET default_pool_size = lots"):
        with pytest.raises(psycopg.Error):
            p.admin(bad)
    if IS_SLUICE:
        with pytest.raises(psycopg.Error) as e:
            p.admin("SET listen_port = 1")
        assert sqlstate(e.value) == "55P02" and "restart" in str(e.value), e.value


def test_set_needs_admin_but_driver_settings_are_ignored(poolers):
    p = poolers(settings={"stats_users": "sluice_trust"})
    with psycopg.connect(autocommit=True,
                         **p.conn_kwargs("sluice_trust", dbname="pgbouncer")) as c:
        if IS_SLUICE:
            # JDBC sends this on connect; PgBouncer 1.18 refuses it to non-admins, sluice
            # ignores it with a NOTICE as PgBouncer does for admins.
            c.execute("SET extra_float_digits = 3")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SET default_pool_size = 9")
        assert "admin" in str(e.value), e.value


# ---- SHOW HELP and the columns of every SHOW --------------------------------------------------

def test_show_help_lists_every_command(poolers):
    p = poolers()
    notices = []
    with console(p) as c:
        # A Diagnostic is valid only inside the handler: copy what we need.
        c.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail)))
        c.execute("SHOW HELP")
    assert notices and notices[0][0] == "Console usage", notices
    detail = notices[0][1]
    for word in ("SHOW", "POOLS", "CLIENTS", "SERVERS", "DATABASES", "STATS", "CONFIG",
                 "VERSION", "SET key = arg", "RELOAD", "PAUSE [<db>]", "RESUME [<db>]",
                 "DISABLE <db>", "ENABLE <db>", "RECONNECT [<db>]", "KILL", "SHUTDOWN",
                 "WAIT_CLOSE [<db>]"):
        assert word in detail, (word, detail)


# PgBouncer 1.18's columns, in order (doc/usage.md of 1.18).
SOCKET_COLUMNS = ["type", "user", "database", "state", "addr", "port", "local_addr",
                  "local_port", "connect_time", "request_time", "wait", "wait_us",
                  "close_needed", "ptr", "link", "remote_pid", "tls", "application_name"]
COLUMNS = {
    "POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
              "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
              "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
              "pool_mode"],
    "CLIENTS": SOCKET_COLUMNS,
    "SERVERS": SOCKET_COLUMNS,
    "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size",
                  "min_pool_size", "reserve_pool", "pool_mode", "max_connections",
                  "current_connections", "paused", "disabled"],
    "USERS": ["name", "pool_mode"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "LISTS": ["list", "items"],
    "VERSION": ["version"],
    "STATS": ["database", "total_xact_count", "total_query_count", "total_received",
              "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
              "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
              "avg_query_time", "avg_wait_time"],
    "STATS_TOTALS": ["database", "xact_count", "query_count", "bytes_received", "bytes_sent",
                     "xact_time", "query_time", "wait_time"],
    "STATS_AVERAGES": ["database", "xact_count", "query_count", "bytes_received",
                       "bytes_sent", "xact_time", "query_time", "wait_time"],
    "TOTALS": ["name", "value"],
}


@pytest.mark.parametrize("what", sorted(COLUMNS))
def test_show_columns_match_pgbouncer(poolers, what):
    p = poolers()
    with p.connect() as c, console(p) as admin:
        c.execute("BEGIN")
        c.execute("SELECT 1")
        cur = admin.execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        c.execute("COMMIT")
    if IS_SLUICE and what == "STATS":
        # One extra column after PgBouncer's: total_requests, for Debian's exporter.
        assert names == COLUMNS[what] + ["total_requests"], names
    else:
        assert names == COLUMNS[what], names
