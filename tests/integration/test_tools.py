"""`sluice stress` and `sluice check` against a real PostgreSQL and sluice.

stress: waves of real connections through sluice (pool smaller than the wave), a saturated pool
whose waiters fail by SQLSTATE, client-side deadlines, /readyz per wave, and each login method.
check: a config that fits, one that exceeds max_connections (alone and with --instances), and
contradictory timeouts.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

import harness
from harness import PASSWORDS, BackendSampler, free_port

pytestmark = pytest.mark.sluice_only(reason="sluice's own subcommands")


def sluice(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.SLUICE_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def url(port: int, user: str = "sluice_md5", db: str = "appdb", host: str = "127.0.0.1") -> str:
    return f"postgres://{user}:{PASSWORDS[user]}@{host}:{port}/{db}"


WAVE_LINE = re.compile(r"^wave (\d+)/(\d+): (\d+) ok, (\d+) failed in [\d.]+ ms; "
                       r"latency ms p50 [\d.]+ p95 [\d.]+ p99 [\d.]+ max [\d.]+$", re.M)


# ---- stress ---------------------------------------------------------------------------------

def test_stress_through_a_pool_smaller_than_the_wave(poolers, pg, tmp_path):
    p = poolers(settings={"default_pool_size": 3})
    out = tmp_path / "stress.json"
    with BackendSampler(pg, user="sluice_md5") as sampler:
        r = sluice("stress", "--url", url(p.port), "--requests", "20", "--waves", "3",
                   "--delay", "100", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    waves = WAVE_LINE.findall(r.stdout)
    assert [(int(w[0]), int(w[2]), int(w[3])) for w in waves] == [(1, 20, 0), (2, 20, 0),
                                                                  (3, 20, 0)], r.stdout
    assert "summary: 3 waves, 60 requests, 60 ok, 0 failed (0.0%)" in r.stdout, r.stdout
    assert r.stderr == "", "no progress line when stderr is not a terminal"
    doc = json.loads(out.read_text())
    assert [w["ok"] for w in doc["waves"]] == [20, 20, 20]
    assert doc["summary"]["requests"] == 60 and doc["summary"]["ok"] == 60
    assert doc["summary"]["latency_ms"]["count"] == 60
    lat = doc["summary"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert ":***@" in doc["url"] and PASSWORDS["sluice_md5"] not in out.read_text()
    assert sampler.max <= 3, f"sluice kept PostgreSQL at the pool size, saw {sampler.max}"


def test_stress_saturated_pool_groups_failures_by_sqlstate(poolers, tmp_path):
    # 2 servers held 1.5 s inside transactions; the 8 others wait past query_wait_timeout (1 s).
    p = poolers(settings={"default_pool_size": 2, "query_wait_timeout": 1})
    out = tmp_path / "stress.json"
    r = sluice("stress", "--url", url(p.port), "--requests", "10", "--waves", "1",
               "--hold-ms", "1500", "--in-transaction", "--json", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    wave = doc["waves"][0]
    assert wave["ok"] >= 1 and wave["failed"] >= 1, wave
    assert wave["ok"] + wave["failed"] == 10
    assert sum(g["count"] for g in wave["failures"]) == wave["failed"]
    states = {g["sqlstate"] for g in wave["failures"]}
    assert states == {"57014"}, wave["failures"]
    assert re.search(r"^\s+\d+ x 57014  .*query_wait_timeout", r.stdout, re.M), r.stdout
    assert f"summary: 1 wave, 10 requests, {wave['ok']} ok, {wave['failed']} failed" in r.stdout


def test_stress_client_deadline_is_a_failure_named_by_its_step(poolers):
    # One server, held 1 s in a transaction; the others' BEGIN waits and hits --timeout 500.
    p = poolers(settings={"default_pool_size": 1, "query_wait_timeout": 30})
    r = sluice("stress", "--url", url(p.port), "--requests", "3", "--waves", "1",
               "--hold-ms", "1000", "--in-transaction", "--timeout", "500")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "wave 1/1: 1 ok, 2 failed" in r.stdout, r.stdout
    assert "2 x -----  timeout: no answer within 500 ms (--timeout) while running BEGIN" \
        in r.stdout, r.stdout


def test_stress_reads_readyz_after_each_wave(poolers, tmp_path):
    port = free_port()
    p = poolers(settings={"http_listen": f"127.0.0.1:{port}"})
    out = tmp_path / "stress.json"
    r = sluice("stress", "--url", url(p.port), "--requests", "8", "--waves", "2", "--delay", "0",
               "--ops", f"http://127.0.0.1:{port}", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("  ops: /readyz 200 ok") == 2, r.stdout
    m = re.search(r"pool (\S+): total (\d+) idle (\d+) active (\d+) waiting (\d+) utilization",
                  r.stdout)
    assert m and "appdb" in m.group(1), r.stdout
    assert 1 <= int(m.group(2)) <= 5 and int(m.group(5)) == 0, m.group(0)
    doc = json.loads(out.read_text())
    ops = doc["waves"][1]["ops"]
    assert ops["http_status"] == 200 and ops["status"] == "ok"
    assert any("appdb" in pool["pool"] and pool["total"] >= 1 for pool in ops["pools"]), ops
    # An ops address nobody listens on is reported in the wave, not a crash.
    bad = sluice("stress", "--url", url(p.port), "--requests", "1", "--waves", "1",
                 "--ops", f"http://127.0.0.1:{free_port()}")
    assert bad.returncode == 0, bad.stdout + bad.stderr
    assert "ops: cannot read http://127.0.0.1:" in bad.stdout, bad.stdout


@pytest.mark.parametrize("user,target", [("sluice_scram", "postgres"),  # SCRAM-SHA-256
                                         ("sluice_md5", "postgres"),    # md5
                                         ("sluice_trust", "postgres"),  # trust
                                         ("sluice_md5", "plain")])      # cleartext (sluice)
def test_stress_logs_in_with_each_method(poolers, pg, user, target):
    if target == "postgres":
        port = pg.port
    else:
        port = poolers(settings={"auth_type": "plain"}).port
    r = sluice("stress", "--url", url(port, user), "--requests", "3", "--waves", "1",
               "--query", "SELECT current_user")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wave 1/1: 3 ok, 0 failed" in r.stdout


def test_stress_wrong_password_and_bad_url(poolers):
    p = poolers()
    r = sluice("stress", "--url", f"postgres://sluice_md5:nope@127.0.0.1:{p.port}/appdb",
               "--requests", "2", "--waves", "1")
    assert r.returncode == 1
    assert re.search(r"2 x 28P01  .*password", r.stdout), r.stdout
    bad = sluice("stress", "--url", "mysql://x@y/z")
    assert bad.returncode == 2 and "postgres://" in bad.stderr


# ---- check ----------------------------------------------------------------------------------

def test_check_config_that_fits(poolers, pg):
    p = poolers(start=False)  # the harness's config: 3 login roles in auth_file, pool size 5
    r = sluice("check", str(p.ini_path))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "database appdb: connected to 127.0.0.1:" in out, out
    assert "max_connections 300, superuser_reserved_connections 3" in out, out
    assert "usable 297" in out
    for user in ("sluice_md5", "sluice_scram", "sluice_trust"):
        assert f"appdb/{user}: pool_size 5 + reserve_pool_size 0 = 5" in out, out
    assert "not counted, no login role on the server: pgb_admin" in out
    assert "worst case 15 server connections of 297 usable slots" in out, out
    assert "fits (282 to spare)" in out
    assert "Little's law" in out
    assert out.rstrip().endswith("result: ok")


def test_check_config_that_exceeds_max_connections(poolers):
    p = poolers(settings={"default_pool_size": 100, "reserve_pool_size": 10}, start=False)
    r = sluice("check", str(p.ini_path))
    assert r.returncode == 1, r.stdout + r.stderr
    err = [line for line in r.stdout.splitlines() if line.startswith("    error: ")]
    assert len(err) == 1, r.stdout
    assert "server 127.0.0.1:" in err[0] and "worst case 330 server connections > " in err[0]
    assert "297 usable slots (max_connections 300 - superuser_reserved_connections 3)" in err[0]
    assert "appdb/sluice_md5 110 (pool_size 100 + reserve_pool_size 10)" in err[0], err[0]
    assert "max_db_connections = 297" in err[0], err[0]
    assert "result: this configuration can exhaust the database" in r.stdout


def test_check_instances_multiply_the_worst_case(poolers):
    p = poolers(settings={"default_pool_size": 40}, start=False)
    assert sluice("check", str(p.ini_path)).returncode == 0
    r = sluice("check", str(p.ini_path), "--instances", "3")
    assert r.returncode == 1, r.stdout
    assert "worst case 360 server connections (120 per instance x 3 instances) > 297 usable" \
        in r.stdout, r.stdout
    assert "max_db_connections = 99" in r.stdout


def test_check_contradictory_timeouts_name_both_settings(poolers):
    p = poolers(settings={"query_wait_timeout": 5, "server_connect_timeout": 15,
                          "server_login_retry": 15, "server_lifetime": 60,
                          "server_idle_timeout": 600}, start=False)
    r = sluice("check", str(p.ini_path), "--no-connect")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("warning: query_wait_timeout (5 s) is shorter than server_connect_timeout (15 s) + "
            "server_login_retry (15 s) = 30 s") in r.stdout, r.stdout
    assert "server_lifetime (60 s) is shorter than server_idle_timeout (600 s)" in r.stdout
    assert "advice: idle_transaction_timeout is 0" in r.stdout
    assert "limits not read (--no-connect)" in r.stdout


def test_check_config_error_exits_2_and_check_config_still_works(poolers, tmp_path):
    p = poolers(start=False)
    ok = sluice("check-config", str(p.ini_path))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
    bad = tmp_path / "bad.ini"
    bad.write_text("[databases]\napp = host=127.0.0.1\n[pgbouncer]\npool_mode = sesion\n")
    r = sluice("check", str(bad))
    assert r.returncode == 2
    assert "pool_mode" in r.stderr and "sesion" in r.stderr


def test_check_reports_a_database_it_cannot_log_in_to(poolers):
    p = poolers(users={"sluice_md5": "wrong", "sluice_scram": None, "sluice_trust": None,
                       harness.ADMIN_USER: None}, start=False)
    r = sluice("check", str(p.ini_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning: database appdb: cannot connect to 127.0.0.1:" in r.stdout, r.stdout
    assert "sluice_md5: 28P01" in r.stdout
    assert "limits not read (could not connect)" in r.stdout
