"""Fixtures for the scenario tests: the integration suite's own (one PostgreSQL per session,
`poolers`, the hang guard, the `sluice_only` marker), plus `report` for what each scenario
measured. A module that needs its own PostgreSQL (a small max_connections, a cluster it may
SIGSTOP) overrides `pg` with `scenario_lib.dedicated_pg(...)`; `poolers` then points at that
cluster. See README.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(INTEGRATION))

# The integration conftest, loaded under its own name so that both directories can be collected
# in one run; its fixtures and hooks are re-exported here rather than copied.
_spec = importlib.util.spec_from_file_location("integration_conftest", INTEGRATION / "conftest.py")
_it = importlib.util.module_from_spec(_spec)
sys.modules["integration_conftest"] = _it
_spec.loader.exec_module(_it)

pytest_configure = _it.pytest_configure
pytest_report_header = _it.pytest_report_header
pytest_collection_modifyitems = _it.pytest_collection_modifyitems
pytest_runtest_makereport = _it.pytest_runtest_makereport
_hang_guard = _it._hang_guard
workdir = _it.workdir
pg = _it.pg
poolers = _it.poolers
is_sluice = _it.is_sluice


# ---- what the scenarios measured -----------------------------------------------------------------

_MEASURED: list[tuple[str, str]] = []


@pytest.fixture
def report(request):
    """report(text): prints a scenario's measurements (seen with -s, and with the output of a
    failed test) and keeps them for the "scenario measurements" section at the end of the run."""
    name = request.node.name

    def emit(text: str) -> None:
        print(f"\n[{name}] {text}", flush=True)
        _MEASURED.append((name, text))
    return emit


def pytest_terminal_summary(terminalreporter) -> None:
    if not _MEASURED:
        return
    terminalreporter.section("scenario measurements")
    for name, text in _MEASURED:
        lines = text.splitlines() or [""]
        terminalreporter.write_line(f"{name}: {lines[0]}")
        for line in lines[1:]:
            terminalreporter.write_line(f"    {line}")
