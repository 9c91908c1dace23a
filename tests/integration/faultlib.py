"""What every fault test checks afterwards, and the ledger clients that give it something to check.

`Ledger`: client threads that each insert rows in transactions (BEGIN; INSERT; COMMIT) through the
pooler over raw protocol connections (`pgwire`, which keeps every error's SQLSTATE), reconnecting
after an error. A row counts as committed only when the pooler relayed COMMIT's CommandComplete;
afterwards every such row must be in the table. Every socket read has a deadline, so a client
that hangs is recorded as `hang`, not a stuck test. Each outcome is counted by kind:
`ok`, a SQLSTATE (a clean PostgreSQL error), or `closed` / `reset` / `hang` / `refused`
(not clean: the pooler closed the socket without an ErrorResponse, the socket was reset, no answer
within the deadline, connection refused).

`assert_settled`: the pooler is running, holds no client and no active or logging-in server,
its SHOW SERVERS are exactly PostgreSQL's backends of the pool's role (by pid), at most the pool
size of them, and a new client is served with no transaction open.
"""

from __future__ import annotations

import collections
import socket
import threading
import time

import pgwire
from harness import Pooler, Postgres, wait_until

CLEAN = "sqlstate"  # kind of every outcome that is a PostgreSQL error with a SQLSTATE
UNCLEAN = ("closed", "reset", "hang", "refused", "other")


def classify(exc: BaseException) -> str:
    if isinstance(exc, pgwire.ServerError):
        return exc.sqlstate or "no-sqlstate"
    if isinstance(exc, pgwire.ConnectionClosed):
        return "closed"
    if isinstance(exc, socket.timeout):
        return "hang"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    return "other"


class Ledger:
    """n client threads inserting (client, seq) rows into `table` through pooler p."""

    def __init__(self, p: Pooler, pg: Postgres, table: str, n: int = 4, deadline: float = 20,
                 pause: float = 0.0, user: str = "sluice_md5", reconnect_each: bool = False):
        self.p, self.pg, self.table, self.n = p, pg, table, n
        self.deadline, self.pause, self.user = deadline, pause, user
        self.reconnect_each = reconnect_each  # a new connection for every transaction
        self.port = p.port
        self.acked: list[set[int]] = [set() for _ in range(n)]
        self.outcomes: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        with pg.connect("appdb") as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
            c.execute(f"CREATE TABLE {table} (client int, seq int, PRIMARY KEY (client, seq))")
            c.execute(f"GRANT ALL ON {table} TO PUBLIC")

    def _record(self, kind: str, exc: BaseException | None = None, where: str = "") -> None:
        with self._lock:
            self.outcomes[kind] += 1
            if exc is not None and kind not in self.examples:
                self.examples[kind] = f"{type(exc).__name__}: {exc} ({where})"

    def _snapshot(self) -> str:
        """What the pooler's console shows, for the report of a hang."""
        try:
            out = []
            for cmd in ("SHOW POOLS", "SHOW SERVERS", "SHOW CLIENTS"):
                rows = self.p.admin(cmd)
                out.append(f"{cmd}: {[{k: v for k, v in r.items() if v not in (None, '', 0)} for r in rows]}")
            return "\n".join(out)
        except Exception as e:  # noqa: BLE001 -- diagnostics only
            return f"(console: {e!r})"

    def _connect(self) -> pgwire.PgWire:
        kw = self.p.conn_kwargs(self.user)
        return pgwire.connect("127.0.0.1", self.port, self.user, "appdb", kw["password"],
                              self.deadline)

    def _run(self, i: int) -> None:
        seq = 0
        while not self._stop.is_set():
            conn = None
            step = "connect"
            try:
                conn = self._connect()
                while not self._stop.is_set():
                    step = "BEGIN"
                    conn.query("BEGIN")
                    step = "INSERT"
                    conn.query(f"INSERT INTO {self.table} VALUES ({i}, {seq})")
                    if self.pause:
                        step = "pg_sleep"
                        conn.query(f"SELECT pg_sleep({self.pause})")
                    seq += 1
                    step = "COMMIT"
                    res = conn.query("COMMIT")
                    if res.tags == ["COMMIT"]:
                        self.acked[i].add(seq - 1)
                        self._record("ok")
                    if self.reconnect_each:
                        break
            except (pgwire.ServerError, OSError, pgwire.ConnectionClosed) as e:
                seq += 1  # the row may or may not exist; never reuse its key
                where = f"client {i} at {step}, {time.strftime('%T')}"
                if classify(e) == "hang":
                    where += f"; the pooler then: {self._snapshot()}"
                self._record(classify(e), e, where)
                self._stop.wait(0.02)
            finally:
                if conn is not None:
                    try:
                        conn.sock.settimeout(1)
                        conn.close()
                    except OSError:
                        pass

    def start(self) -> "Ledger":
        for i in range(self.n):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def commits(self) -> int:
        return sum(map(len, self.acked))

    def wait_commits(self, k: int, timeout: float = 30) -> None:
        start = self.commits()
        wait_until(lambda: self.commits() >= start + k, timeout, 0.02,
                   f"{k} more commits (outcomes so far {dict(self.outcomes)})")

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        limit = timeout if timeout is not None else self.deadline + 10
        end = time.monotonic() + limit
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        alive = sum(t.is_alive() for t in self._threads)
        assert not alive, f"{alive} ledger clients still stuck {limit}s after stop"

    def unclean(self) -> dict:
        return {k: v for k, v in self.outcomes.items() if k in UNCLEAN or k == "no-sqlstate"}

    def errors(self) -> dict:
        return {k: v for k, v in self.outcomes.items() if k != "ok"}

    def assert_durable(self) -> None:
        """Every acknowledged COMMIT's row is in the table."""
        with self.pg.connect("appdb") as c:
            stored = set(c.execute(f"SELECT client, seq FROM {self.table}").fetchall())
        missing = {(i, s) for i in range(self.n) for s in self.acked[i]} - stored
        assert not missing, (f"{len(missing)} of {self.commits()} acknowledged commits lost, "
                             f"e.g. {sorted(missing)[:5]}")

    def summary(self) -> str:
        return f"commits={self.commits()} outcomes={dict(self.outcomes)} examples={self.examples}"


def pool_row(p: Pooler, user: str = "sluice_md5", db: str = "appdb") -> dict | None:
    for r in p.admin("SHOW POOLS"):
        if r["database"] == db and r["user"] == user:
            return r
    return None


def assert_settled(p: Pooler, pg: Postgres, pool_size: int, user: str = "sluice_md5",
                   timeout: float = 20) -> None:
    """No leaked server, no client left, the pooler serves again."""
    assert p.running, f"pooler exited:\n{p.log()[-3000:]}"
    state: dict = {}

    def settled() -> bool:
        row = pool_row(p, user)
        servers = {int(s["remote_pid"]) for s in p.admin("SHOW SERVERS")
                   if s["database"] == "appdb" and s["user"] == user}
        backends = {b["pid"] for b in pg.backends(user)}
        state.update(row=row, servers=sorted(servers), backends=sorted(backends))
        busy = row is not None and any(
            row[k] for k in ("cl_active", "cl_waiting", "sv_active", "sv_login"))
        return not busy and servers == backends and len(backends) <= pool_size
    try:
        wait_until(settled, timeout, 0.1, "the pool to settle")
    except AssertionError as e:
        raise AssertionError(f"{e}: {state}") from None
    # A new client gets a working server with no transaction left open on it.
    kw = p.conn_kwargs(user)
    with pgwire.connect("127.0.0.1", p.port, user, "appdb", kw["password"], 15) as w:
        res = w.query("SELECT 1")
        assert res.rows == [("1",)] and res.status == b"I", res


def backend_pid_running(pg: Postgres, marker: str, timeout: float = 15) -> int:
    """The pid of the backend whose running query contains marker (waits until one does)."""
    def find():
        for b in pg.backends(None):
            if marker in (b["query"] or "") and b["state"] == "active":
                return b["pid"]
        return None
    return wait_until(find, timeout, 0.02, f"a backend running {marker!r}")


class CrashablePostgres(Postgres):
    """A cluster of its own for tests that crash or restart PostgreSQL (the session's cluster is
    shared). `restart()` is `pg_ctl restart -m fast`; after a crash or a restart the harness's
    own connection is made again on first use."""

    def execute(self, sql: str, params=None) -> list[tuple]:
        for attempt in range(60):
            try:
                return super().execute(sql, params)
            except Exception:  # psycopg.OperationalError after a crash: reconnect, retry
                if attempt == 59:
                    raise
                with self._lock:
                    try:
                        self._conn.close()
                    except Exception:
                        pass
                    try:
                        self._conn = self.connect()
                    except Exception:
                        time.sleep(0.25)

    def backends(self, user=None, dbname="appdb"):
        self.execute("SELECT 1")  # reconnects if needed
        return super().backends(user, dbname)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        import subprocess
        from harness import PG_BIN, as_postgres
        subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
                       check=True, capture_output=True, timeout=timeout)

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast", "-w", "-t", "50", "-l", str(self.log_path))

    def stop(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass
        try:
            self.pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
        except Exception:
            super().stop()
