"""The HTTP ops endpoints (`http_listen`): /health, /readyz, /metrics, ops_allow, slow clients.

sluice only: PgBouncer 1.18 has no HTTP endpoints.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from harness import free_port, wait_until

pytestmark = pytest.mark.sluice_only(reason="PgBouncer has no HTTP endpoints")


def get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 5) -> tuple[int, str]:
    """GET http://host:port/path -> (status, body); error statuses are returned, not raised."""
    netloc = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{netloc}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get_json(port: int, path: str, **kw) -> tuple[int, dict]:
    status, body = get(port, path, **kw)
    return status, json.loads(body)


def start(poolers, databases=None, **settings):
    port = free_port()
    p = poolers(settings={"http_listen": f"127.0.0.1:{port}", **settings}, databases=databases)
    p.http_port = port
    return p


# ---- a tiny Prometheus text-format parser -------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse_metrics(text: str) -> dict[str, list[tuple[dict, float]]]:
    """name -> [(labels, value)]; checks every line is a comment or a well-formed sample and
    that each family's samples follow its # TYPE line."""
    out: dict[str, list[tuple[dict, float]]] = {}
    types: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"family {name} twice"
            types[name] = kind
            current = name
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name, labels_text, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if current and \
            types.get(current) == "histogram" else name
        assert family == current, f"{name} outside its family ({current})"
        labels = {}
        if labels_text:
            consumed = "".join(x.group(0) for x in _LABEL.finditer(labels_text))
            assert consumed == labels_text, f"bad labels: {labels_text!r}"
            labels = {k: re.sub(r'\\(.)', lambda g: "\n" if g.group(1) == "n" else g.group(1), v)
                      for k, v in _LABEL.findall(labels_text)}
        out.setdefault(name, []).append((labels, float(value)))
    return out


def value(metrics: dict, name: str, **labels) -> float:
    for have, v in metrics.get(name, []):
        if have == labels:
            return v
    raise AssertionError(f"no {name}{labels} in {metrics.get(name)}")


def scrape(p) -> dict:
    status, body = get(p.http_port, "/metrics")
    assert status == 200, body
    return parse_metrics(body)


# ---- /health ----------------------------------------------------------------------------------

def test_health_is_ok_while_loops_tick(poolers):
    p = start(poolers, workers=2)
    status, body = get_json(p.http_port, "/health")
    assert (status, body) == (200, {"status": "ok"})
    status, _ = get(p.http_port, "/nonsense")
    assert status == 404


# ---- /readyz ----------------------------------------------------------------------------------

def test_readyz_reports_pools_under_load(poolers):
    p = start(poolers, default_pool_size=1)
    with p.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        status, body = get_json(p.http_port, "/readyz")
        assert status == 200 and body["status"] == "ok", body
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["timestamp"])
        (pool,) = body["pools"]
        assert {k: pool[k] for k in ("poolName", "database", "user", "totalCount", "idleCount",
                                     "activeCount", "waitingCount", "utilizationPercent")} == {
            "poolName": "appdb/sluice_md5", "database": "appdb", "user": "sluice_md5",
            "totalCount": 1, "idleCount": 0, "activeCount": 1, "waitingCount": 0,
            "utilizationPercent": 100}
        assert pool["maxWaitMs"] == 0 and pool["timestamp"] == body["timestamp"]

        # A second client waits for the only server: degraded, still 200.
        waiter = p.connect()
        t = threading.Thread(target=lambda: waiter.execute("SELECT 2"), daemon=True)
        t.start()

        def degraded():
            s, b = get_json(p.http_port, "/readyz")
            return (s, b) if b["status"] == "degraded" else None
        status, body = wait_until(degraded, 10, what="/readyz to say degraded")
        assert status == 200
        (pool,) = body["pools"]
        assert pool["waitingCount"] == 1 and pool["maxWaitMs"] >= 0, pool
        holder.execute("COMMIT")
        t.join(10)
        waiter.close()
    wait_until(lambda: get_json(p.http_port, "/readyz")[1]["status"] == "ok", 10,
               what="/readyz ok again")


def test_readyz_503_while_a_database_is_unreachable(poolers, pg):
    dead_port = free_port()  # nothing listens there
    p = start(poolers, query_wait_timeout=3, databases={
        "appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb"},
        "deaddb": {"host": "127.0.0.1", "port": dead_port, "dbname": "appdb"}})
    errors = []

    def try_connect():
        try:
            p.connect(dbname="deaddb").close()
        except psycopg.Error as e:
            errors.append(e)
    t = threading.Thread(target=try_connect, daemon=True)
    t.start()

    def unavailable():
        s, b = get_json(p.http_port, "/readyz")
        return (s, b) if s == 503 else None
    status, body = wait_until(unavailable, 10, what="/readyz 503")
    assert body["status"] == "unavailable", body
    dead = [x for x in body["pools"] if x["database"] == "deaddb"]
    assert dead and "lastLoginError" in dead[0], body
    # Liveness is not readiness: the process itself is fine.
    assert get_json(p.http_port, "/health") == (200, {"status": "ok"})
    t.join(15)
    assert errors, "the client of the unreachable database should have been refused"
    # The reachable database's pool is unaffected.
    with p.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_readyz_503_while_shutting_down(poolers):
    p = start(poolers)
    with p.connect() as c:
        c.execute("SELECT 1")
        assert get_json(p.http_port, "/readyz")[0] == 200
        # SIGTERM waits for clients to disconnect; meanwhile sluice is not ready.
        p.kill(signal.SIGTERM)
        status, body = wait_until(
            lambda: (lambda r: r if r[0] == 503 else None)(get_json(p.http_port, "/readyz")), 10,
            what="/readyz 503 during shutdown")
        assert body["status"] == "unavailable", body
        assert get_json(p.http_port, "/health")[0] == 200
    p.wait_exit(15)


def test_readyz_503_while_paused_or_disabled(poolers):
    p = start(poolers)
    with p.connect() as c:
        c.execute("SELECT 1")
        assert get_json(p.http_port, "/readyz")[0] == 200
        p.admin("PAUSE")
        status, body = get_json(p.http_port, "/readyz")
        assert (status, body["status"], body.get("paused")) == (503, "unavailable", True), body
        assert body["pools"][0]["paused"] is True, body
        assert get_json(p.http_port, "/health")[0] == 200  # alive, just not ready
        p.admin("RESUME")
        status, body = get_json(p.http_port, "/readyz")
        assert (status, body["status"]) == (200, "ok") and "paused" not in body, body
        # One database paused or disabled: not ready either, and the pool says why.
        p.admin("PAUSE appdb")
        status, body = get_json(p.http_port, "/readyz")
        assert status == 503 and body["pools"][0]["paused"] is True, body
        p.admin("RESUME appdb")
        p.admin("DISABLE appdb")
        status, body = get_json(p.http_port, "/readyz")
        assert status == 503 and body["pools"][0]["disabled"] is True, body
        p.admin("ENABLE appdb")
        assert get_json(p.http_port, "/readyz")[0] == 200
        assert c.execute("SELECT 2").fetchone() == (2,)


# ---- ops_allow --------------------------------------------------------------------------------

def test_ops_allow_refuses_peers_outside_it(poolers):
    p = start(poolers, ops_allow="10.0.0.0/8, 192.168.0.0/16")
    for path in ("/readyz", "/metrics"):
        status, body = get_json(p.http_port, path)
        assert status == 403 and "127.0.0.1 is not in ops_allow" in body["error"], (path, body)
    assert get(p.http_port, "/health")[0] == 200  # open to all

    # ops_allow follows a reload.
    p.rewrite(settings={"ops_allow": "10.0.0.0/8, 127.0.0.1"})
    wait_until(lambda: get(p.http_port, "/readyz")[0] == 200, 10, what="ops_allow reloaded")


def test_ops_allow_over_ipv6(poolers):
    port = free_port()
    p = poolers(settings={"http_listen": f"[::1]:{port}", "ops_allow": "127.0.0.0/8"})
    assert get(port, "/health", host="::1")[0] == 200
    assert get(port, "/metrics", host="::1")[0] == 403
    p.rewrite(settings={"ops_allow": "::1/128"})
    wait_until(lambda: get(port, "/metrics", host="::1")[0] == 200, 10, what="::1 allowed")


# ---- /metrics ---------------------------------------------------------------------------------

def test_metrics_parse_and_counters_move(poolers):
    p = start(poolers, workers=2)
    db = {"database": "appdb", "user": "sluice_md5"}
    with p.connect() as c:
        c.execute("SELECT 1")
    before = wait_until(lambda: (lambda m: m if value(
        m, "sluice_client_disconnects_total", reason="client_terminate", **db) == 1 else None)(
        scrape(p)), 10, what="the first client's Terminate to be counted")
    assert value(before, "sluice_up") == 1
    assert value(before, "sluice_pool_size", **db) == 5
    assert before["sluice_info"][0][0]["version"]

    n = 7
    with p.connect(application_name="counter_app") as c:
        for i in range(n):
            with c.transaction():
                c.execute("SELECT %s", (i,))
        after = scrape(p)
        assert value(after, "sluice_client_connections") >= 1
        assert value(after, "sluice_pool_client_connections", **db) == 1
        assert value(after, "sluice_app_client_connections", application_name="counter_app") == 1
    # psycopg's close sends Terminate.
    final = wait_until(lambda: (lambda m: m if value(
        m, "sluice_client_disconnects_total", reason="client_terminate", **db) >= 2 else None)(
        scrape(p)), 10, what="the Terminate to be counted")

    assert value(after, "sluice_pool_transactions_total", **db) - \
        value(before, "sluice_pool_transactions_total", **db) == n
    assert value(after, "sluice_pool_queries_total", **db) - \
        value(before, "sluice_pool_queries_total", **db) >= n
    assert value(after, "sluice_pool_transaction_seconds_total", **db) > \
        value(before, "sluice_pool_transaction_seconds_total", **db)
    assert value(after, "sluice_pool_client_bytes_received_total", **db) > \
        value(before, "sluice_pool_client_bytes_received_total", **db)
    assert value(after, "sluice_pool_client_bytes_sent_total", **db) > \
        value(before, "sluice_pool_client_bytes_sent_total", **db)
    assert value(after, "sluice_pool_server_logins_total", **db) >= 1
    assert value(after, "sluice_pool_server_login_failures_total", **db) == 0

    # The wait histogram: one observation per transaction, cumulative buckets.
    grew = value(after, "sluice_pool_wait_seconds_count", **db) - \
        value(before, "sluice_pool_wait_seconds_count", **db)
    assert grew == n, grew
    buckets = [(float(lb["le"]), v) for lb, v in after["sluice_pool_wait_seconds_bucket"]
               if lb["database"] == "appdb"]
    assert buckets == sorted(buckets), buckets
    assert buckets[-1] == (float("inf"), value(after, "sluice_pool_wait_seconds_count", **db))
    assert value(after, "sluice_pool_hold_seconds_count", **db) >= n

    assert value(final, "sluice_client_disconnects_total", reason="client_terminate", **db) - \
        value(before, "sluice_client_disconnects_total", reason="client_terminate", **db) == 1
    # Pool-less closes are counted without database and user.
    with pytest.raises(psycopg.Error):
        p.connect(dbname="no_such_db")
    wait_until(lambda: value(scrape(p), "sluice_client_disconnects_total",
                             reason="unknown_database") >= 1, 10, what="unknown_database counted")


def test_metrics_show_who_holds_servers_per_application(poolers):
    p = start(poolers, default_pool_size=2)
    dup1 = p.connect(application_name="nightly_report")
    dup2 = p.connect(application_name="nightly_report")
    other = p.connect(application_name="web")
    try:
        dup1.execute("BEGIN")
        dup1.execute("SELECT 1")  # holds a server, idle in transaction
        other.execute("SELECT 1")
        m = scrape(p)
        app = {"application_name": "nightly_report"}
        assert value(m, "sluice_app_client_connections", **app) == 2
        assert value(m, "sluice_app_servers_held", **app) == 1
        assert value(m, "sluice_app_servers_idle_in_transaction", **app) == 1
        assert value(m, "sluice_app_longest_hold_seconds", **app) >= 0
        assert value(m, "sluice_app_servers_held", application_name="web") == 0
        assert value(m, "sluice_app_metrics_missing") == 0
        assert value(m, "sluice_pool_server_connections", database="appdb", user="sluice_md5",
                     state="active") == 1
        assert value(m, "sluice_pool_utilization_ratio", database="appdb",
                     user="sluice_md5") == 0.5
    finally:
        for c in (dup1, dup2, other):
            c.close()


# ---- slow and malformed HTTP clients ----------------------------------------------------------

def test_slow_http_clients_do_not_block_health_or_pooling(poolers):
    p = start(poolers)
    silent = socket.create_connection(("127.0.0.1", p.http_port))
    dribbler = socket.create_connection(("127.0.0.1", p.http_port))
    stop = threading.Event()

    def dribble():
        # One byte of a never-ending header every 0.2 s.
        with dribbler:
            dribbler.sendall(b"GET /health HTTP/1.1\r\n")
            try:
                while not stop.wait(0.2):
                    dribbler.sendall(b"X")
            except OSError:
                pass  # cut off by the deadline
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        for _ in range(3):
            started = time.monotonic()
            assert get_json(p.http_port, "/health", timeout=2) == (200, {"status": "ok"})
            assert time.monotonic() - started < 1
        with p.connect() as c:
            assert c.execute("SELECT 42").fetchone() == (42,)
        # An oversized request is cut off, and the server keeps serving.
        with socket.create_connection(("127.0.0.1", p.http_port)) as big:
            big.settimeout(5)
            try:
                big.sendall(b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n")
                reply = big.recv(100)
            except OSError:
                reply = b""
            assert not reply.startswith(b"HTTP/1.1 200"), reply
        assert get(p.http_port, "/health")[0] == 200
        # The silent connection is closed at the connection deadline (5 s after accept).
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - started < 8
    finally:
        stop.set()
        silent.close()
        t.join(10)


def test_http_listen_in_use_fails_startup(poolers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = poolers(settings={"http_listen": f"127.0.0.1:{port}"}, start=False)
        with pytest.raises(AssertionError) as e:
            p.start(timeout=5)
        assert f"http_listen = 127.0.0.1:{port}" in str(e.value), e.value


# ---- ops_allow from a real non-loopback address -------------------------------------------------

def _local_ipv4() -> str | None:
    """A non-loopback IPv4 address of this machine (from `hostname -I`), or None."""
    import subprocess
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for addr in out.split():
        if "." in addr and not addr.startswith("127."):
            return addr
    return None


def test_ops_allow_refuses_a_non_loopback_peer(poolers):
    addr = _local_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    p = poolers(settings={"http_listen": f"0.0.0.0:{port}", "ops_allow": "127.0.0.1/32"})
    # Connecting to our own non-loopback address makes it the peer address too.
    for path in ("/readyz", "/metrics"):
        status, body = get_json(port, path, host=addr)
        assert status == 403 and f"{addr} is not in ops_allow" in body["error"], (path, body)
        assert get(port, path)[0] == 200  # loopback is allowed
    assert get_json(port, "/health", host=addr) == (200, {"status": "ok"})  # open to all
    p.rewrite(settings={"ops_allow": f"127.0.0.1/32, {addr}/32"})
    wait_until(lambda: get(port, "/metrics", host=addr)[0] == 200, 10,
               what="the address allowed after a reload")


# ---- errors, timeouts, hold warnings and per-application hold time in /metrics ----------------

def test_metrics_count_errors_by_sqlstate_and_timeouts_by_kind(poolers):
    p = start(poolers, idle_transaction_timeout=0.5)
    db = {"database": "appdb", "user": "sluice_md5"}
    c = p.connect(application_name="err_app")
    try:
        for _ in range(2):
            with pytest.raises(psycopg.errors.SyntaxError):
                c.execute("SELEC 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1/0")
        c.execute("BEGIN")
        c.execute("SELECT 1")
        # Idle in the transaction past idle_transaction_timeout: sluice closes it (25P03).
        wait_until(lambda: value(scrape(p), "sluice_pool_timeouts_total",
                                 kind="idle_transaction_timeout", **db) == 1, 10,
                   what="the idle_transaction_timeout to be counted")
    finally:
        with contextlib.suppress(psycopg.Error):
            c.close()  # sluice closed it already
    m = scrape(p)
    assert value(m, "sluice_pool_errors_total", sqlstate="42601", source="server", **db) == 2
    assert value(m, "sluice_pool_errors_total", sqlstate="22012", source="server", **db) == 1
    assert value(m, "sluice_pool_errors_total", sqlstate="25P03", source="sluice", **db) == 1
    assert value(m, "sluice_pool_timeouts_total", kind="query_timeout", **db) == 0
    assert value(m, "sluice_client_disconnects_total", reason="idle_transaction_timeout",
                 **db) == 1
    # Hold time stays counted for the application after its client closed.
    assert value(m, "sluice_app_server_hold_seconds_total", application_name="err_app") >= 0.5


def test_query_wait_timeout_is_its_own_reason_and_timeout_kind(poolers):
    p = start(poolers, default_pool_size=1, query_wait_timeout=0.5)
    db = {"database": "appdb", "user": "sluice_md5"}
    with p.connect() as holder, p.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError) as e:
            waiter.execute("SELECT 2")
        assert "query_wait_timeout" in str(e.value), e.value
        holder.execute("COMMIT")
    m = wait_until(lambda: (lambda m: m if value(m, "sluice_pool_timeouts_total",
                                                 kind="query_wait_timeout", **db) == 1 else None)(
        scrape(p)), 10, what="query_wait_timeout counted")
    assert value(m, "sluice_client_disconnects_total", reason="query_wait_timeout", **db) == 1
    assert value(m, "sluice_pool_errors_total", sqlstate="57014", source="sluice", **db) == 1


def test_every_metric_is_documented(poolers):
    """docs/metrics.md lists every metric family /metrics exposes (issue 5)."""
    p = start(poolers)
    with p.connect() as c:  # a pool, a client and a server, so per-pool families appear
        c.execute("SELECT 1")
        status, body = get(p.http_port, "/metrics")
    assert status == 200
    families = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    assert len(families) > 20, sorted(families)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    missing = sorted(f for f in families if f not in docs)
    assert not missing, f"not in docs/metrics.md: {missing}"
