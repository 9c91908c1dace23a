"""The leak detector (hold_warn_threshold) and idle-in-transaction holding: the log lines,
SHOW HOLDERS and the metrics. sluice only: PgBouncer has no such thing."""

from __future__ import annotations

import re
import threading

import pytest

from harness import free_port, wait_until
from test_http import scrape, value

pytestmark = pytest.mark.sluice_only(reason="hold_warn_threshold is sluice's (issue 5)")


def test_leak_warning_names_a_client_idle_in_transaction(poolers):
    port = free_port()
    p = poolers(settings={"hold_warn_threshold": 0.5, "http_listen": f"127.0.0.1:{port}"})
    p.http_port = port
    db = {"database": "appdb", "user": "sluice_md5"}
    with p.connect(application_name="ai_job") as leaker, p.connect(application_name="quick") as ok:
        leaker.execute("BEGIN")
        leaker.execute("SELECT 'before the AI call'")
        # The "AI call inside a transaction": the client holds its server and sends nothing.
        warn = re.compile(
            r"warn(ing)? \[C(\d+) appdb/sluice_md5@127\.0\.0\.1:\d+\] application_name 'ai_job' "
            r"has held a server \(backend pid \d+\) for [0-9.]+ s, past hold_warn_threshold "
            r"\(0\.5 s\); idle in transaction for [0-9.]+ s: it holds the server while sending "
            r"nothing; last statement: \"SELECT 'before the AI call'\"")
        m = wait_until(lambda: warn.search(p.log()), 5, what="the leak warning")
        client_id = int(m.group(2))
        ok.execute("SELECT 1")  # a short transaction is never reported
        [row] = p.admin("SHOW HOLDERS")
        assert (row["client_id"], row["application_name"], row["state"]) == (
            client_id, "ai_job", "idle in transaction"), row
        assert row["last_statement"] == "SELECT 'before the AI call'", row
        assert row["idle_seconds"] >= 0.5 and row["held_seconds"] >= row["idle_seconds"], row
        metrics = scrape(p)
        assert value(metrics, "sluice_pool_hold_warnings_total", state="idle_in_transaction",
                     **db) == 1
        assert value(metrics, "sluice_pool_servers_idle_in_transaction", **db) == 1
        assert value(metrics, "sluice_pool_longest_hold_seconds", **db) >= 0.5
        assert len(warn.findall(p.log())) == 1  # one warning per hold, not one per scan
        leaker.execute("COMMIT")
        back = re.compile(rf"\[C{client_id} appdb/sluice_md5@[0-9.:]+\] application_name "
                          rf"'ai_job' gave back its server after holding it about [0-9.]+ s")
        wait_until(lambda: back.search(p.log()), 5, what="the line saying it gave it back")
    assert "application_name 'quick'" not in p.log()


def test_leak_warning_for_a_long_query_says_active(poolers):
    p = poolers(settings={"hold_warn_threshold": 0.3})
    with p.connect(application_name="slow_report") as c:
        t = threading.Thread(target=lambda: c.execute("SELECT pg_sleep(1.2)"), daemon=True)
        t.start()
        warn = re.compile(r"application_name 'slow_report' has held a server .* \(0\.3 s\); "
                          r"active; last statement: \"SELECT pg_sleep\(1\.2\)\"")
        wait_until(lambda: warn.search(p.log()), 5, what="the warning for a long query")
        t.join(10)
        wait_until(lambda: "'slow_report' gave back its server" in p.log(), 5,
                   what="the release line")
