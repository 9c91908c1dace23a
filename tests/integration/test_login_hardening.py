"""Login hardening: unknown users look like wrong passwords, the admin console gives nothing
away, no secret reaches the log, and unauthenticated connections are capped and timed out."""

import base64
import socket
import struct
import time

import psycopg
import pytest

import pgwire
from harness import ADMIN_PASSWORD, ADMIN_USER, IS_SLUICE, PASSWORDS, wait_until


def startup(p, user: str, dbname: str = "appdb") -> pgwire.PgWire:
    conn = pgwire.PgWire("127.0.0.1", p.port, timeout=10)
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", dbname)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    conn.sock.sendall(struct.pack("!I", len(body) + 4) + body)
    return conn


def auth_request(conn: pgwire.PgWire):
    kind, msg = conn.read_message()
    if kind == b"E":
        return "E", pgwire._fields(msg)
    assert kind == b"R", (kind, msg)
    return struct.unpack("!I", msg[:4])[0], msg[4:]


def scram_server_first(p, user: str) -> dict:
    """Starts a SCRAM exchange as `user`; returns the server-first message's attributes."""
    with startup(p, user) as conn:
        code, _ = auth_request(conn)
        assert code == 10, code
        first = b"n,,n=,r=fixedclientnonce"
        conn.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
        code, data = auth_request(conn)
        assert code == 11, code
        return dict(part.split("=", 1) for part in data.decode().split(","))


@pytest.mark.sluice_only("sluice's mock exchange (PgBouncer 1.18 answers an unknown user at once)")
@pytest.mark.parametrize("auth_type,code", [("md5", 5), ("scram-sha-256", 10)])
def test_unknown_user_gets_the_same_exchange_and_error(poolers, auth_type, code):
    p = poolers(settings={"auth_type": auth_type})
    known = p.login_error("sluice_md5", "wrong password")
    unknown = p.login_error("nobody_here", "wrong password")
    for err in (known, unknown):
        assert (err.severity, err.sqlstate) == ("FATAL", "28P01"), err
    assert known.message == 'password authentication failed for user "sluice_md5"'
    assert unknown.message == 'password authentication failed for user "nobody_here"'
    for user in ("sluice_md5", "nobody_here"):
        with startup(p, user) as conn:
            assert auth_request(conn)[0] == code


@pytest.mark.sluice_only("sluice's mock SCRAM salt")
def test_mock_scram_salt_is_stable_and_looks_real(poolers, pg):
    # A real SCRAM secret for one user; the unknown user's salt must look the same.
    p = poolers(settings={"auth_type": "scram-sha-256"},
                users={"sluice_scram": pg.secret("sluice_scram")})
    real = scram_server_first(p, "sluice_scram")
    a = scram_server_first(p, "ghost_user")
    b = scram_server_first(p, "ghost_user")
    other = scram_server_first(p, "another_ghost")
    assert a["s"] == b["s"]  # the same each time, as a real user's
    assert a["s"] != other["s"]
    assert len(base64.b64decode(a["s"])) == len(base64.b64decode(real["s"])) == 16
    assert a["i"] == real["i"] == "4096"


def test_admin_console_refuses_non_admins_after_the_password(poolers):
    p = poolers(settings={"auth_type": "md5", "stats_users": "sluice_trust"})
    # A known user who is no admin, with the right password, and an unknown user.
    with startup(p, "sluice_md5", "pgbouncer") as conn:
        first = auth_request(conn)
    err = p.login_error("sluice_md5", PASSWORDS["sluice_md5"], dbname="pgbouncer")
    if not IS_SLUICE:
        # PgBouncer 1.18 refuses before any password, naming the reason.
        assert first[0] == "E" and "not allowed" in first[1]["M"], first
        return
    assert first[0] == 5, first  # sluice asks for the password first
    assert (err.severity, err.sqlstate) == ("FATAL", "28P01"), err
    assert err.message == 'password authentication failed for user "sluice_md5"'
    wrong = p.login_error("sluice_md5", "wrong", dbname="pgbouncer")
    unknown = p.login_error("nobody_at_all", "wrong", dbname="pgbouncer")
    assert (wrong.sqlstate, unknown.sqlstate) == ("28P01", "28P01")
    assert 'not allowed to use the admin console: "sluice_md5" is in neither' in p.log()
    # Admins and stats users still get in.
    assert p.admin("SHOW VERSION")
    with psycopg.connect(**p.conn_kwargs("sluice_trust", PASSWORDS["sluice_trust"],
                                         "pgbouncer"), autocommit=True) as c:
        assert c.execute("SHOW POOLS").fetchall() is not None


SECRET = "Zq9-distinctive-pw-7731"
WRONG = "Wr0ng-distinctive-4242"


@pytest.mark.sluice_only("PgBouncer 1.18 logs connection strings with password= and auth_file "
                         "secrets at verbose=2")
@pytest.mark.parametrize("auth_type", ["plain", "md5", "scram-sha-256"])
def test_no_password_in_the_log(poolers, pg, auth_type):
    pg.execute(f"ALTER ROLE sluice_trust PASSWORD '{SECRET}'")
    try:
        p = poolers(settings={"auth_type": auth_type, "verbose": 2, "log_connections": 1,
                              "log_disconnections": 1},
                    users={"sluice_trust": SECRET},
                    databases={"appdb": p_db(pg, "appdb"),
                               "withpw": p_db(pg, "appdb", user="sluice_trust",
                                              password=SECRET)})
        with p.connect("sluice_trust", SECRET) as c:
            c.execute("SELECT 1")
        with p.connect("sluice_trust", SECRET, dbname="withpw") as c:
            c.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            p.connect("sluice_trust", WRONG)
        with pytest.raises(psycopg.OperationalError):
            p.connect("no_such_user", WRONG)
        with pytest.raises(psycopg.OperationalError):  # a password as an unknown parameter
            p.connect("sluice_trust", SECRET, options=f"-c password={SECRET}")
        shown = []
        for cmd in ("SHOW CONFIG", "SHOW DATABASES", "SHOW USERS", "SHOW POOLS",
                    "SHOW CLIENTS", "SHOW SERVERS"):
            shown.append(repr(p.admin(cmd)))
        p.reload()
        wait_until(lambda: "sighup" in p.log().lower(), 10, what="the reload log line")
    finally:
        pg.execute(f"ALTER ROLE sluice_trust PASSWORD '{PASSWORDS['sluice_trust']}'")
    log = p.log()
    assert "login" in log  # verbose logging did happen
    assert SECRET not in log
    assert WRONG not in log
    for out in shown:
        assert SECRET not in out


def p_db(pg, dbname, **kw):
    return {"host": "127.0.0.1", "port": pg.port, "dbname": dbname, **kw}


def silent_sockets(p, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        socks.append(s)
    return socks


@pytest.mark.sluice_only("max_pending_logins is sluice's")
def test_max_pending_logins_refuses_then_recovers(poolers):
    from test_http import scrape, start as start_with_http

    p = start_with_http(poolers, max_pending_logins=5, client_login_timeout=60)

    def pending():
        return scrape(p)["sluice_pending_logins"][0][1]
    # The harness's own readiness probe may still be counted: start from 0.
    wait_until(lambda: pending() == 0, 10, what="no pending login")
    socks = silent_sockets(p, 5)
    try:
        wait_until(lambda: pending() == 5, 10, what="5 pending logins")
        err = p.login_error("sluice_md5", timeout=5)
        assert (err.severity, err.sqlstate) == ("FATAL", "53300"), err
        assert err.message == (
            "sluice: too many connections are logging in: max_pending_logins (5) reached; retry "
            "later, raise max_pending_logins, or lower client_login_timeout so that silent "
            "connections close sooner")
        # A real libpq client gets the same.
        with pytest.raises(psycopg.OperationalError, match=r"max_pending_logins \(5\)"):
            p.connect("sluice_md5")
        # The silent ones are still open and untouched.
        for s in socks:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        assert pending() == 5
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: pending() == 0, 10, what="the silent connections to be gone")
    with p.connect("sluice_md5") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    refused = [v for labels, v in scrape(p)["sluice_client_disconnects_total"]
               if labels.get("reason") == "max_pending_logins" and "database" not in labels]
    assert refused == [2.0], refused


def test_silent_client_is_closed_after_client_login_timeout(poolers):
    p = poolers(settings={"client_login_timeout": 1})
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    t0 = time.monotonic()
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    waited = time.monotonic() - t0
    assert 0.8 <= waited < 5, waited
    if IS_SLUICE:
        assert data[:1] == b"E", data
        assert b"client_login_timeout" in data
    # Logged-in clients are not affected by it.
    with p.connect("sluice_md5") as c:
        time.sleep(1.5)
        assert c.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.sluice_only("sluice's limit on authentication messages")
def test_oversized_password_message_is_refused_naming_the_limit(poolers):
    p = poolers(settings={"auth_type": "plain"})
    with startup(p, "sluice_md5") as conn:
        assert auth_request(conn)[0] == 3
        # Only the header: a 1 MB password the pooler must not wait for.
        conn.sock.sendall(b"p" + struct.pack("!I", 1 << 20))
        kind, msg = conn.read_message()
        assert kind == b"E"
        fields = pgwire._fields(msg)
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
        assert fields["M"] == ("sluice: password message of 1048576 bytes is over the limit of "
                               "16384 bytes for authentication messages")
