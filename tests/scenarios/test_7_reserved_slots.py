"""Scenario 7: reserved slots (seed 004: "FATAL: remaining connection slots are reserved for
azure replication users"; seed 003's max_connections advice).

The incident: other connections (a duplicate pool, other services) had taken PostgreSQL's
ordinary slots; new logins were refused with 53300 and the application handed that error
straight to its requests.

Replayed against a PostgreSQL of its own with max_connections 12 and
superuser_reserved_connections 3. Direct connections of another role ("hogs") take every
ordinary slot (they connect until PostgreSQL refuses one with 53300). A cold pooler (pool_size
4, query_wait_timeout WAIT_DEADLINE_S = 10 s) then gets CLIENTS clients, each sending SELECT 1;
the hogs disconnect after HOG_S = 4 s, well inside the clients' wait deadline; then a second
wave of CLIENTS clients comes. Run twice: with server_login_retry 1 s (the harness's setting)
and with it unset (PgBouncer's default, 15 s: what a copied pgbouncer.ini has). Asserted:
- no client ever receives 53300 ("too many clients" / "remaining connection slots are
  reserved", under any SQLSTATE), nor any other error: while the slots are taken the pooler
  keeps the clients queued and backs off, and once the hogs are gone every client of both waves
  is served within its deadline (a 57014 query_wait_timeout fails this too: the slots were free
  for the last 6 s of it);
- it backs off: PostgreSQL refused at most server_connect_parallelism (4) x
  (ceil(log2(HOG_S / 100 ms)) + 1) = 28 of its logins while the hogs held the slots, i.e. no
  more than one round of parallel logins per doubling of an exponential backoff from 100 ms
  (a pooler that retries at once makes hundreds).
"""

from __future__ import annotations

import math
import threading
import time

import psycopg
import pytest

import pgwire
from harness import IS_SLUICE, free_port, run_threads
from scenario_lib import Expect, Outcomes, dedicated_pg, metric, scrape_metrics

pg = dedicated_pg({"max_connections": 12, "superuser_reserved_connections": 3})

POOL_SIZE = 4
CLIENTS = 8
WAIT_DEADLINE_S = 10
HOG_S = 4.0
PARALLELISM = 4


def take_ordinary_slots(pg) -> list[psycopg.Connection]:
    """Direct connections as sluice_trust (not a superuser) until PostgreSQL refuses one."""
    hogs = []
    for _ in range(50):
        try:
            hogs.append(psycopg.connect(host=str(pg.sockdir), port=pg.port, user="sluice_trust",
                                        dbname="appdb", autocommit=True, connect_timeout=5))
        except psycopg.OperationalError as e:
            assert "remaining connection slots are reserved" in str(e) or \
                "too many clients" in str(e), e
            return hogs
    raise AssertionError("PostgreSQL never ran out of slots")


def refused_logins(pg, offset: int) -> int:
    with open(pg.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return sum(1 for line in text.splitlines()
               if "sluice_md5@appdb" in line and ("remaining connection slots are reserved" in line
                                                  or "too many clients" in line))


RESERVED_TEXTS = ("remaining connection slots are reserved", "too many clients")


@pytest.mark.parametrize("login_retry", [1, None],
                         ids=["server_login_retry_1s", "server_login_retry_default"])
def test_reserved_slots(poolers, pg, report, login_retry):
    http_port = free_port()
    settings = {"default_pool_size": POOL_SIZE, "query_wait_timeout": WAIT_DEADLINE_S,
                "server_login_retry": login_retry}
    if IS_SLUICE:
        settings["http_listen"] = f"127.0.0.1:{http_port}"
    hogs = take_ordinary_slots(pg)
    offset = pg.log_path.stat().st_size
    p = poolers(settings=settings)
    first, second = Outcomes(), Outcomes()

    def client(outcomes: Outcomes):
        def run(i: int) -> None:
            try:
                with p.wire(application_name="app", timeout=WAIT_DEADLINE_S + 10) as w:
                    w.query("SELECT 1")
                outcomes.ok()
            except (pgwire.ServerError, pgwire.ConnectionClosed, OSError) as e:
                outcomes.error(e)
        return run

    wave = threading.Thread(target=lambda: run_threads(client(first), CLIENTS,
                                                       timeout=WAIT_DEADLINE_S + 30), daemon=True)
    started = time.monotonic()
    wave.start()
    try:
        time.sleep(HOG_S)
        refused_while_taken = refused_logins(pg, offset)
        first_before = dict(first.counts)
    finally:
        for h in hogs:
            h.close()
    wave.join(WAIT_DEADLINE_S + 30)
    first_s = time.monotonic() - started
    run_threads(client(second), CLIENTS, timeout=WAIT_DEADLINE_S + 30)
    failures = None
    if IS_SLUICE:
        failures = metric(scrape_metrics(http_port), "sluice_pool_server_login_failures_total",
                          database="appdb", user="sluice_md5")
    bound = PARALLELISM * (math.ceil(math.log2(HOG_S / 0.1)) + 1)

    report(f"max_connections 12 (3 reserved), {len(hogs)} direct connections took every "
           f"ordinary slot for {HOG_S:g} s; pool_size {POOL_SIZE}, query_wait_timeout "
           f"{WAIT_DEADLINE_S} s, server_login_retry "
           f"{'default' if login_retry is None else f'{login_retry} s'}\n"
           f"first wave ({CLIENTS} clients, arrived while the slots were taken): "
           f"{first.summary()} ({first_before or 'nothing'} answered before the hogs left; "
           f"all answered {first_s:.1f} s after they came)\n"
           f"second wave: {second.summary()}\n"
           f"PostgreSQL refused {refused_while_taken} of the pooler's logins while the slots "
           f"were taken (bound {bound})"
           + (f"; sluice_pool_server_login_failures_total {failures:g}"
              if failures is not None else "")
           + (f"\nfirst wave errors: {first.detail()}" if first.failures() else "")
           + (f"\nsecond wave errors: {second.detail()}" if second.failures() else ""))

    raw = sum(n for wave in (first, second) for kind, n in wave.failures().items()
              if kind == "53300" or any(t in wave.messages[kind] for t in RESERVED_TEXTS))
    expect = Expect()
    expect(raw == 0, f"{raw} clients got PostgreSQL's 53300 (under its SQLSTATE or another): "
                     f"{first.detail()}\n{second.detail()}".rstrip())
    expect(first.counts["ok"] == CLIENTS,
           f"first wave not served after the hogs left: {first.summary()}\n{first.detail()}")
    expect(second.counts["ok"] == CLIENTS, f"second wave: {second.summary()}\n{second.detail()}")
    expect(refused_while_taken <= bound,
           f"{refused_while_taken} logins refused in {HOG_S:g} s (bound {bound}): no backoff")
    expect.verify()
