"""Scenario 2: excessive concurrency (seed 000, bug #3; seed 003's LLM call inside a session).

The incident: 100 queue handlers each held a transaction open across a slow AI call on a pool
of 30; the pool ran dry and every other part of the application (the queue ticker, the API)
timed out waiting for a connection.

Replayed: 100 clients with application_name "holders" each run BEGIN; SELECT; a 1-5 s sleep in
the client (the AI call; durations spread evenly, fixed seed); COMMIT, on a pool of 30, all at
once: 30 hold servers, 70 wait. Once the holders' queue stands, 3 clients with application_name
"api" send short requests (SELECT 1) one after another until the holders are done, each with a
2 s deadline: the client cancels a request still unanswered after 2 s. query_wait_timeout is
30 s, so the holders do get served in the end and it is not the pooler's timeout that clears
the queue. Asserted:
- every api request is served within its 2 s deadline (no cancel fired, no error), although 70
  holders were queued before them: waiting clients are served in turns across application_name
  (sluice's WaitQueue); a first-come-first-served queue makes each one wait for ~70 holders;
- every holder is served (within query_wait_timeout) and commits;
- the holders are named: SHOW HOLDERS lists application_name "holders" idle in transaction on
  (nearly) every server of the pool at the peak, and the leak warning (hold_warn_threshold
  0.5 s) names each holder that held a server, by application_name; no api request is named.
"""

from __future__ import annotations

import random
import re
import threading
import time

import psycopg
import pytest

from harness import IS_SLUICE, free_port, run_threads, wait_until
from scenario_lib import Admin, Expect, Outcomes, metric, scrape_metrics, sluice_settings

pytestmark = pytest.mark.sluice_only(
    reason="PgBouncer 1.18 serves waiting clients first come, first served (the api requests "
           "wait behind every holder) and has no SHOW HOLDERS or leak warning")

HOLDERS = 100
POOL_SIZE = 30
API_WORKERS = 3
API_DEADLINE_S = 2.0
HOLD_S = (1.0, 5.0)
HOLD_WARN_S = 0.5


def api_request(conn: psycopg.Connection, deadline: float) -> None:
    """SELECT 1 with a client-side deadline: a cancel is sent if no answer came in time. Raises
    TimeoutError if the deadline passed (whether or not the query still succeeded after)."""
    fired = threading.Event()

    def cancel() -> None:
        fired.set()
        conn.cancel()
    timer = threading.Timer(deadline, cancel)
    timer.start()
    try:
        conn.execute("SELECT 1").fetchone()
    finally:
        timer.cancel()
    if fired.is_set():
        raise TimeoutError(f"answered only after the {deadline} s deadline (cancel sent)")


def test_excessive_concurrency(poolers, report):
    http_port = free_port()
    p = poolers(settings={"default_pool_size": POOL_SIZE, "query_wait_timeout": 30,
                          "max_client_conn": 500,
                          **sluice_settings(hold_warn_threshold=HOLD_WARN_S,
                                            http_listen=f"127.0.0.1:{http_port}")})
    rng = random.Random(6)
    holds = [HOLD_S[0] + (HOLD_S[1] - HOLD_S[0]) * i / (HOLDERS - 1) for i in range(HOLDERS)]
    rng.shuffle(holds)
    holders = Outcomes()
    api = Outcomes()
    done = threading.Event()
    peak = {"holders": 0, "idle_in_tx": 0, "waiting": 0, "app_held": 0}

    def holder(i: int) -> None:
        try:
            with p.connect(application_name="holders", connect_timeout=30) as c:
                with c.transaction():
                    c.execute("SELECT pg_backend_pid()")
                    time.sleep(holds[i])  # the AI call, inside the transaction
            holders.ok()
        except psycopg.Error as e:
            holders.error(e)

    def api_worker() -> None:
        with p.connect(application_name="api") as c:
            while not done.is_set():
                try:
                    api_request(c, API_DEADLINE_S)
                    api.ok()
                except (psycopg.Error, TimeoutError) as e:
                    api.error(e)
                time.sleep(0.05)

    def watch() -> None:
        with Admin(p) as admin:
            while not done.is_set():
                pool = admin.pool()
                peak["waiting"] = max(peak["waiting"], int(pool.get("cl_waiting", 0)))
                if IS_SLUICE:
                    rows = [r for r in admin.show("HOLDERS") if r["application_name"] == "holders"]
                    peak["holders"] = max(peak["holders"], len(rows))
                    peak["idle_in_tx"] = max(peak["idle_in_tx"], sum(
                        r["state"].startswith("idle in transaction") for r in rows))
                    m = scrape_metrics(http_port)
                    peak["app_held"] = max(peak["app_held"], metric(
                        m, "sluice_app_servers_held", 0, application_name="holders"))
                time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    holder_threads = threading.Thread(
        target=lambda: run_threads(holder, HOLDERS, timeout=90), daemon=True)
    started = time.monotonic()
    holder_threads.start()
    try:
        # The holders' queue stands: every server held, most holders waiting.
        with Admin(p) as admin:
            wait_until(lambda: int(admin.pool().get("cl_waiting", 0)) >= HOLDERS - POOL_SIZE - 10,
                       30, what="the holders to fill the pool and queue")
        api_threads = [threading.Thread(target=api_worker, daemon=True)
                       for _ in range(API_WORKERS)]
        for t in api_threads:
            t.start()
        holder_threads.join(100)
    finally:
        done.set()
    for t in api_threads:
        t.join(10)
    watcher.join(10)
    took = time.monotonic() - started

    warned: set[str] = set()
    api_warned = 0
    if IS_SLUICE:
        for line in p.log().splitlines():
            m = re.search(r"\[C(\d+) [^\]]*\] application_name '([^']*)' has held a server", line)
            if m and m.group(2) == "holders":
                warned.add(m.group(1))
            elif m:
                api_warned += 1

    report(f"{HOLDERS} holders (hold {HOLD_S[0]:g}-{HOLD_S[1]:g} s in a transaction) on a pool of "
           f"{POOL_SIZE}, {API_WORKERS} api clients with a {API_DEADLINE_S:g} s deadline, "
           f"{took:.1f} s\n"
           f"api: {api.summary()}\n"
           f"holders: {holders.summary()}; peak {peak['waiting']} waiting (SHOW POOLS)"
           + (f"\nnamed: peak {peak['holders']} rows 'holders' in SHOW HOLDERS "
              f"({peak['idle_in_tx']} idle in transaction), peak "
              f"sluice_app_servers_held{{holders}} {peak['app_held']:g}; leak warnings name "
              f"{len(warned)} holders, {api_warned} other clients" if IS_SLUICE else "")
           + (f"\napi failures: {api.detail()}" if api.failures() else "")
           + (f"\nholder failures: {holders.detail()}" if holders.failures() else ""))

    expect = Expect()
    expect(api.total >= 10, f"only {api.total} api requests were made: {api.summary()}")
    expect(api.counts["ok"] == api.total,
           f"api requests not served within {API_DEADLINE_S} s: {api.summary()}\n{api.detail()}")
    expect(holders.counts["ok"] == HOLDERS, f"holders: {holders.summary()}\n{holders.detail()}")
    if IS_SLUICE:
        expect(peak["idle_in_tx"] >= POOL_SIZE - API_WORKERS,
               f"SHOW HOLDERS named at most {peak['idle_in_tx']} holders idle in transaction")
        expect(len(warned) == holders.counts["ok"],
               f"the leak warning named {len(warned)} of {holders.counts['ok']} holders")
        expect(api_warned == 0, "the leak warning named a client other than the holders")
    expect.verify()
