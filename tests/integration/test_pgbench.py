"""pgbench through the pooler in transaction mode: every transaction succeeds."""

import re
import subprocess

import pytest
from harness import PG_BIN, BackendSampler


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_pgbench_transaction_mode(poolers, pg, bench_db, protocol):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 4,
                          "query_wait_timeout": 60},
                databases={bench_db: {"host": "127.0.0.1", "port": pg.port,
                                       "dbname": bench_db}})
    clients, per_client = 10, 200
    with BackendSampler(pg, "sluice_md5", bench_db) as sampler:
        run = subprocess.run(
            [str(PG_BIN / "pgbench"), "-n", "-c", str(clients), "-j", "2",
             "-t", str(per_client), "-M", protocol, bench_db],
            env=p.env(), capture_output=True, text=True, timeout=180)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert processed, out
    assert processed.group(1) == processed.group(2) == str(clients * per_client), out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or failed.group(1) == "0", out
    assert sampler.max <= 4, sampler.samples

