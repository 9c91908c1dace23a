"""The admin console (virtual database `pgbouncer`), as operators' scripts read it."""

import pytest
from harness import wait_until


def test_show_pools_and_databases(poolers, pg):
    p = poolers(settings={"default_pool_size": 3})
    with p.connect() as c:
        c.execute("BEGIN")
        c.execute("SELECT 1")
        pools = {(r["database"], r["user"]): r for r in p.admin("SHOW POOLS")}
        row = pools[("appdb", "sluice_md5")]
        for col in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait",
                    "pool_mode"):
            assert col in row, row
        assert int(row["cl_active"]) == 1 and int(row["sv_active"]) == 1, row
        assert row["pool_mode"] == "transaction"
        c.execute("COMMIT")
    dbs = {r["name"]: r for r in p.admin("SHOW DATABASES")}
    assert dbs["appdb"]["host"] == "127.0.0.1"
    assert int(dbs["appdb"]["port"]) == pg.port
    assert dbs["appdb"]["database"] == "appdb"
    assert "pgbouncer" in dbs


def test_show_clients_lists_connected_clients(poolers):
    p = poolers()
    with p.connect(application_name="who_am_i"):
        clients = p.admin("SHOW CLIENTS")
        mine = [r for r in clients if r["database"] == "appdb"]
        assert len(mine) == 1 and mine[0]["user"] == "sluice_md5", clients
        assert mine[0]["state"] in ("idle", "active"), mine


def test_show_version_and_config(poolers):
    p = poolers(settings={"default_pool_size": 7})
    version = p.admin("SHOW VERSION")
    assert len(version) == 1
    config = {r["key"]: r["value"] for r in p.admin("SHOW CONFIG")}
    assert config["default_pool_size"] == "7"
    assert config["pool_mode"] == "transaction"


def test_console_needs_admin_user(poolers):
    p = poolers()
    with pytest.raises(Exception):
        with p.connect(dbname="pgbouncer") as c:  # sluice_md5 is not in admin_users
            c.execute("SHOW POOLS")


def test_reload_command(poolers):
    p = poolers(settings={"default_pool_size": 2})
    p.rewrite(settings={"default_pool_size": 6}, reload=False)
    p.admin("RELOAD")
    wait_until(lambda: {r["key"]: r["value"] for r in p.admin("SHOW CONFIG")}
               ["default_pool_size"] == "6", 5)
