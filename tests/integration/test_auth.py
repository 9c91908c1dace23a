"""Client authentication at the pooler, and the pooler's own login to PostgreSQL.

Client-side cases use sluice_trust, whom PostgreSQL trusts, so only the pooler's check decides.
"""

import hashlib

import harness
import pgwire
import pytest
from harness import IS_SLUICE, PASSWORDS

USER = "sluice_trust"
PASSWORD = PASSWORDS[USER]


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


@pytest.fixture(scope="module")
def secrets(pg):
    """auth_file secrets for sluice_trust in each form the file can hold."""
    scram = pg.secret(USER)
    assert scram.startswith("SCRAM-SHA-256$")
    return {"plain": PASSWORD, "md5": md5_secret(USER, PASSWORD), "scram": scram}


def assert_bad_password(err: pgwire.ServerError) -> None:
    # PgBouncer 1.18: FATAL 08P01 "password authentication failed" ("SASL authentication
    # failed" when the exchange was SCRAM). PostgreSQL: 28P01 whatever the method.
    assert err.severity == "FATAL", err
    if IS_SLUICE:
        assert err.sqlstate == "28P01", err
        assert err.message.startswith("password authentication failed"), err
    else:
        assert err.message in ("password authentication failed", "SASL authentication failed")


# (auth_type, secret kind) pairs a client can log in with, per PgBouncer's documentation:
# md5 switches to SCRAM for a SCRAM secret; scram-sha-256 cannot use an md5 secret.
WORKS = [
    ("md5", "plain"), ("md5", "md5"), ("md5", "scram"),
    ("scram-sha-256", "plain"), ("scram-sha-256", "scram"),
    ("plain", "plain"), ("plain", "md5"), ("plain", "scram"),
    ("trust", "plain"), ("trust", "md5"), ("trust", "scram"),
]


@pytest.mark.parametrize("auth_type,kind", WORKS)
def test_client_login(poolers, secrets, auth_type, kind):
    p = poolers(settings={"auth_type": auth_type}, users={USER: secrets[kind]})
    with p.connect(USER, PASSWORD) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == USER
    with p.wire(USER, PASSWORD) as w:  # our own SCRAM/md5/cleartext client too
        assert w.query("SELECT 1").rows == [("1",)]
    if auth_type == "trust":
        with p.connect(USER, "whatever") as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1
        return
    assert_bad_password(p.login_error(USER, "wrong" + PASSWORD))
    unknown = p.login_error("nobody", PASSWORD)
    assert_bad_password(unknown)
    # Whether a user exists must not show: same refusal as a wrong password. PgBouncer 1.18
    # gives it away when the exchange is SCRAM ("SASL authentication failed" for a known user,
    # "password authentication failed" for an unknown one), so this is sluice's bar only.
    if IS_SLUICE:
        wrong = p.login_error(USER, "wrong" + PASSWORD)
        assert (unknown.sqlstate, unknown.message.replace("nobody", USER)) == \
            (wrong.sqlstate, wrong.message)


def test_scram_auth_type_refuses_md5_secret(poolers, secrets):
    p = poolers(settings={"auth_type": "scram-sha-256"}, users={USER: secrets["md5"]})
    err = p.login_error(USER, PASSWORD)
    assert err.severity == "FATAL", err


def test_trust_still_needs_a_known_user(poolers):
    p = poolers(settings={"auth_type": "trust"})
    err = p.login_error("nobody", "x")
    assert err.severity == "FATAL", err


def test_auth_file_change_applies_on_reload(poolers):
    p = poolers(users={USER: "before"})
    with p.connect(USER, "before") as c:
        c.execute("SELECT 1")
    p.rewrite(users={USER: "after"})
    # Reload is asynchronous: poll until the new secret is in force.
    harness.wait_until(lambda: _logs_in(p, USER, "after"), 10, 0.1, "new password to work")
    assert_bad_password(p.login_error(USER, "before"))


def _logs_in(p, user, password) -> bool:
    try:
        p.wire(user, password).close()
        return True
    except pgwire.ServerError:
        return False


# -- the pooler's login to PostgreSQL ---------------------------------------------------------

@pytest.mark.parametrize("role,secret_kind,auth_type", [
    ("sluice_md5", "plain", "md5"),
    ("sluice_md5", "stored", "md5"),            # md5 hash copied from pg_authid
    ("sluice_scram", "plain", "md5"),
    ("sluice_scram", "plain", "scram-sha-256"),
    ("sluice_scram", "stored", "scram-sha-256"),  # SCRAM secret from pg_authid: pass-through
])
def test_server_login_with_auth_file_secret(poolers, pg, role, secret_kind, auth_type):
    secret = PASSWORDS[role] if secret_kind == "plain" else pg.secret(role)
    p = poolers(settings={"auth_type": auth_type}, users={role: secret})
    with p.connect(role, PASSWORDS[role]) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == role
    assert pg.backend_count(role) >= 1


@pytest.mark.parametrize("role", ["sluice_md5", "sluice_scram"])
def test_server_login_with_database_password(poolers, pg, role):
    """[databases] user= password= : every client is mapped to that server role."""
    p = poolers(databases={"forced": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                                      "user": role, "password": PASSWORDS[role]}},
                users={"alice": "alicepass"})
    with p.connect("alice", "alicepass", dbname="forced") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == role


def test_server_login_failure_reaches_client(poolers, pg):
    """A wrong server password gives the client an error, not a hang."""
    p = poolers(databases={"badpw": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                                     "user": "sluice_scram", "password": "not-it"}},
                settings={"query_wait_timeout": 5})
    with pytest.raises(Exception) as exc:
        with p.connect(dbname="badpw") as c:
            c.execute("SELECT 1")
    assert "authentication failed" in str(exc.value) or "server login" in str(exc.value), \
        exc.value
