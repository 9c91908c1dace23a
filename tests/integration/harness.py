"""Processes and helpers for the integration tests.

`Postgres` is a throwaway PostgreSQL 15 cluster (one per test session). `Pooler` is sluice or
PgBouncer in front of it, configured by a pgbouncer.ini written from Python dicts. Both poolers
read the same ini, so every test runs unchanged against either; `IS_SLUICE` lets a test add
assertions that only sluice has to meet.

Server binaries (initdb, postgres, pgbouncer) refuse to run as root, so when euid is 0 they are
started as the `postgres` system user through setpriv (which execs, so the pid we hold is the
server's own pid and signals reach it directly). sluice runs as the current user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import psycopg
from psycopg.rows import dict_row

import pgwire

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
POOLER = os.environ.get("POOLER", "sluice")
SLUICE_BIN = Path(os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice")))
PGBOUNCER_BIN = Path(os.environ.get("PGBOUNCER_BIN", "/usr/sbin/pgbouncer"))
IS_SLUICE = POOLER == "sluice"
is_sluice = IS_SLUICE  # the name the brief uses; both are fine
KEEP_TMP = os.environ.get("KEEP_TMP") == "1"

# Roles the cluster gets and the passwords they log in with.
PASSWORDS = {
    "sluice_md5": "md5pass",
    "sluice_scram": "scrampass",
    "sluice_trust": "trustpass",  # trusted by PostgreSQL; the pooler still checks this one
}
ADMIN_USER, ADMIN_PASSWORD = "pgb_admin", "adminpass"  # exists only in the pooler's auth_file

_RUN_AS_POSTGRES = os.geteuid() == 0


def pooler_binary() -> Path:
    return SLUICE_BIN if IS_SLUICE else PGBOUNCER_BIN


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Polls pred until it returns something truthy; returns that value or raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_workdir(prefix: str) -> Path:
    """A temp dir the postgres user can use too (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    give(path)
    return path


def give(path: Path) -> None:
    """Lets the postgres user own path when we are root (it has to read or write it)."""
    if _RUN_AS_POSTGRES:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def as_postgres(cmd: list[str]) -> list[str]:
    if not _RUN_AS_POSTGRES:
        return cmd
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] + cmd


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)
    give(path)


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


class Postgres:
    """A PostgreSQL cluster in a temp dir: TCP on 127.0.0.1 for the pooler, a unix socket for us.

    conf: extra postgresql.conf settings (name -> value, written as `name = value` after the
    defaults, so they win), e.g. {"max_connections": 12} for a scenario that needs few slots.
    """

    def __init__(self, base: Path, conf: dict | None = None):
        self.base = base
        self.conf = dict(conf or {})
        self.data = base / "data"
        self.sockdir = base
        self.port = free_port()
        self.log_path = base / "postgresql.log"
        self.proc: subprocess.Popen | None = None
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        subprocess.run(
            as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                         "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sockdir}'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 64MB
log_line_prefix = '%m [%p] %u@%d '
log_connections = on
log_disconnections = on
""")
            f.writelines(f"{k} = {v}\n" for k, v in self.conf.items())
        # First match wins: the superuser is trusted for our own checks, every test role is
        # checked the way its name says.
        (self.data / "pg_hba.conf").write_text("""
local all all trust
host all postgres 127.0.0.1/32 trust
host all sluice_md5 127.0.0.1/32 md5
host all sluice_scram 127.0.0.1/32 scram-sha-256
host all sluice_trust 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
""")
        log = open(self.log_path, "ab")
        give(self.log_path)
        self.proc = subprocess.Popen(as_postgres([str(PG_BIN / "postgres"), "-D", str(self.data)]),
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited:\n{self.log_path.read_text()}")
            try:
                self._conn = self.connect()
                return True
            except psycopg.OperationalError:
                return False
        wait_until(ready, 30, what="postgres to accept connections")
        self._setup_roles()

    def _setup_roles(self) -> None:
        self.execute("SET password_encryption = 'md5'")
        self.execute(f"CREATE ROLE sluice_md5 LOGIN PASSWORD '{PASSWORDS['sluice_md5']}'")
        self.execute("SET password_encryption = 'scram-sha-256'")
        self.execute(f"CREATE ROLE sluice_scram LOGIN PASSWORD '{PASSWORDS['sluice_scram']}'")
        self.execute(f"CREATE ROLE sluice_trust LOGIN PASSWORD '{PASSWORDS['sluice_trust']}'")
        self.execute("CREATE DATABASE appdb OWNER sluice_md5")
        with self.connect("appdb") as c:
            c.execute("GRANT ALL ON SCHEMA public TO PUBLIC")

    def connect(self, dbname: str = "postgres", user: str = "postgres",
                **kw: Any) -> psycopg.Connection:
        return psycopg.connect(host=str(self.sockdir), port=self.port, user=user, dbname=dbname,
                               autocommit=True, connect_timeout=5, **kw)

    def execute(self, sql: str, params: Any = None) -> list[tuple]:
        """Runs sql as the superuser on the `postgres` database; thread-safe."""
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def secret(self, role: str) -> str:
        """The password secret PostgreSQL stores for role (md5... or SCRAM-SHA-256$...)."""
        return self.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))[0][0]

    def backends(self, user: str | None = None, dbname: str | None = "appdb") -> list[dict]:
        """Client backends other than ours and sluice's start-up budget check (a short-lived
        connection of its own, not a pooled server), optionally of one role and database."""
        with self._lock:
            cur = self._conn.cursor(row_factory=dict_row)
            return cur.execute(
                """SELECT pid, usename, datname, state, query, backend_start
                     FROM pg_stat_activity
                    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                      AND application_name <> 'sluice budget_check'
                      AND (%(u)s::text IS NULL OR usename = %(u)s)
                      AND (%(d)s::text IS NULL OR datname = %(d)s)""",
                {"u": user, "d": dbname}).fetchall()

    def backend_count(self, user: str | None = None, dbname: str | None = "appdb") -> int:
        return len(self.backends(user, dbname))

    def wait_backends(self, pred: Callable[[int], bool], user: str | None = None,
                      dbname: str | None = "appdb", timeout: float = 10) -> int:
        """Polls the backend count until pred(count) holds; returns the count."""
        last = []

        def check():
            last[:] = [self.backend_count(user, dbname)]
            return pred(last[0])
        try:
            wait_until(check, timeout, what="backend count")
        except AssertionError as e:
            raise AssertionError(f"{e}; last backend count {last}") from None
        return last[0]

    def terminate_all(self, dbname: str = "appdb") -> None:
        self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BackendSampler:
    """Samples the backend count in a thread while a test runs; `.max` is the peak seen."""

    def __init__(self, pg: Postgres, user: str | None = None, dbname: str | None = "appdb",
                 interval: float = 0.01):
        self.pg, self.user, self.dbname, self.interval = pg, user, dbname, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.pg.connect() as conn:
            while not self._stop.is_set():
                n = conn.execute(
                    """SELECT count(*) FROM pg_stat_activity
                        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                          AND application_name <> 'sluice budget_check'
                          AND (%(u)s::text IS NULL OR usename = %(u)s)
                          AND (%(d)s::text IS NULL OR datname = %(d)s)""",
                    {"u": self.user, "d": self.dbname}).fetchone()[0]
                self.samples.append(n)
                self._stop.wait(self.interval)

    @property
    def max(self) -> int:
        return max(self.samples, default=0)

    def __enter__(self) -> "BackendSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def _ini_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _connstr(entry: str | dict) -> str:
    if isinstance(entry, str):
        return entry
    return " ".join(f"{k}={_ini_value(v)}" for k, v in entry.items())


class Pooler:
    """One pooler process and the files it reads.

    settings: [pgbouncer] keys over the harness defaults (a value of None drops the key).
    databases: [databases] entries, name -> dict of connection keys or a raw string.
    users: auth_file entries, name -> secret (plain text, md5..., or SCRAM-SHA-256$...),
        over the defaults (every test role with its plain password, plus the admin user).
    user_settings: [users] entries, name -> dict of keys (pool_mode, max_user_connections).
    """

    def __init__(self, pg: Postgres, workdir: Path, settings: dict | None = None,
                 databases: dict | None = None, users: dict | None = None,
                 user_settings: dict | None = None):
        self.pg = pg
        self.dir = workdir
        self.port = free_port()
        self.ini_path = workdir / "pgbouncer.ini"
        self.auth_path = workdir / "userlist.txt"
        self.log_path = workdir / "pooler.log"
        self.sockdir = workdir / "sock"
        self.sockdir.mkdir(mode=0o755)
        give(self.sockdir)
        self.proc: subprocess.Popen | None = None
        self.settings: dict = {}
        self.databases: dict = {}
        self.users: dict = {}
        self.user_settings: dict = {}
        self._configure(settings, databases, users, user_settings)

    # -- configuration ------------------------------------------------------------------------

    def default_database(self, dbname: str = "appdb", **kw: Any) -> dict:
        return {"host": "127.0.0.1", "port": self.pg.port, "dbname": dbname, **kw}

    def _configure(self, settings, databases, users, user_settings) -> None:
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": str(self.sockdir),
            "auth_type": "md5",
            "auth_file": str(self.auth_path),
            "admin_users": ADMIN_USER,
            "pool_mode": "transaction",
            "default_pool_size": 5,
            "max_client_conn": 500,
            "server_login_retry": 1,
        }
        self._merge(self.settings, settings)
        self.databases = databases if databases is not None else {
            "appdb": self.default_database()}
        self.users = {**PASSWORDS, ADMIN_USER: ADMIN_PASSWORD}
        self._merge(self.users, users)
        self.user_settings = user_settings or {}
        self._write()

    @staticmethod
    def _merge(into: dict, over: dict | None) -> None:
        for k, v in (over or {}).items():
            if v is None:
                into.pop(k, None)
            else:
                into[k] = v

    def _write(self) -> None:
        lines = ["[databases]"]
        lines += [f"{name} = {_connstr(e)}" for name, e in self.databases.items()]
        lines += ["", "[users]"]
        lines += [f"{name} = {_connstr(e)}" for name, e in self.user_settings.items()]
        lines += ["", "[pgbouncer]"]
        lines += [f"{k} = {_ini_value(v)}" for k, v in self.settings.items()]
        write_file(self.ini_path, "\n".join(lines) + "\n")
        auth = "".join(f'"{u}" "{s}"\n' for u, s in self.users.items())
        write_file(self.auth_path, auth, 0o644)

    def rewrite(self, settings: dict | None = None, databases: dict | None = None,
                users: dict | None = None, reload: bool = True) -> None:
        """Changes the config files (merging like the constructor) and by default reloads."""
        self._merge(self.settings, settings)
        if databases is not None:
            self.databases = databases
        self._merge(self.users, users)
        self._write()
        if reload:
            self.reload()

    # -- process ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        if IS_SLUICE:
            return [str(SLUICE_BIN), "serve", str(self.ini_path)]
        return as_postgres([str(PGBOUNCER_BIN), str(self.ini_path)])

    def start(self, timeout: float = 15) -> "Pooler":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        def accepting():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"pooler exited with {self.proc.returncode} during startup:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        try:
            wait_until(accepting, timeout, what="the pooler to listen")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- pooler log ---\n{self.log()}") from None

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def kill(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"pooler still running {timeout}s after being told to stop:\n{self.log()}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Stops the pooler with sig; kills it if it does not exit in time. Returns its status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- clients ------------------------------------------------------------------------------

    def conn_kwargs(self, user: str = "sluice_md5", password: str | None = None,
                    dbname: str = "appdb", **kw: Any) -> dict:
        if password is None:
            password = self.users.get(user, PASSWORDS.get(user, ""))
            if password.startswith(("md5", "SCRAM-SHA-256$")):
                password = PASSWORDS.get(user, password)
        args = {"host": "127.0.0.1", "port": self.port, "user": user, "password": password,
                "dbname": dbname, "connect_timeout": 10, "sslmode": "disable"}
        args.update(kw)
        return args

    def dsn(self, user: str = "sluice_md5", password: str | None = None,
            dbname: str = "appdb", **kw: Any) -> str:
        return psycopg.conninfo.make_conninfo(**self.conn_kwargs(user, password, dbname, **kw))

    def connect(self, user: str = "sluice_md5", password: str | None = None,
                dbname: str = "appdb", autocommit: bool = True,
                prepare_threshold: int | None = None, **kw: Any) -> psycopg.Connection:
        """A psycopg connection through the pooler. Server-side prepared statements are off by
        default (psycopg would prepare a query run 5 times, which transaction pooling without
        prepared-statement support breaks); pass prepare_threshold to turn them on."""
        conn = psycopg.connect(autocommit=autocommit,
                               **self.conn_kwargs(user, password, dbname, **kw))
        conn.prepare_threshold = prepare_threshold
        return conn

    def admin(self, sql: str) -> list[dict]:
        """Runs one console command on the virtual `pgbouncer` database; rows as dicts."""
        with psycopg.connect(autocommit=True, row_factory=dict_row,
                             **self.conn_kwargs(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer")) as c:
            cur = c.execute(sql)
            return cur.fetchall() if cur.description else []

    def wire(self, user: str = "sluice_md5", password: str | None = None,
             dbname: str = "appdb", timeout: float = 10, **params: str) -> pgwire.PgWire:
        """A raw protocol connection (any startup parameters, full error fields)."""
        kw = self.conn_kwargs(user, password, dbname)
        return pgwire.connect("127.0.0.1", self.port, user, dbname, kw["password"], timeout,
                              **params)

    def login_error(self, user: str = "sluice_md5", password: str | None = None,
                    dbname: str = "appdb", timeout: float = 10,
                    **params: str) -> pgwire.ServerError:
        """Logs in expecting a refusal and returns the ErrorResponse."""
        kw = self.conn_kwargs(user, password, dbname)
        return pgwire.login_error("127.0.0.1", self.port, user, dbname, kw["password"],
                                  timeout, **params)

    def env(self, user: str = "sluice_md5", password: str | None = None) -> dict:
        """Environment for libpq command-line tools (pgbench, psql) pointed at the pooler."""
        kw = self.conn_kwargs(user, password)
        return {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": user,
                "PGPASSWORD": kw["password"], "PGSSLMODE": "disable"}


def run_threads(target: Callable[[int], Any], n: int, timeout: float = 60) -> list[Any]:
    """Runs target(i) for i in range(n) in threads; returns results (or the exceptions raised)."""
    results: list[Any] = [None] * n

    def wrap(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as e:  # handed back to the test to assert on
            results[i] = e
    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if alive:
        raise AssertionError(f"{alive} of {n} client threads still running after {timeout}s")
    return results


def errors(results: Iterable[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


def rmtree(path: Path) -> None:
    if not KEEP_TMP:
        shutil.rmtree(path, ignore_errors=True)


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer",
                     "runtime error:", "ERROR: ThreadSanitizer")


def sanitizer_report(log: str) -> str:
    """The first sanitizer report in a pooler log (with some context), or ""."""
    for marker in SANITIZER_MARKERS:
        i = log.find(marker)
        if i >= 0:
            return log[max(0, i - 200):i + 4000]
    return ""
