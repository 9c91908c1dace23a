"""auth_type = hba: which pg_hba.conf line a real client matches and what it is then asked for.

The clients are libpq (psycopg, psql) and our raw pgwire client, which shows which
authentication request the pooler sent (3 cleartext, 5 md5, 10 SASL, 0 none: trust).
PostgreSQL trusts sluice_trust, so only the pooler's decision counts for that role.
"""

import os
import signal
import struct
import subprocess
import time

import psycopg
import pytest

import pgwire
from harness import IS_SLUICE, PASSWORDS, wait_until, write_file

AUTH_OK, CLEARTEXT, MD5, SASL = 0, 3, 5, 10


def first_auth_request(p, user: str, dbname: str = "appdb", host: str = "127.0.0.1"):
    """Sends a startup packet; returns the first authentication request code, or the error."""
    conn = pgwire.PgWire(host, p.port, timeout=10)
    try:
        body = struct.pack("!I", 196608)
        for k, v in (("user", user), ("database", dbname)):
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        conn.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        kind, msg = conn.read_message()
        if kind == b"E":
            return pgwire.ServerError(pgwire._fields(msg))
        assert kind == b"R", (kind, msg)
        return struct.unpack("!I", msg[:4])[0]
    finally:
        conn.close()


def hba_pooler(poolers, hba: str, **settings):
    p = poolers(settings={"auth_type": "hba", **settings}, start=False)
    path = p.dir / "hba.conf"
    write_file(path, hba)
    p.rewrite(settings={"auth_hba_file": str(path)}, reload=False)
    p.start()
    return p, path


HBA = """
# per database and user; the first matching line wins
host    appdb      sluice_trust   10.0.0.0/8       reject
host    appdb      sluice_trust   127.0.0.1/32     trust
host    appdb      sluice_md5     127.0.0.1/32     md5
host    appdb      sluice_scram   127.0.0.1 255.255.255.255 scram-sha-256
host    otherdb    all            127.0.0.1/32     reject
hostssl all        all            all              trust
hostnossl "appdb"  pgb_admin,\\
                   nobody         127.0.0.0/8      password
host    pgbouncer  pgb_admin      127.0.0.1/32     md5
"""


@pytest.mark.sluice_only("PgBouncer 1.18 has no hostnossl in its hba parser, and says it differently")
def test_method_per_database_user_and_address(poolers):
    p, _ = hba_pooler(poolers, HBA)
    assert first_auth_request(p, "sluice_trust") == AUTH_OK
    assert first_auth_request(p, "sluice_md5") == MD5
    assert first_auth_request(p, "sluice_scram") == SASL
    assert first_auth_request(p, "pgb_admin") == CLEARTEXT  # hostnossl: plain TCP
    # Real logins with libpq.
    with p.connect("sluice_trust", "any password at all") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "sluice_trust"
    with p.connect("sluice_md5") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with p.connect("sluice_scram") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    err = p.login_error("sluice_md5", "wrong")
    assert err.sqlstate == "28P01", err
    # The admin console goes through hba too.
    assert p.admin("SHOW VERSION")


@pytest.mark.sluice_only("PostgreSQL's no-match wording; PgBouncer says 'no pg_hba.conf entry'")
def test_no_matching_line_is_refused_with_postgresql_wording(poolers):
    p, _ = hba_pooler(poolers, HBA)
    err = first_auth_request(p, "sluice_trust", "otherdb")  # reject line
    assert isinstance(err, pgwire.ServerError)
    assert err.sqlstate == "28000"
    assert err.message == ('pg_hba.conf rejects connection for host "127.0.0.1", user '
                           '"sluice_trust", database "otherdb", no encryption')
    # No line for this user and database: hostssl does not match a plain TCP client.
    err = first_auth_request(p, "sluice_md5", "nosuchdb")
    assert isinstance(err, pgwire.ServerError)
    assert err.sqlstate == "28000"
    assert err.severity == "FATAL"
    assert err.message == ('no pg_hba.conf entry for host "127.0.0.1", user "sluice_md5", '
                           'database "nosuchdb", no encryption')
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        p.connect("sluice_scram", dbname="postgres")


@pytest.mark.sluice_only("local lines match sluice's unix socket")
def test_local_line_matches_a_unix_socket_client(poolers):
    hba = "local appdb all trust\nhost appdb all 127.0.0.1/32 reject\n"
    p, _ = hba_pooler(poolers, hba)
    env = {**os.environ, "PGPASSWORD": "", "PGSSLMODE": "disable"}
    out = subprocess.run(["psql", "-h", str(p.sockdir), "-p", str(p.port), "-U", "sluice_trust",
                          "-d", "appdb", "-Atc", "SELECT current_user"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sluice_trust"
    # The same user over TCP hits the reject line.
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(p.port), "-U", "sluice_trust",
                          "-d", "appdb", "-Atc", "SELECT 1"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode != 0
    assert 'pg_hba.conf rejects connection for host "127.0.0.1"' in out.stderr


@pytest.mark.sluice_only("sluice's own hba check")
def test_local_only_file_refuses_tcp_and_hostssl_never_matches_plain(poolers):
    hba = "local all all trust\nhostssl all all all trust\n"
    p, _ = hba_pooler(poolers, hba)
    err = first_auth_request(p, "sluice_trust")
    assert isinstance(err, pgwire.ServerError)
    assert err.message.startswith('no pg_hba.conf entry for host "127.0.0.1"')


@pytest.mark.sluice_only("peer needs SO_PEERCRED on sluice's unix socket")
def test_peer_compares_the_os_user(poolers):
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    p, _ = hba_pooler(poolers, "local all all peer\n")
    # The OS user is not sluice_trust: refused with PostgreSQL's message.
    with pytest.raises(psycopg.OperationalError,
                       match='Peer authentication failed for user "sluice_trust"'):
        psycopg.connect(host=str(p.sockdir), port=p.port, user="sluice_trust", dbname="appdb",
                        connect_timeout=5)
    assert me != "sluice_trust"


@pytest.mark.sluice_only("sluice's reload keeps the previous hba rules")
def test_reload_rereads_and_a_bad_file_keeps_the_old_rules(poolers):
    p, path = hba_pooler(poolers, "host all all 127.0.0.1/32 trust\n")
    assert first_auth_request(p, "sluice_md5") == AUTH_OK
    write_file(path, "host all all 127.0.0.1/32 md5\n")
    p.reload()
    wait_until(lambda: first_auth_request(p, "sluice_md5") == MD5, 10, what="md5 after reload")
    write_file(path, "host all all 127.0.0.1/33 trust\n")  # bad: keeps md5
    p.reload()
    wait_until(lambda: "keeping the previous hba rules" in p.log(), 10, what="the reload log")
    assert "hba.conf:1: invalid CIDR mask" in p.log()
    assert first_auth_request(p, "sluice_md5") == MD5
    write_file(path, "host all all 127.0.0.1/32 scram-sha-256\n")
    p.reload()
    wait_until(lambda: first_auth_request(p, "sluice_md5") == SASL, 10, what="scram after reload")


@pytest.mark.sluice_only("sluice's start-up error")
def test_bad_file_at_start_names_file_and_line(poolers):
    p = poolers(settings={"auth_type": "hba"}, start=False)
    path = p.dir / "hba.conf"
    write_file(path, "host all all 127.0.0.1/32 trust\nhost all all all ldap\n")
    p.rewrite(settings={"auth_hba_file": str(path)}, reload=False)
    proc = subprocess.run(p.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f'{path}:2: authentication method "ldap" is not supported by sluice' in (
        proc.stderr + proc.stdout)


@pytest.mark.sluice_only("group lines warn at load")
def test_group_entries_warn_and_never_match(poolers):
    p, path = hba_pooler(poolers, "host all +admins all trust\nhost all all all md5\n")
    assert first_auth_request(p, "admins") == MD5
    assert f"{path}:1: +admins: group membership (+role) is not supported" in p.log()


@pytest.mark.sluice_only("SET on sluice's console reads the hba file")
def test_set_auth_type_hba_on_the_console_reads_the_file(poolers):
    p = poolers(settings={"auth_type": "md5"})
    path = p.dir / "hba.conf"
    write_file(path, "host all all 127.0.0.1/32 trust\n")
    assert first_auth_request(p, "sluice_md5") == MD5
    p.admin(f"SET auth_hba_file = '{path}'")
    p.admin("SET auth_type = 'hba'")
    assert first_auth_request(p, "sluice_md5") == AUTH_OK
    # A bad file refuses the SET and changes nothing.
    bad = p.dir / "bad.conf"
    write_file(bad, "host all all all ldap\n")
    with pytest.raises(psycopg.Error, match="ldap"):
        p.admin(f"SET auth_hba_file = '{bad}'")
    assert first_auth_request(p, "sluice_md5") == AUTH_OK
