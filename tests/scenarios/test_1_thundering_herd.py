"""Scenario 1: thundering herd at start-up (seed 000, bug #1).

The incident: 15+ workers asked an empty pool for connections at once with a 2 s deadline;
logins piled up, timed out, and the pool kept "phantom" connections the database never had.

Replayed: 200 clients connect at once to a cold pooler (pool_size 20, query_wait_timeout 2 s)
in front of a PostgreSQL whose logins are slowed by 300 ms (a TCP proxy in the test delays every
new server connection); each runs SELECT 1 and a 20 ms transaction. Asserted:
- every client is served (no 57014, no error of any kind);
- server logins in flight never exceed server_connect_parallelism (4, sluice's default, not set
  here so the default is what is tested), measured exactly at the proxy and sampled from
  SHOW POOLS sv_login; and the pooler opens no more than pool_size server connections;
- no phantom connections: at every sample each server SHOW SERVERS lists is a backend in
  pg_stat_activity, and every backend pg_stat_activity has is listed by SHOW SERVERS or is
  one of the logins SHOW POOLS counts (sv_login) just after.
"""

from __future__ import annotations

import threading
import time

import psycopg

from harness import run_threads, wait_until
from scenario_lib import Admin, Expect, Outcomes, SlowLoginProxy

CLIENTS = 200
POOL_SIZE = 20
WAIT_DEADLINE_S = 2  # query_wait_timeout
LOGIN_DELAY_S = 0.3
PARALLELISM = 4  # sluice's default server_connect_parallelism


class ServerAccounting:
    """Samples, in a thread, the pooler's view and PostgreSQL's view of the server connections
    and checks that they agree. One sample: SHOW SERVERS and SHOW POOLS (a), the backends of
    appdb in pg_stat_activity (b), SHOW SERVERS and SHOW POOLS again (c). Servers do not close
    in this scenario, so:
      phantom    = servers listed in (a) that are not backends in (b)
      unaccounted = backends in (b) listed in neither (a) nor (c), beyond the logins of (c)
    """

    def __init__(self, pooler, pg):
        self.pooler, self.pg = pooler, pg
        self.samples = 0
        self.max_login = 0
        self.max_servers = 0
        self.max_backends = 0
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pooler_view(self, admin: Admin) -> tuple[set[int], int]:
        pids = {int(r["remote_pid"]) for r in admin.show("SERVERS")
                if r["database"] == "appdb" and r["remote_pid"]}
        login = int(admin.pool().get("sv_login", 0))
        return pids, login

    def _run(self) -> None:
        with Admin(self.pooler) as admin, self.pg.connect() as conn:
            while not self._stop.is_set():
                servers_a, login_a = self._pooler_view(admin)
                backends = {r[0] for r in conn.execute(
                    """SELECT pid FROM pg_stat_activity
                        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                          AND coalesce(datname, 'appdb') = 'appdb'
                          AND coalesce(usename, 'sluice_md5') = 'sluice_md5'""")}
                servers_c, login_c = self._pooler_view(admin)
                self.samples += 1
                self.max_login = max(self.max_login, login_a, login_c)
                self.max_servers = max(self.max_servers, len(servers_a), len(servers_c))
                self.max_backends = max(self.max_backends, len(backends))
                phantom = servers_a - backends
                unaccounted = backends - servers_a - servers_c
                if phantom or len(unaccounted) > login_c:
                    self.bad.append(
                        f"sample {self.samples}: pooler lists {len(servers_a)} then "
                        f"{len(servers_c)} servers ({login_a} then {login_c} logging in), "
                        f"PostgreSQL has {len(backends)} backends; phantom (listed, no backend): "
                        f"{sorted(phantom)}; backends not listed: {sorted(unaccounted)}")
                self._stop.wait(0.02)

    def __enter__(self) -> "ServerAccounting":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


def test_thundering_herd(poolers, pg, report):
    with SlowLoginProxy(pg.port, LOGIN_DELAY_S) as proxy:
        p = poolers(settings={"default_pool_size": POOL_SIZE,
                              "query_wait_timeout": WAIT_DEADLINE_S,
                              "max_client_conn": 500},
                    databases={"appdb": {"host": "127.0.0.1", "port": proxy.port,
                                         "dbname": "appdb"}})
        outcomes = Outcomes()
        barrier = threading.Barrier(CLIENTS)

        def worker(i: int) -> None:
            barrier.wait(60)
            try:
                with p.connect(application_name=f"worker-{i % 15}") as c:
                    c.execute("SELECT 1")
                    with c.transaction():  # a little work, so that the pool has to grow
                        c.execute("SELECT pg_sleep(0.02)")
                outcomes.ok()
            except psycopg.Error as e:
                outcomes.error(e)

        started = time.monotonic()
        with ServerAccounting(p, pg) as acct:
            run_threads(worker, CLIENTS, timeout=90)
            took = time.monotonic() - started
            with Admin(p) as admin:  # the logins still in flight finish (and are sampled)
                pool = wait_until(lambda: (lambda r: r if int(r.get("sv_login", 1)) == 0
                                           else None)(admin.pool()), 15,
                                  what="the pool's logins to finish")
        server_count = int(pool.get("sv_active", 0)) + int(pool.get("sv_idle", 0)) + \
            int(pool.get("sv_used", 0))
        backends = pg.backend_count("sluice_md5")

        report(f"{CLIENTS} clients at once, pool_size {POOL_SIZE}, query_wait_timeout "
               f"{WAIT_DEADLINE_S} s, logins slowed {LOGIN_DELAY_S * 1000:.0f} ms: "
               f"{outcomes.summary()} in {took:.1f} s\n"
               f"server logins: {proxy.connections} opened ({proxy.completed_logins} completed), "
               f"peak {proxy.peak_logins} at once at the proxy, peak sv_login {acct.max_login} "
               f"in SHOW POOLS (limit {PARALLELISM})\n"
               f"{acct.samples} samples: peak {acct.max_servers} servers in SHOW SERVERS, peak "
               f"{acct.max_backends} backends in pg_stat_activity, {len(acct.bad)} disagreeing; "
               f"after: {server_count} servers, {backends} backends"
               + (f"\nfailures: {outcomes.detail()}" if outcomes.failures() else "")
               + (f"\nfirst disagreement: {acct.bad[0]}" if acct.bad else ""))

        p.stop()  # before the proxy goes: its servers must not die under it

    expect = Expect()
    expect(outcomes.counts["ok"] == CLIENTS,
           f"not every client was served: {outcomes.summary()}\n{outcomes.detail()}")
    expect(proxy.peak_logins <= PARALLELISM,
           f"{proxy.peak_logins} server logins in flight at once (limit {PARALLELISM}): "
           f"{proxy.peak_overlap()}")
    expect(acct.max_login <= PARALLELISM, f"SHOW POOLS sv_login reached {acct.max_login}")
    expect(proxy.connections <= POOL_SIZE,
           f"{proxy.connections} server connections opened for a pool of {POOL_SIZE}")
    expect(not acct.bad, "SHOW SERVERS and pg_stat_activity disagree:\n" + "\n".join(acct.bad[:5]))
    expect(acct.samples >= 5, f"only {acct.samples} samples taken")
    expect(server_count == backends <= POOL_SIZE,
           f"after the herd: {server_count} servers in SHOW POOLS, {backends} backends")
    expect.verify()
