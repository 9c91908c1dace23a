"""SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS (PgBouncer 1.18's columns and meaning),
and the pool monitor's log line."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from harness import ADMIN_PASSWORD, ADMIN_USER, IS_SLUICE, wait_until

# PgBouncer 1.18 (admin.c / stats.c); every number is a numeric (oid 1700).
STATS_COLUMNS = ["database", "total_xact_count", "total_query_count", "total_received",
                 "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
                 "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
                 "avg_query_time", "avg_wait_time"]
PERIOD_COLUMNS = ["database", "xact_count", "query_count", "bytes_received", "bytes_sent",
                  "xact_time", "query_time", "wait_time"]
TOTALS_NAMES = ["total_xact_count", "total_query_count", "total_client_bytes",
                "total_server_bytes", "total_xact_time", "total_query_time", "total_wait_time",
                "avg_xact_count", "avg_query_count", "avg_client_bytes", "avg_server_bytes",
                "avg_xact_time", "avg_query_time", "avg_wait_time"]
NUMERIC = 1700


def show(p, what: str) -> tuple[list[str], list[int], list[dict]]:
    """Column names, type oids and rows (as dicts) of SHOW <what>."""
    with psycopg.connect(autocommit=True,
                         **p.conn_kwargs(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer")) as c:
        cur = c.execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        return names, [d.type_code for d in cur.description], [
            dict(zip(names, r)) for r in cur.fetchall()]


def appdb_row(rows: list[dict]) -> dict:
    return next(r for r in rows if r["database"] == "appdb")


def run_transactions(p, n: int) -> None:
    with p.connect() as c:
        for i in range(n):
            with c.transaction():
                c.execute("SELECT %s", (i,))


def test_show_stats_columns_and_counts(poolers):
    p = poolers()
    run_transactions(p, 1)  # the pool exists from here on
    names, types, rows = show(p, "STATS")
    # sluice sends one more column after PgBouncer's: total_requests, the pre-1.8 name of
    # total_query_count, for Debian's prometheus-pgbouncer-exporter 1.7.
    expected = STATS_COLUMNS + (["total_requests"] if IS_SLUICE else [])
    assert names == expected
    assert set(types[1:]) == {NUMERIC} and types[0] == 25
    assert "pgbouncer" in [r["database"] for r in rows]
    before = appdb_row(rows)

    n = 6
    run_transactions(p, n)

    def counted():
        row = appdb_row(show(p, "STATS")[2])
        return row if row["total_xact_count"] - before["total_xact_count"] == n else None
    after = wait_until(counted, 10, what="SHOW STATS to count the transactions")
    # BEGIN, SELECT, COMMIT per transaction.
    assert after["total_query_count"] - before["total_query_count"] == 3 * n
    assert after["total_received"] > before["total_received"]
    assert after["total_sent"] > before["total_sent"]
    assert after["total_xact_time"] > before["total_xact_time"]
    assert after["total_query_time"] > before["total_query_time"]
    assert after["total_wait_time"] >= before["total_wait_time"]
    if IS_SLUICE:
        assert after["total_requests"] == after["total_query_count"]


def test_stats_totals_averages_and_totals(poolers):
    p = poolers(settings={"stats_period": 1})
    run_transactions(p, 4)
    names, types, totals = show(p, "STATS_TOTALS")
    assert names == PERIOD_COLUMNS and set(types[1:]) == {NUMERIC}
    t = appdb_row(totals)
    assert t["xact_count"] >= 4 and t["query_count"] >= 12

    names, types, _ = show(p, "STATS_AVERAGES")
    assert names == PERIOD_COLUMNS and set(types[1:]) == {NUMERIC}

    names, types, rows = show(p, "TOTALS")
    assert names == ["name", "value"]
    assert [r["name"] for r in rows] == TOTALS_NAMES
    by_name = {r["name"]: r["value"] for r in rows}
    assert by_name["total_xact_count"] >= 4

    # Averages are rates over the last one to two stats periods (PgBouncer's window): keep
    # transactions flowing and they show up as per-second rates and mean durations.
    def averaged():
        run_transactions(p, 5)
        row = appdb_row(show(p, "STATS_AVERAGES")[2])
        return row if row["xact_count"] > 0 else None
    avg = wait_until(averaged, 10, interval=0.2, what="a non-zero avg xact_count")
    assert avg["query_count"] >= avg["xact_count"]
    assert avg["xact_time"] > 0 and avg["query_time"] > 0
    assert avg["bytes_received"] > 0 and avg["bytes_sent"] > 0
    # With no traffic for two periods the averages fall back to zero.
    time.sleep(2.5)
    assert appdb_row(show(p, "STATS_AVERAGES")[2])["xact_count"] == 0


@pytest.mark.sluice_only(reason="the pool monitor is sluice's (issue 5)")
def test_monitor_logs_each_pool_and_escalates(poolers):
    p = poolers(settings={"monitor_interval": 1, "default_pool_size": 1,
                          "monitor_warn_utilization": 80})
    run_transactions(p, 1)
    line = re.compile(r"info monitor: pool appdb/sluice_md5: total 1, idle 1, active 0, "
                      r"waiting 0, utilization 0%")
    wait_until(lambda: line.search(p.log()), 5, what="the monitor's info line")

    # The only server held (utilization 100% > 80%): the line turns to a warning.
    with p.connect() as c:
        c.execute("BEGIN")
        c.execute("SELECT 1")
        warn = re.compile(r"warn(ing)? monitor: pool appdb/sluice_md5: total 1, idle 0, "
                          r"active 1, waiting 0, utilization 100%")
        wait_until(lambda: warn.search(p.log()), 5, what="the monitor's warning")
        c.execute("COMMIT")


@pytest.mark.sluice_only(reason="the pool monitor is sluice's (issue 5)")
def test_monitor_warns_when_a_client_waits(poolers):
    # utilization 100% is not above 100: only the waiting client can make the line a warning.
    p = poolers(settings={"monitor_interval": 0.5, "default_pool_size": 1,
                          "monitor_warn_utilization": 100})
    with p.connect() as holder, p.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        t = threading.Thread(target=lambda: waiter.execute("SELECT 2"), daemon=True)
        t.start()
        warn = re.compile(r"warn(ing)? monitor: pool appdb/sluice_md5: total 1, idle 0, "
                          r"active 1, waiting 1, utilization 100%")
        wait_until(lambda: warn.search(p.log()), 5, what="the monitor's warning for a waiter")
        holder.execute("COMMIT")
        t.join(10)
    assert not re.search(r"warn(ing)? monitor: .*waiting 0, utilization 100%", p.log()), p.log()
