"""The binary's contract: flags, config errors, log and pid files, unix socket, non-root."""

import os
import subprocess

import pytest

import harness
from harness import IS_SLUICE, wait_until

pytestmark = pytest.mark.sluice_only("sluice's own command line")


def run(*args, timeout=10):
    return subprocess.run([str(harness.SLUICE_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_version_and_help():
    v = run("--version")
    assert v.returncode == 0
    assert v.stdout.startswith("sluice ")
    h = run("--help")
    assert h.returncode == 0
    assert "serve" in h.stdout


def test_bad_value_names_file_line_key_and_what_is_allowed(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[databases]\napp = host=127.0.0.1\n\n[pgbouncer]\nlisten_port = 6432\n"
                   "pool_mode = sesion\n")
    r = run("serve", str(ini))
    assert r.returncode == 2, r
    assert f"{ini}:6" in r.stderr
    assert "pool_mode" in r.stderr and "sesion" in r.stderr
    assert "session, transaction or statement" in r.stderr


def test_unknown_and_unimplemented_keys_warn_once_and_load(poolers):
    p = poolers(settings={"tcp_keepalive": 1, "no_such_key_at_all": 5})
    with p.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    log = p.log()
    assert log.count("'tcp_keepalive' is not implemented by sluice yet") == 1, log
    assert "no_such_key_at_all" in log


def test_logfile_and_pidfile(poolers, workdir):
    logfile = workdir / "sluice-file.log"
    pidfile = workdir / "sluice.pid"
    p = poolers(settings={"logfile": str(logfile), "pidfile": str(pidfile)})
    with p.connect() as c:
        c.execute("SELECT 1")
    assert int(pidfile.read_text().strip()) == p.proc.pid
    wait_until(lambda: "login ok" in logfile.read_text(), 5, 0.05, "a login line in logfile")
    assert p.stop() == 0
    assert not pidfile.exists(), "pidfile is removed at exit"


def test_unix_socket(poolers):
    p = poolers()
    import psycopg
    with psycopg.connect(host=str(p.sockdir), port=p.port, dbname="appdb", user="sluice_md5",
                         password=harness.PASSWORDS["sluice_md5"], autocommit=True) as c:
        assert c.execute("SELECT 42").fetchone()[0] == 42


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an ordinary user")
def test_runs_as_an_ordinary_user(poolers, monkeypatch):
    # The same binary, run as the unprivileged postgres user.
    p = poolers(start=False)
    monkeypatch.setattr(p, "command", lambda: harness.as_postgres(
        [str(harness.SLUICE_BIN), "serve", str(p.ini_path)]))
    p.start()
    with p.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
