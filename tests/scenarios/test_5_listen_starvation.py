"""Scenario 5: LISTEN starvation (seed 001: "Separated to prevent LISTEN connections from
starving transactional work").

The incident's application kept 9 outbox handlers LISTENing, each on a connection held forever;
in one pool with the transactional work they would hold most of it, so it had to run a
separate pool for them.

Replayed in one transaction-mode pool of 5 (query_wait_timeout 3 s, the workers' deadline):
10 clients with application_name "outbox-listener" each run LISTEN outbox and stay connected
waiting for notifications; once every LISTEN has been answered (or refused), 4 workers with
application_name "api" run 5 short transactions each. Then a NOTIFY outbox is sent straight
to PostgreSQL. Asserted (what the issue demands: sessions that LISTEN cannot take the
transactional pool's servers):
- every worker transaction is served within query_wait_timeout: no 57014, no error;
- every listener either had its LISTEN succeed and then receives the NOTIFY (a LISTEN that
  succeeds but never delivers is silent breakage), or was refused with an ErrorResponse that
  carries a SQLSTATE (a clear error), never a hang.
What sluice does with a LISTEN in transaction mode (session_state = pin, the default) is to pin
the client to its server for the rest of its session; the report shows who holds what
(SHOW HOLDERS, SHOW POOLS, backends) while the workers run.
"""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest

import pgwire
from harness import IS_SLUICE, run_threads
from scenario_lib import Admin, Expect, Outcomes, is_sqlstate

pytestmark = pytest.mark.sluice_only(
    reason="PgBouncer 1.18 in transaction mode gives the server back after LISTEN: the "
           "listeners' notifications are lost (it passes the workers' part)")

POOL_SIZE = 5
LISTENERS = 10
WORKERS = 4
TX_PER_WORKER = 5
WAIT_DEADLINE_S = 3


def wait_notification(w: pgwire.PgWire, deadline: float) -> str | None:
    """The payload of the next NotificationResponse, or None if none came by `deadline`
    (time.monotonic())."""
    try:
        while (left := deadline - time.monotonic()) > 0:
            w.sock.settimeout(left)
            kind, body = w.read_message()
            if kind == b"A":
                rest = body[4:]  # after the notifying backend's pid
                _channel, payload, _ = rest.split(b"\0", 2)
                return payload.decode()
    except (socket.timeout, pgwire.ConnectionClosed, OSError):
        return None
    return None


def test_listen_does_not_starve_transactional_work(poolers, pg, report):
    p = poolers(settings={"default_pool_size": POOL_SIZE, "query_wait_timeout": WAIT_DEADLINE_S})
    listen = Outcomes()
    listening: list[pgwire.PgWire] = []
    answered = threading.Semaphore(0)
    lock = threading.Lock()

    def listener(i: int) -> None:
        try:
            w = p.wire(application_name="outbox-listener", timeout=30)
        except pgwire.ServerError as e:
            listen.error(e)
            answered.release()
            return
        try:
            w.query("LISTEN outbox")
            listen.ok()
            with lock:
                listening.append(w)
        except pgwire.ServerError as e:
            listen.error(e)
            w.close()
        except (OSError, pgwire.ConnectionClosed) as e:
            listen.error(e)
            w.close()
        finally:
            answered.release()

    listener_threads = [threading.Thread(target=listener, args=(i,), daemon=True)
                        for i in range(LISTENERS)]
    for t in listener_threads:
        t.start()
    # Every LISTEN answered, one way or the other (a waiting one within query_wait_timeout).
    for _ in range(LISTENERS):
        assert answered.acquire(timeout=WAIT_DEADLINE_S + 20), "a LISTEN got no answer"

    workers = Outcomes()
    held = {"holders": [], "pool": {}, "backends": 0}

    def worker(i: int) -> None:
        try:
            with p.connect(application_name="api") as c:
                for _ in range(TX_PER_WORKER):
                    with c.transaction():
                        c.execute("SELECT 1")
                    workers.ok()
        except psycopg.Error as e:
            workers.error(e)

    def snapshot() -> None:
        with Admin(p) as admin:
            time.sleep(0.5)  # the workers are queued or running by now
            held["pool"] = admin.pool()
            if IS_SLUICE:
                held["holders"] = admin.show("HOLDERS")
        held["backends"] = pg.backend_count("sluice_md5")

    snap = threading.Thread(target=snapshot, daemon=True)
    snap.start()
    started = time.monotonic()
    run_threads(worker, WORKERS, timeout=WAIT_DEADLINE_S + 30)
    workers_s = time.monotonic() - started
    snap.join(10)

    with pg.connect("appdb") as direct:
        direct.execute("NOTIFY outbox, 'ping'")
    deadline = time.monotonic() + 5  # one deadline for all: they were all notified at once
    received = [wait_notification(w, deadline) for w in listening]
    for w in listening:
        w.close()
    delivered = sum(1 for r in received if r == "ping")

    pool = held["pool"]
    holders = held["holders"]
    pinned = sum(1 for h in holders if h.get("pinned"))
    report(f"pool_size {POOL_SIZE}, query_wait_timeout {WAIT_DEADLINE_S} s\n"
           f"{LISTENERS} listeners: LISTEN {listen.summary()}; NOTIFY delivered to "
           f"{delivered} of {len(listening)} that listen\n"
           f"{WORKERS} workers x {TX_PER_WORKER} transactions: {workers.summary()} in "
           f"{workers_s:.1f} s\n"
           f"while the workers ran: SHOW POOLS cl_active {pool.get('cl_active')} cl_waiting "
           f"{pool.get('cl_waiting')} sv_active {pool.get('sv_active')} sv_idle "
           f"{pool.get('sv_idle')}; {held['backends']} backends"
           + (f"; SHOW HOLDERS: {len(holders)} rows, " + ", ".join(
               f"{h['application_name']}({h['state']}, pinned={h['pinned'] or '-'})"
               for h in holders) + f" ({pinned} pinned)" if IS_SLUICE else "")
           + (f"\nlisten errors: {listen.detail()}" if listen.failures() else "")
           + (f"\nworker errors: {workers.detail()}" if workers.failures() else ""))

    expect = Expect()
    expect(workers.counts["ok"] == WORKERS * TX_PER_WORKER,
           f"transactional work starved by LISTEN sessions: {workers.summary()}\n"
           f"{workers.detail()}")
    unclear = {k: v for k, v in listen.failures().items() if not is_sqlstate(k)}
    expect(not unclear, f"listeners failed without a SQLSTATE: {listen.detail()}")
    expect(delivered == len(listening),
           f"{len(listening) - delivered} listeners whose LISTEN succeeded got no notification")
    expect.verify()
