"""Scenario 3: serverless multiplication (seed 002; seed 004's "remaining connection slots are
reserved").

The incident: every serverless instance opened its own pool, so a burst of requests became a
burst of new PostgreSQL connections; PostgreSQL ran out of slots and requests failed with
"too many clients" / "remaining connection slots are reserved".

Replayed against a PostgreSQL of its own with max_connections 20 (superuser_reserved_connections
3, the default; the harness's and the sampler's superuser connections take 2 more, leaving 15
for applications). STORM_THREADS threads each loop over connect, a 10 ms query
(SELECT pg_sleep(0.01)), close, for STORM_S seconds: the issue's 2,000 connections per second
is more than Python clients on this 2-core machine can open (several hundred per second through
the pooler), so the rate is what the machine sustains and is printed; STORM_THREADS connections
at once is already more than the 15 slots. Control: the same storm straight at PostgreSQL gets
53300 errors (it runs until the first one, CONTROL_S seconds at most).
Through the pooler (pool_size = max_db_connections = 10), asserted:
- PostgreSQL's backends for the database never exceed 10 (BackendSampler, every 10 ms);
- no client sees an error at all (in particular no 53300 "too many clients" or "remaining
  connection slots are reserved"); every connection is served.
"""

from __future__ import annotations

import threading
import time

import psycopg

from harness import BackendSampler, run_threads
from scenario_lib import Expect, Outcomes, dedicated_pg

pg = dedicated_pg({"max_connections": 20})

POOL_SIZE = 10
STORM_THREADS = 32
STORM_S = 6.0
CONTROL_S = 5.0


def storm(connect, seconds: float, threads: int,
          until_53300: bool = False) -> tuple[Outcomes, float]:
    """threads loops of connect + a 10 ms query + close for `seconds` (or, with until_53300,
    until the first 53300); returns outcomes and the time it took."""
    outcomes = Outcomes()
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        barrier.wait(30)
        while not stop.is_set():
            try:
                with connect() as c:
                    c.execute("SELECT pg_sleep(0.01)").fetchone()
                outcomes.ok()
            except psycopg.Error as e:
                if outcomes.error(e) == "53300" and until_53300:
                    stop.set()

    runner = threading.Thread(target=lambda: run_threads(loop, threads, timeout=seconds + 60),
                              daemon=True)
    runner.start()
    barrier.wait(30)
    started = time.monotonic()
    stop.wait(seconds)
    stop.set()
    runner.join(seconds + 60)
    return outcomes, time.monotonic() - started


def test_serverless_multiplication(poolers, pg, report):
    # Control: the storm straight at PostgreSQL runs it out of slots.
    def direct():
        return psycopg.connect(host="127.0.0.1", port=pg.port, user="sluice_md5",
                               password="md5pass", dbname="appdb", connect_timeout=10,
                               sslmode="disable", autocommit=True)
    control, control_s = storm(direct, CONTROL_S, STORM_THREADS, until_53300=True)
    pg.wait_backends(lambda n: n == 0)

    p = poolers(settings={"default_pool_size": POOL_SIZE, "max_db_connections": POOL_SIZE,
                          "max_client_conn": 500})
    with BackendSampler(pg) as sampler:
        through, took = storm(lambda: p.connect(application_name="lambda"), STORM_S,
                              STORM_THREADS)
    too_many = {k: v for k, v in through.counts.items() if k == "53300"}

    report(f"max_connections 20, {STORM_THREADS} threads of connect + 10 ms query + close\n"
           f"direct to PostgreSQL ({control_s:.1f} s): {control.summary()} "
           f"({control.total / control_s:.0f} connections/s)"
           + (f"; 53300: {control.messages['53300']}" if "53300" in control.messages else "")
           + f"\nthrough the pooler, pool_size {POOL_SIZE} ({took:.1f} s): {through.summary()} "
           f"({through.total / took:.0f} connections/s); peak {sampler.max} backends in "
           f"{len(sampler.samples)} samples"
           + (f"\nfailures: {through.detail()}" if through.failures() else ""))

    expect = Expect()
    expect(control.counts.get("53300", 0) > 0,
           f"the control storm did not exhaust PostgreSQL: {control.summary()}")
    expect(sampler.max <= POOL_SIZE, f"{sampler.max} backends for a budget of {POOL_SIZE}")
    expect(not too_many, f"clients saw 53300: {through.detail()}")
    expect(through.counts["ok"] == through.total > 0,
           f"not every connection was served: {through.summary()}\n{through.detail()}")
    expect.verify()
