"""The benchmark's smoke run (issue 3): `bench/run --smoke` completes with zero errors.

It starts its own PostgreSQL and runs a few seconds of `pgbench -S` against it directly and
through sluice, so a change that breaks the benchmark (or makes pgbench fail through sluice) is
caught by the suite, not by the next person who runs it. It asserts nothing about speed.
"""

import os
import re
import subprocess
import sys

import pytest

from harness import REPO, SLUICE_BIN


@pytest.mark.sluice_only("the benchmark drives sluice's own binary")
def test_bench_smoke_runs_without_errors():
    env = dict(os.environ, SLUICE_BIN=str(SLUICE_BIN))
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--smoke"], env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "smoke: ok" in r.stdout, out[-4000:]
    # The summary table has a sluice figure for the workload, with no failed transactions.
    row = next((ln for ln in r.stdout.splitlines() if ln.startswith("| `-S`, 10 clients")), None)
    assert row is not None, out[-4000:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1].split("/")[-1] == "0", row  # failed+aborted transactions through sluice
    assert any(re.fullmatch(r"[\d,]+", c) and c != "0" for c in cells[1:]), row  # a tps figure
