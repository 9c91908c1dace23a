"""Fixtures: one PostgreSQL per session, poolers per test. See README.md for how to run."""

from __future__ import annotations

import faulthandler
import itertools
import os
import shutil
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import harness  # noqa: E402
from harness import IS_SLUICE, POOLER, Pooler, Postgres  # noqa: E402

# A test that hangs is a failure, not a stuck CI run.
TEST_TIMEOUT = float(os.environ.get("TEST_TIMEOUT", "120"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sluice_only(reason): behaviour sluice must have and PgBouncer 1.18 lacks; "
        "skipped under POOLER=pgbouncer")
    config.addinivalue_line(
        "markers",
        "concurrency: many clients, threads or loops at once; the set the TSan build runs")
    if POOLER not in ("sluice", "pgbouncer"):
        raise pytest.UsageError(f"POOLER must be sluice or pgbouncer, not {POOLER!r}")
    binary = harness.pooler_binary()
    if not os.access(binary, os.X_OK):
        hint = "build it, set SLUICE_BIN, or run with POOLER=pgbouncer" if IS_SLUICE else ""
        raise pytest.UsageError(f"pooler binary {binary} not found or not executable; {hint}")
    if not (harness.PG_BIN / "postgres").exists():
        raise pytest.UsageError(f"PostgreSQL server binaries not found in {harness.PG_BIN}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"pooler: {POOLER} ({harness.pooler_binary()})"


# Modules whose tests drive many clients across worker loops at once (run under TSan).
CONCURRENCY_MODULES = {"test_limits", "test_cancel", "test_pgbench", "test_reload", "test_tls",
                       "test_server_death", "test_shutdown", "test_params", "test_modes",
                       "test_faults", "test_zero_downtime"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in CONCURRENCY_MODULES:
            item.add_marker(pytest.mark.concurrency)
    if IS_SLUICE or os.environ.get("RUN_SLUICE_ONLY") == "1":
        return
    for item in items:
        marker = item.get_closest_marker("sluice_only")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"sluice only: {why}"))


@pytest.fixture(autouse=True)
def _hang_guard():
    """Fails a test that runs past TEST_TIMEOUT, with every thread's stack on stderr."""
    def on_alarm(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT}s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def workdir():
    path = harness.make_workdir("sluice-it-")
    yield path
    harness.rmtree(path)


@pytest.fixture(scope="session")
def pg(workdir) -> Postgres:
    base = workdir / "pg"
    base.mkdir()
    harness.give(base)
    server = Postgres(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bench_db(pg: Postgres) -> str:
    """A database `benchdb` owned by sluice_md5 with pgbench's tables at scale 1."""
    pg.execute("CREATE DATABASE benchdb OWNER sluice_md5")
    subprocess.run([str(harness.PG_BIN / "pgbench"), "-i", "-s", "1", "-q",
                    "-h", str(pg.sockdir), "-p", str(pg.port), "-U", "sluice_md5", "benchdb"],
                   check=True, capture_output=True, timeout=120)
    return "benchdb"


@pytest.fixture
def poolers(pg: Postgres, workdir, request):
    """Factory: poolers(settings=..., databases=..., users=..., start=True) -> Pooler.

    Every pooler started is stopped after the test; its log is printed if the test failed.
    """
    counter = itertools.count()
    started: list[Pooler] = []
    name = request.node.name.replace("/", "_")[:60]

    def make(settings=None, databases=None, users=None, user_settings=None, start=True):
        d = workdir / "poolers" / f"{name}-{next(counter)}"
        d.mkdir(parents=True)
        harness.give(d.parent)
        harness.give(d)
        p = Pooler(pg, d, settings, databases, users, user_settings)
        started.append(p)
        if start:
            p.start()
        return p

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    crashes = []
    for p in started:
        status = p.stop()
        if failed:
            sys.stderr.write(f"\n--- {POOLER} log ({p.log_path}) ---\n{p.log()[-20000:]}\n")
        report = harness.sanitizer_report(p.log())
        if report or (status is not None and status < 0 and status != -signal.SIGKILL):
            crashes.append(f"{p.log_path}: exit status {status}\n{report}")
    # No test may leave server connections behind for the next one.
    pg.terminate_all()
    if crashes:
        pytest.fail("pooler crashed or a sanitizer reported an error:\n" + "\n".join(crashes))
    if not failed:
        for p in started:
            shutil.rmtree(p.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def is_sluice() -> bool:
    """True when the pooler under test is sluice (for sluice-only assertions)."""
    return IS_SLUICE


@pytest.fixture
def pooler(poolers) -> Pooler:
    """A pooler with the harness defaults (transaction mode, pool size 5, auth md5)."""
    return poolers()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
