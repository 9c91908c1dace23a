"""Scenario 4: duplicate clients (seed 004: a second PrismaClient doubled the connection pools;
seed 000, bug #2: duplicated cron schedules multiplied the jobs).

The incident: one service created two client-side pools instead of one, so it opened twice the
connections and PostgreSQL ran out of slots; nothing showed that one application had doubled.

Replayed: application_name "orchestrator" runs one client pool (8 connections, each a loop of
short progress-update transactions) for a while, then a second, identical pool starts beside it
(8 more connections, same application_name). Pool size 5. Asserted:
- server connections stay capped at the pool size throughout (BackendSampler on
  pg_stat_activity, and SHOW POOLS), and every transaction of both pools succeeds;
- the doubling is visible per application: SHOW CLIENTS counts 8 then 16 clients with
  application_name "orchestrator" (both poolers), and sluice's per-application metric
  sluice_app_client_connections{application_name="orchestrator"} goes from 8 to 16, while
  another application's ("web", 2 connections) stays at 2; sluice_app_server_hold_seconds_total
  keeps counting the time the application held servers.
"""

from __future__ import annotations

import threading
import time

import psycopg

from harness import BackendSampler, IS_SLUICE, free_port
from scenario_lib import Admin, Expect, Outcomes, metric, scrape_metrics, sluice_settings

POOL_SIZE = 5
PER_POOL = 8
APP = "orchestrator"
PHASE_S = 1.5


class ClientPool:
    """A client-side pool: `size` connections, each a thread running short transactions."""

    def __init__(self, pooler, size: int, application_name: str, outcomes: Outcomes):
        self.pooler, self.size, self.app, self.outcomes = pooler, size, application_name, outcomes
        self.connected = threading.Barrier(size + 1)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(size)]

    def _run(self, i: int) -> None:
        try:
            conn = self.pooler.connect(application_name=self.app)
        except psycopg.Error as e:
            self.outcomes.error(e)
            self.connected.abort()
            return
        with conn:
            self.connected.wait(30)
            while not self.stop.is_set():
                try:
                    with conn.transaction():  # updateProgress(): one small write
                        conn.execute("SELECT %s::int, pg_sleep(0.005)", (i,))
                    self.outcomes.ok()
                except psycopg.Error as e:
                    self.outcomes.error(e)
                time.sleep(0.01)

    def start(self) -> "ClientPool":
        for t in self.threads:
            t.start()
        self.connected.wait(30)
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def app_clients(admin: Admin, application_name: str) -> int:
    return sum(1 for r in admin.show("CLIENTS") if r["application_name"] == application_name)


def test_duplicate_clients(poolers, pg, report):
    http_port = free_port()
    p = poolers(settings={"default_pool_size": POOL_SIZE,
                          **sluice_settings(http_listen=f"127.0.0.1:{http_port}")})
    outcomes = Outcomes()
    web = [p.connect(application_name="web") for _ in range(2)]
    phases = []
    pools: list[ClientPool] = []
    try:
        with BackendSampler(pg) as sampler, Admin(p) as admin:
            max_servers = 0
            for n_pools in (1, 2):
                pools.append(ClientPool(p, PER_POOL, APP, outcomes).start())
                deadline = time.monotonic() + PHASE_S
                while time.monotonic() < deadline:
                    pool = admin.pool()
                    max_servers = max(max_servers, sum(int(pool.get(k, 0)) for k in (
                        "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")))
                    time.sleep(0.05)
                for w in web:
                    w.execute("SELECT 1")
                phase = {"pools": n_pools, "show_clients": app_clients(admin, APP),
                         "web_clients": app_clients(admin, "web")}
                if IS_SLUICE:
                    m = scrape_metrics(http_port)
                    phase["metric"] = metric(m, "sluice_app_client_connections", 0,
                                             application_name=APP)
                    phase["web_metric"] = metric(m, "sluice_app_client_connections", 0,
                                                 application_name="web")
                    phase["hold_s"] = metric(m, "sluice_app_server_hold_seconds_total", 0,
                                             application_name=APP)
                phases.append(phase)
    finally:
        for cp in pools:
            cp.close()
        for w in web:
            w.close()

    lines = [f"application_name {APP!r}, {PER_POOL} connections per client pool, pool_size "
             f"{POOL_SIZE}: {outcomes.summary()} transactions; peak {sampler.max} backends, "
             f"peak {max_servers} servers in SHOW POOLS"]
    for ph in phases:
        line = (f"{ph['pools']} client pool(s): SHOW CLIENTS {ph['show_clients']} {APP}, "
                f"{ph['web_clients']} web")
        if IS_SLUICE:
            line += (f"; sluice_app_client_connections {ph['metric']:g} {APP}, "
                     f"{ph['web_metric']:g} web; sluice_app_server_hold_seconds_total "
                     f"{ph['hold_s']:.2f} {APP}")
        lines.append(line)
    report("\n".join(lines) + (f"\nfailures: {outcomes.detail()}" if outcomes.failures() else ""))

    expect = Expect()
    one, two = phases
    expect(outcomes.counts["ok"] == outcomes.total > 0,
           f"transactions failed: {outcomes.summary()}\n{outcomes.detail()}")
    expect(sampler.max <= POOL_SIZE, f"{sampler.max} backends for a pool of {POOL_SIZE}")
    expect(max_servers <= POOL_SIZE, f"{max_servers} servers in SHOW POOLS")
    expect((one["show_clients"], two["show_clients"]) == (PER_POOL, 2 * PER_POOL),
           f"SHOW CLIENTS: {one['show_clients']} then {two['show_clients']} {APP} clients")
    expect(one["web_clients"] == two["web_clients"] == 2,
           f"SHOW CLIENTS: {one['web_clients']} then {two['web_clients']} web clients")
    if IS_SLUICE:
        expect((one["metric"], two["metric"]) == (PER_POOL, 2 * PER_POOL),
               f"sluice_app_client_connections{{{APP}}} {one['metric']:g} then "
               f"{two['metric']:g}: it does not show the doubling")
        expect(one["web_metric"] == two["web_metric"] == 2,
               f"sluice_app_client_connections{{web}} {one['web_metric']:g} then "
               f"{two['web_metric']:g}")
        expect(two["hold_s"] > one["hold_s"] > 0,
               f"sluice_app_server_hold_seconds_total{{{APP}}} {one['hold_s']:g} then "
               f"{two['hold_s']:g}")
    expect.verify()
