"""Helpers the scenarios share on top of tests/integration/harness.py: a TCP proxy that slows
PostgreSQL's logins, an admin-console connection for sampling, /metrics, stopping a whole
cluster with SIGSTOP, and tallying client outcomes by SQLSTATE."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import harness
from harness import ADMIN_PASSWORD, ADMIN_USER, IS_SLUICE, Pooler, Postgres, sqlstate

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def dedicated_pg(conf: dict, scope: str = "module"):
    """A fixture (use it as `pg = dedicated_pg({...})` in a test module) that starts a cluster
    of its own with extra postgresql.conf settings, for the module's tests only."""
    @pytest.fixture(scope=scope)
    def _pg(workdir, request) -> Postgres:
        base = workdir / f"pg-{request.node.name.replace('/', '_').replace('.py', '')}"
        base.mkdir()
        harness.give(base)
        server = Postgres(base, conf)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    return _pg


class SlowLoginProxy:
    """A TCP proxy in front of PostgreSQL that waits `delay` seconds after accepting each
    connection before it connects upstream and relays: a database whose logins are slow.

    It also measures logins exactly, without sampling: a connection is logging in from accept
    until PostgreSQL's first ReadyForQuery (or ErrorResponse) comes back through it.
    `peak_logins` is the most that were logging in at once, `connections` how many it accepted.
    """

    def __init__(self, upstream_port: int, delay: float, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.delay = delay
        self.port = 0
        self.connections = 0
        self.logins = 0
        self.peak_logins = 0
        self.completed_logins = 0
        # One record per connection: accepted / login_over (time.monotonic()), ok, peer port.
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "SlowLoginProxy":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024), self._loop)
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shut():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "SlowLoginProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _login_over(self, state: dict) -> None:
        with self._lock:
            if state["in_login"]:
                state["in_login"] = False
                state["login_over"] = time.monotonic()
                self.logins -= 1
                if state["ok"]:
                    self.completed_logins += 1

    def peak_overlap(self) -> str:
        """The logins in flight at the moment the most were, for a failure message: when each
        was accepted and when its login ended, in ms from the first accept."""
        with self._lock:
            recs = [dict(r) for r in self.records]
        if not recs:
            return ""
        t0 = min(r["accepted"] for r in recs)
        best: list[dict] = []
        for r in recs:
            at = r["accepted"]
            live = [o for o in recs if o["accepted"] <= at < o.get("login_over", float("inf"))]
            if len(live) > len(best):
                best = live
        return "; ".join(
            f"peer port {o['peer']}: accepted {1000 * (o['accepted'] - t0):.1f} ms, login over "
            + (f"{1000 * (o['login_over'] - t0):.1f} ms ({'ok' if o['ok'] else 'failed'})"
               if "login_over" in o else "never")
            for o in best)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state = {"in_login": True, "ok": False, "ssl_reply": False,
                 "accepted": time.monotonic(), "peer": writer.get_extra_info("peername")[1]}
        with self._lock:
            self.records.append(state)
            self.connections += 1
            self.logins += 1
            self.peak_logins = max(self.peak_logins, self.logins)
        up_writer = None
        try:
            await asyncio.sleep(self.delay)
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(self._client_to_server(reader, up_writer, state),
                                 self._server_to_client(up_reader, writer, state))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._login_over(state)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _client_to_server(self, reader, writer, state) -> None:
        first = True
        while data := await reader.read(65536):
            if first and data[:8] == _SSL_REQUEST:
                state["ssl_reply"] = True  # PostgreSQL answers it with one byte, not a message
            first = False
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _server_to_client(self, reader, writer, state) -> None:
        buf = b""
        while data := await reader.read(65536):
            if state["in_login"]:
                buf += data
                if state["ssl_reply"] and buf:
                    buf, state["ssl_reply"] = buf[1:], False
                while len(buf) >= 5:
                    kind, length = buf[:1], struct.unpack("!i", buf[1:5])[0]
                    if kind in (b"Z", b"E"):
                        state["ok"] = kind == b"Z"
                        self._login_over(state)
                        buf = b""
                        break
                    if len(buf) < 1 + length:
                        break
                    buf = buf[1 + length:]
            writer.write(data)
            await writer.drain()
        writer.close()


class Admin:
    """One persistent admin-console connection (for sampling SHOW commands in a loop)."""

    def __init__(self, pooler: Pooler):
        self.conn = psycopg.connect(autocommit=True, row_factory=dict_row,
                                    **pooler.conn_kwargs(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer"))
        self.conn.prepare_threshold = None

    def show(self, what: str) -> list[dict]:
        cur = self.conn.execute(f"SHOW {what}")
        return cur.fetchall() if cur.description else []

    def pool(self, database: str = "appdb", user: str = "sluice_md5") -> dict:
        for row in self.show("POOLS"):
            if row["database"] == database and row["user"] == user:
                return row
        return {}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def scrape_metrics(http_port: int) -> dict:
    """/metrics parsed as name -> [(labels, value)] (test_http's parser)."""
    from test_http import get, parse_metrics
    status, body = get(http_port, "/metrics")
    assert status == 200, body
    return parse_metrics(body)


def metric(metrics: dict, name: str, default: float | None = None, **labels: str) -> float:
    for have, v in metrics.get(name, []):
        if have == labels:
            return v
    if default is not None:
        return default
    raise AssertionError(f"no {name}{labels} in /metrics: {metrics.get(name)}")


def cluster_pids(pg: Postgres) -> list[int]:
    """The postmaster and every process it forked (backends, checkpointer, ...)."""
    root = pg.proc.pid
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == root:
            children.append(int(entry.name))
    return [root] + children


def signal_cluster(pg: Postgres, sig: int) -> int:
    """Sends sig to the postmaster first (so it forks no more), then to its children."""
    pids = cluster_pids(pg)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


def stop_cluster(pg: Postgres) -> int:
    """SIGSTOPs the whole cluster; returns how many processes it stopped."""
    signal_cluster(pg, signal.SIGSTOP)
    # A backend forked between the listing and the postmaster's stop is caught by a second pass.
    return signal_cluster(pg, signal.SIGSTOP)


def continue_cluster(pg: Postgres) -> None:
    signal_cluster(pg, signal.SIGCONT)


# libpq drops the SQLSTATE of an error that ends a connection attempt; PostgreSQL's own texts
# for the errors the scenarios look for identify them.
_KNOWN_TEXTS = {
    "sorry, too many clients already": "53300",
    "remaining connection slots are reserved": "53300",
    "the database system is starting up": "57P03",
    "the database system is shutting down": "57P03",
    "sluice: no server connection within query_wait_timeout": "57014",
    "query_wait_timeout": "08P01",  # PgBouncer's "ERROR: query_wait_timeout"
}


def is_sqlstate(kind: str) -> bool:
    """True for an Outcomes kind that is a SQLSTATE (a clear error), not an exception's name."""
    return re.fullmatch(r"[0-9A-Z]{5}", kind) is not None


def _sqlstate_from_text(text: str) -> str | None:
    for needle, code in _KNOWN_TEXTS.items():
        if needle in text:
            return code
    return None


class Outcomes:
    """Tallies what clients got: "ok", a SQLSTATE, or the exception's type when there is none
    (a client-side timeout, a closed socket). Thread-safe; `.messages` keeps one text per kind."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.messages: dict[str, str] = {}
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            self.counts["ok"] += 1

    def error(self, exc: BaseException) -> str:
        kind = sqlstate(exc) or _sqlstate_from_text(str(exc)) or type(exc).__name__
        with self._lock:
            self.counts[kind] += 1
            self.messages.setdefault(kind, str(exc).strip().splitlines()[0][:300] if str(exc)
                                     else type(exc).__name__)
        return kind

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k != "ok"}

    def summary(self) -> str:
        parts = [f"{self.counts['ok']} ok"]
        parts += [f"{v} x {k}" for k, v in sorted(self.failures().items())]
        return ", ".join(parts)

    def detail(self) -> str:
        return "\n".join(f"{k}: {m}" for k, m in sorted(self.messages.items()))


class Expect:
    """A scenario's requirements, checked together: expect(ok, message) records a failed one
    and verify() fails the test naming every one that failed, so that one run against a pooler
    tells all it lacks, not only the first."""

    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, ok: Any, message: str) -> None:
        if not ok:
            self.failed.append(message)

    def verify(self) -> None:
        assert not self.failed, (f"{len(self.failed)} requirement(s) not met:\n- "
                                 + "\n- ".join(m.replace("\n", "\n  ") for m in self.failed))


def sluice_settings(**settings: Any) -> dict:
    """settings only sluice knows (PgBouncer 1.18 refuses to start on an unknown key)."""
    return settings if IS_SLUICE else {}

