"""TLS on both sides: clients to the pooler (client_tls_*) and the pooler to PostgreSQL
(server_tls_*), with certificates generated here by the openssl command-line tool.

Clients are libpq (psycopg, psql) with sslmode up to verify-full, and Python's ssl module for
PostgreSQL 17's direct TLS, which the libpq of Debian 12 cannot do yet.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import psycopg
import pytest

import harness
import pgwire
from harness import IS_SLUICE, PG_BIN, wait_until

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, cn: str, ca: str, san: str | None = None) -> None:
    """name.key and name.crt for `cn`, signed by the CA whose files are ca.key and ca.crt."""
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName = {san}\n" if san else "basicConstraints = CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name, cwd=d)


@pytest.fixture(scope="module")
def certs(workdir) -> Path:
    d = workdir / "certs"
    d.mkdir(exist_ok=True)
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=sluice test {ca}",
                 cwd=d)
    _issue(d, "server", "localhost", "ca", "DNS:localhost,IP:127.0.0.1")
    _issue(d, "server2", "localhost", "ca", "DNS:localhost,IP:127.0.0.1")  # for the reload test
    _issue(d, "wrong", "wronghost", "ca", "DNS:wronghost")
    _issue(d, "alice", "sluice_md5", "ca")          # a client certificate for sluice_md5
    _issue(d, "rogue_alice", "sluice_md5", "rogue")  # same name, untrusted CA
    for f in d.iterdir():
        f.chmod(0o644 if f.suffix != ".key" else 0o600)
        harness.give(f)  # PostgreSQL (the postgres user) reads its own key and certificate
    harness.give(d)
    return d


def client_tls(certs: Path, mode: str = "require", **extra) -> dict:
    return {"client_tls_sslmode": mode, "client_tls_cert_file": str(certs / "server.crt"),
            "client_tls_key_file": str(certs / "server.key"), **extra}


def tls_kwargs(certs: Path, mode: str = "verify-full", cert: str | None = None) -> dict:
    kw = {"sslmode": mode, "sslrootcert": str(certs / "ca.crt"), "host": "localhost"}
    if cert:
        kw.update(sslcert=str(certs / f"{cert}.crt"), sslkey=str(certs / f"{cert}.key"))
    return kw


def tls_wire(port: int, certs: Path, cert: str | None = None) -> pgwire.PgWire:
    """A raw protocol connection that asked for TLS with an SSLRequest (libpq's way)."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(certs / f"{cert}.crt"), str(certs / f"{cert}.key"))
    w = pgwire.PgWire("127.0.0.1", port)
    w.sock.sendall(struct.pack("!II", 8, 80877103))
    assert w.sock.recv(1) == b"S"
    w.sock = ctx.wrap_socket(w.sock, server_hostname="localhost")
    return w


def client_tls_row(pooler, user: str = "sluice_md5") -> str:
    rows = [r for r in pooler.admin("SHOW CLIENTS") if r["user"] == user]
    assert rows, "no client row"
    return rows[0]["tls"]


# ---- client side ------------------------------------------------------------------------------

def test_verify_full_client_gets_tls_and_queries(poolers, certs):
    p = poolers(client_tls(certs, "prefer"))  # prefer: the admin console check is plain text
    with p.connect(**tls_kwargs(certs)) as c:
        assert c.execute("SELECT 21 * 2").fetchone()[0] == 42
        assert c.pgconn.ssl_in_use
        # A large result and a large parameter cross TLS intact, in both directions.
        big = "x" * (3 * 1024 * 1024)
        assert c.execute("SELECT length(%s::text)", (big,)).fetchone()[0] == len(big)
        rows = c.execute("SELECT g, md5(g::text) FROM generate_series(1, 50000) g").fetchall()
        assert len(rows) == 50000 and rows[-1][0] == 50000
        if IS_SLUICE:
            assert client_tls_row(p).startswith("TLSv1.")


def test_psql_verify_full(poolers, certs):
    p = poolers(client_tls(certs))
    env = {**p.env(), "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(certs / "ca.crt"),
           "PGHOST": "localhost"}
    out = subprocess.run([str(PG_BIN / "psql"), "-d", "appdb", "-Atc",
                          "SELECT 'ok', ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok|")


def test_verify_full_refuses_a_certificate_for_another_name(poolers, certs):
    p = poolers(client_tls(certs, client_tls_cert_file=str(certs / "wrong.crt"),
                           client_tls_key_file=str(certs / "wrong.key")))
    with pytest.raises(psycopg.OperationalError) as e:
        p.connect(**tls_kwargs(certs))
    assert "does not match host name" in str(e.value) or "wronghost" in str(e.value)
    # verify-ca does not check the name: the same certificate is accepted.
    with p.connect(**tls_kwargs(certs, "verify-ca")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_require_refuses_plain_text_clients(poolers, certs):
    p = poolers(client_tls(certs, "require"))
    err = p.login_error()  # plain text
    # PostgreSQL (a hostssl-only pg_hba.conf) says 28000; PgBouncer 1.18 says 08P01.
    assert err.sqlstate == ("28000" if IS_SLUICE else "08P01"), err
    if IS_SLUICE:
        assert "client_tls_sslmode = require" in err.message
    with p.connect(sslmode="require") as c:
        assert c.pgconn.ssl_in_use


def test_prefer_serves_both(poolers, certs):
    p = poolers(client_tls(certs, "prefer"))
    with p.connect() as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with p.connect(sslmode="require") as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_disable_answers_no_to_ssl_requests(poolers, certs):
    p = poolers()
    with p.connect(sslmode="prefer") as c:
        assert not c.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError):
        p.connect(sslmode="require")


def test_verify_ca_requires_a_client_certificate_from_the_ca(poolers, certs):
    p = poolers(client_tls(certs, "verify-ca", client_tls_ca_file=str(certs / "ca.crt")))
    with p.connect(**tls_kwargs(certs, cert="alice")) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "sluice_md5"
    with pytest.raises(psycopg.OperationalError):
        p.connect(**tls_kwargs(certs))  # no client certificate
    with pytest.raises(psycopg.OperationalError):
        p.connect(**tls_kwargs(certs, cert="rogue_alice"))  # signed by another CA
    assert p.running


def test_cert_auth_logs_in_the_certificates_user_only(poolers, certs):
    # PgBouncer insists on verify-full for auth_type = cert; sluice checks the certificate at
    # login in any mode (below).
    p = poolers(client_tls(certs, "verify-full", client_tls_ca_file=str(certs / "ca.crt"))
                | {"auth_type": "cert"})
    # No password: the certificate's CN is the user.
    with p.connect(password="", **tls_kwargs(certs, cert="alice")) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "sluice_md5"
    with pytest.raises(psycopg.OperationalError):
        p.connect(user="sluice_scram", password="", **tls_kwargs(certs, cert="alice"))
    with tls_wire(p.port, certs, "alice") as w:
        with pytest.raises(pgwire.ServerError) as e:
            w.startup("sluice_scram", "appdb")  # the certificate names sluice_md5
    # PostgreSQL says 28000 for a failed certificate login; PgBouncer 1.18 says 08P01.
    assert e.value.sqlstate == ("28000" if IS_SLUICE else "08P01")
    with pytest.raises(psycopg.OperationalError):
        p.connect(password="", **tls_kwargs(certs))  # no certificate: the handshake fails


@pytest.mark.sluice_only(reason="PgBouncer refuses auth_type = cert below verify-full")
def test_cert_auth_without_a_certificate_is_refused_at_login(poolers, certs):
    p = poolers(client_tls(certs, "require", client_tls_ca_file=str(certs / "ca.crt"))
                | {"auth_type": "cert"})
    with tls_wire(p.port, certs) as w:
        with pytest.raises(pgwire.ServerError) as e:
            w.startup("sluice_md5", "appdb")
    assert e.value.sqlstate == "28000"
    assert "client certificate" in e.value.message
    with tls_wire(p.port, certs, "alice") as w:
        w.startup("sluice_md5", "appdb")
        assert w.query("SELECT current_user").rows == [("sluice_md5",)]


def _peer_cert_serial(port: int, certs: Path) -> int:
    """Asks for TLS with an SSLRequest and returns the serial of the certificate shown."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
    out = subprocess.run([OPENSSL, "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, check=True, timeout=30)
    return int(out.stdout.decode().strip().split("=")[1], 16)


def _serial(certs: Path, name: str) -> int:
    out = subprocess.run([OPENSSL, "x509", "-in", str(certs / f"{name}.crt"), "-noout",
                          "-serial"], capture_output=True, check=True, text=True, timeout=30)
    return int(out.stdout.strip().split("=")[1], 16)


def test_reload_picks_up_a_new_certificate_and_keeps_the_old_on_error(poolers, certs):
    p = poolers(client_tls(certs, "require"))
    held = p.connect(**tls_kwargs(certs))  # an open TLS session survives the reload
    assert _peer_cert_serial(p.port, certs) == _serial(certs, "server")
    p.rewrite({"client_tls_cert_file": str(certs / "server2.crt"),
               "client_tls_key_file": str(certs / "server2.key")})
    wait_until(lambda: _peer_cert_serial(p.port, certs) == _serial(certs, "server2"), 10,
               what="the new certificate after RELOAD")
    # A key that does not match its certificate: the reload fails and the old files stay.
    p.rewrite({"client_tls_key_file": str(certs / "server.key")})
    if IS_SLUICE:
        wait_until(lambda: "could not load the key file" in p.log(), 10, what="the reload error in the log")
    assert _peer_cert_serial(p.port, certs) == _serial(certs, "server2")
    assert held.execute("SELECT 1").fetchone()[0] == 1
    held.close()


@pytest.mark.sluice_only(reason="PostgreSQL 17's direct TLS (sslnegotiation=direct)")
def test_direct_tls_with_alpn(poolers, certs):
    p = poolers(client_tls(certs, "require"))
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.set_alpn_protocols(["postgresql"])
    w = pgwire.PgWire("127.0.0.1", p.port)
    w.sock = ctx.wrap_socket(w.sock, server_hostname="localhost")
    assert w.sock.selected_alpn_protocol() == "postgresql"
    w.startup("sluice_md5", "appdb", harness.PASSWORDS["sluice_md5"])
    assert w.query("SELECT 7").rows == [("7",)]
    w.close()
    # Without ALPN the connection is dropped, as PostgreSQL 17 does.
    bare = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, pgwire.ConnectionClosed, OSError)):
            s = bare.wrap_socket(raw, server_hostname="localhost")
            w2 = pgwire.PgWire.__new__(pgwire.PgWire)
            w2.sock, w2._timeout, w2.params, w2.backend_key, w2._buf = s, 10, {}, None, b""
            w2.startup("sluice_md5", "appdb", harness.PASSWORDS["sluice_md5"])
    assert "without ALPN" in p.log()


@pytest.mark.sluice_only(reason="CVE-2021-23214: bytes pipelined behind the SSLRequest")
def test_plain_bytes_after_the_ssl_request_are_refused(poolers, certs):
    p = poolers(client_tls(certs, "prefer"))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
        startup = struct.pack("!I", 196608) + b"user\0sluice_md5\0database\0appdb\0\0"
        raw.sendall(struct.pack("!II", 8, 80877103) + struct.pack("!I", len(startup) + 4)
                    + startup)
        reply = raw.recv(4096)
        assert reply[:1] == b"E" and b"unencrypted data after the TLS request" in reply


# ---- server side ------------------------------------------------------------------------------

@pytest.fixture
def pg_ssl(pg, certs):
    """Turns on TLS in the shared PostgreSQL for one test, then off again."""
    pg.execute(f"ALTER SYSTEM SET ssl_cert_file = '{certs / 'server.crt'}'")
    pg.execute(f"ALTER SYSTEM SET ssl_key_file = '{certs / 'server.key'}'")
    pg.execute("ALTER SYSTEM SET ssl = on")
    pg.execute("SELECT pg_reload_conf()")
    wait_until(lambda: pg.execute("SHOW ssl")[0][0] == "on", 10, what="ssl = on")
    yield pg
    for k in ("ssl", "ssl_cert_file", "ssl_key_file"):
        pg.execute(f"ALTER SYSTEM RESET {k}")
    pg.execute("SELECT pg_reload_conf()")
    wait_until(lambda: pg.execute("SHOW ssl")[0][0] == "off", 10, what="ssl = off")


def _server_ssl(pg) -> list[tuple]:
    return pg.execute("SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a "
                      "USING (pid) WHERE a.datname = 'appdb' AND a.usename = 'sluice_md5' "
                      "AND a.application_name <> 'sluice budget_check'")


def test_server_verify_full_encrypts_the_server_connections(poolers, pg_ssl, certs):
    p = poolers({"server_tls_sslmode": "verify-full", "server_tls_ca_file": str(certs / "ca.crt")})
    with p.connect() as c:
        assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        big = c.execute("SELECT string_agg(md5(g::text), '') FROM generate_series(1, 40000) g")
        assert len(big.fetchone()[0]) == 40000 * 32
    rows = _server_ssl(pg_ssl)
    assert rows and all(r[0] for r in rows), rows
    if IS_SLUICE:
        servers = [r for r in p.admin("SHOW SERVERS") if r["database"] == "appdb"]
        assert servers and all(r["tls"].startswith("TLSv1.") for r in servers), servers


def test_server_prefer_uses_tls_when_offered(poolers, pg_ssl):
    p = poolers({"server_tls_sslmode": "prefer"})
    with p.connect() as c:
        assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


def test_server_verify_full_refuses_a_wrong_name(poolers, pg_ssl, certs):
    # The database is reached as 127.0.0.1; a certificate that only names wronghost fails.
    pg_ssl.execute(f"ALTER SYSTEM SET ssl_cert_file = '{certs / 'wrong.crt'}'")
    pg_ssl.execute(f"ALTER SYSTEM SET ssl_key_file = '{certs / 'wrong.key'}'")
    pg_ssl.execute("SELECT pg_reload_conf()")
    wait_until(lambda: pg_ssl.execute("SHOW ssl_cert_file")[0][0].endswith("wrong.crt"), 10,
               what="the wrong certificate")
    p = poolers({"server_tls_sslmode": "verify-full", "server_tls_ca_file": str(certs / "ca.crt"),
                 "server_connect_timeout": 5})
    with pytest.raises(psycopg.OperationalError) as e:
        p.connect()
    if IS_SLUICE:
        assert "certificate verify failed" in str(e.value), str(e.value)
    assert p.running


def test_server_require_refuses_a_server_without_tls(poolers):
    p = poolers({"server_tls_sslmode": "require", "server_connect_timeout": 5})
    with pytest.raises(psycopg.OperationalError) as e:
        p.connect()
    if IS_SLUICE:
        assert "does not accept TLS" in str(e.value), str(e.value)
    assert p.running


def test_pgbench_over_tls_on_both_sides(poolers, pg_ssl, certs, bench_db):
    p = poolers(client_tls(certs) | {"server_tls_sslmode": "require"},
                databases={"benchdb": {"host": "127.0.0.1", "port": pg_ssl.port,
                                       "dbname": "benchdb"}})
    env = {**p.env(), "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(certs / "ca.crt"),
           "PGHOST": "localhost"}
    out = subprocess.run([str(PG_BIN / "pgbench"), "-n", "-c", "8", "-j", "2", "-t", "50",
                          "benchdb"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + p.log()
    assert "number of transactions actually processed: 400/400" in out.stdout, out.stdout


def test_slow_tls_reader_of_a_large_result_is_held_back(poolers, certs):
    """The write watermarks count ciphertext: a TLS client that reads nothing of a 40 MB result
    makes the pooler stop reading from the server, as in test_backpressure.py."""
    from test_backpressure import stall_then_read_slowly
    p = poolers(client_tls(certs, "require") | {"default_pool_size": 2})
    w = tls_wire(p.port, certs)
    w.startup("sluice_md5", "appdb", harness.PASSWORDS["sluice_md5"])
    stall_then_read_slowly(p, w)


@pytest.mark.sluice_only(reason="PgBouncer 1.18 has no auth_type = hba with cert lines")
def test_hba_hostssl_hostnossl_and_cert_over_tls(poolers, certs):
    p = poolers(client_tls(certs, "prefer", client_tls_ca_file=str(certs / "ca.crt"))
                | {"auth_type": "hba"}, start=False)
    hba = p.dir / "hba.conf"
    harness.write_file(hba, """
hostssl   appdb  sluice_md5    127.0.0.1/32  cert
hostnossl appdb  sluice_md5    127.0.0.1/32  reject
hostssl   appdb  sluice_scram  127.0.0.1/32  scram-sha-256 clientcert=verify-full
hostnossl appdb  sluice_trust  127.0.0.1/32  trust
""")
    p.rewrite({"auth_hba_file": str(hba)}, reload=False)
    p.start()
    # cert: the certificate logs sluice_md5 in, no password asked.
    with tls_wire(p.port, certs, "alice") as w:
        w.startup("sluice_md5", "appdb")
        assert w.query("SELECT current_user").rows == [("sluice_md5",)]
    # The same user in plain text meets the hostnossl reject line.
    err = p.login_error()
    assert err.sqlstate == "28000" and "rejects connection" in err.message, err
    assert err.message.endswith("no encryption")
    # TLS without a certificate: the cert line refuses.
    with tls_wire(p.port, certs) as w:
        with pytest.raises(pgwire.ServerError) as e:
            w.startup("sluice_md5", "appdb")
    assert e.value.sqlstate == "28000"
    assert "requires a valid client certificate" in e.value.message
    # scram-sha-256 with clientcert=verify-full: password and a certificate naming the user.
    with tls_wire(p.port, certs, "alice") as w:
        with pytest.raises(pgwire.ServerError) as e:
            w.startup("sluice_scram", "appdb", harness.PASSWORDS["sluice_scram"])
    assert "CN mismatch" in e.value.message
    # hostnossl trust matches plain text only; over TLS no line matches.
    with p.connect(user="sluice_trust") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with tls_wire(p.port, certs) as w:
        with pytest.raises(pgwire.ServerError) as e:
            w.startup("sluice_trust", "appdb")
    assert e.value.message.startswith("no pg_hba.conf entry for host \"127.0.0.1\"")
    assert e.value.message.endswith("SSL encryption")
