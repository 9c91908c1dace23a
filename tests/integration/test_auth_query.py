"""auth_user + auth_query: users missing from auth_file are looked up in PostgreSQL.

The lookup runs as sluice_auth through a SECURITY DEFINER function (the setup PgBouncer's
documentation recommends), so the auth user needs no superuser rights. lookup_scram and
lookup_md5 are in no auth_file: the pooler learns their secrets from PostgreSQL, checks the
client against them and then logs in to PostgreSQL as them (SCRAM through the ClientKey of the
client's proof, md5 with the stored hash).
"""

import threading
import time

import psycopg
import pytest

from harness import IS_SLUICE, BackendSampler, run_threads, wait_until

AUTH_USER, AUTH_PASSWORD = "sluice_auth", "authpass"
LOOKUP = {"lookup_scram": ("scram-sha-256", "scram secret 1"),
          "lookup_md5": ("md5", "md5 secret 2")}
QUERY = "SELECT uname, phash FROM public.user_lookup($1)"


@pytest.fixture(scope="module")
def lookup_roles(pg):
    if not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AUTH_USER,)):
        pg.execute(f"CREATE ROLE {AUTH_USER} LOGIN PASSWORD '{AUTH_PASSWORD}'")
        for role, (enc, password) in LOOKUP.items():
            pg.execute(f"SET password_encryption = '{enc}'")
            pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        pg.execute("SET password_encryption = 'scram-sha-256'")
        with pg.connect("appdb") as c:
            c.execute("""
                CREATE FUNCTION public.user_lookup(i_username text, OUT uname text,
                                                   OUT phash text)
                RETURNS record AS $$
                  SELECT usename::text, passwd::text FROM pg_catalog.pg_shadow
                   WHERE usename = i_username
                $$ LANGUAGE sql SECURITY DEFINER""")
            c.execute("REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public")
            c.execute(f"GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO {AUTH_USER}")
        # PostgreSQL checks each looked-up role the way its secret allows.
        hba = pg.data / "pg_hba.conf"
        text = hba.read_text()
        hba.write_text("host all lookup_md5 127.0.0.1/32 md5\n"
                       "host all lookup_scram 127.0.0.1/32 scram-sha-256\n" + text)
        pg.execute("SELECT pg_reload_conf()")
    assert pg.secret("lookup_scram").startswith("SCRAM-SHA-256$")
    assert pg.secret("lookup_md5").startswith("md5")
    return LOOKUP


def lookup_pooler(poolers, settings=None, databases=None):
    p = poolers(settings={"auth_user": AUTH_USER, "auth_query": QUERY, **(settings or {})},
                users={AUTH_USER: AUTH_PASSWORD}, databases=databases, start=False)
    p.start()
    return p


def assert_bad_password(err):
    assert err.severity == "FATAL", err
    if IS_SLUICE:
        assert err.sqlstate == "28P01", err
        assert err.message.startswith("password authentication failed for user"), err


@pytest.mark.parametrize("role", ["lookup_scram", "lookup_md5"])
def test_looked_up_user_logs_in_end_to_end(poolers, pg, lookup_roles, role):
    p = lookup_pooler(poolers)
    password = LOOKUP[role][1]
    for _ in range(3):  # the pool's server logins and later clients both work
        with p.connect(role, password) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == role
            assert c.execute("SELECT 40 + 2").fetchone()[0] == 42
    # A real server login as that role happened (not as the auth user).
    assert pg.backend_count(user=role) >= 1
    # Our own client too, with its SCRAM/md5 exchange.
    with p.wire(role, password) as w:
        assert w.query("SELECT current_user").rows == [(role,)]


@pytest.mark.parametrize("role", ["lookup_scram", "lookup_md5"])
def test_wrong_password_and_unknown_user_fail_alike(poolers, lookup_roles, role):
    p = lookup_pooler(poolers)
    wrong = p.login_error(role, "not the password")
    assert_bad_password(wrong)
    missing = p.login_error("no_such_role_xyz", "whatever")
    assert_bad_password(missing)
    if IS_SLUICE:
        assert missing.message == 'password authentication failed for user "no_such_role_xyz"'
    # PgBouncer 1.18 says "SASL authentication failed" after a SCRAM exchange; and it answers an
    # unknown user "bouncer config error" (auth_query's NULL name), which sluice does not.
    match = "password authentication failed" if IS_SLUICE else "(password|SASL) authentication"
    with pytest.raises(psycopg.OperationalError, match=match):
        p.connect(role, "not the password")


def test_user_name_is_a_parameter_not_sql(poolers, lookup_roles):
    p = lookup_pooler(poolers)
    err = p.login_error("x' OR usename LIKE '%", "whatever")
    assert_bad_password(err)  # no SQL error: the name never became SQL text
    with p.connect("lookup_md5", LOOKUP["lookup_md5"][1]) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_per_database_auth_user(poolers, pg, lookup_roles):
    p = poolers(users={AUTH_USER: AUTH_PASSWORD},
                settings={"auth_query": QUERY},
                databases={"appdb": {"host": "127.0.0.1", "port": pg.port, "dbname": "appdb",
                                     "auth_user": AUTH_USER},
                           "plain": {"host": "127.0.0.1", "port": pg.port,
                                     "dbname": "appdb"}})
    with p.connect("lookup_scram", LOOKUP["lookup_scram"][1]) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "lookup_scram"
    # The other database has no auth_user: the user is unknown there.
    assert_bad_password(p.login_error("lookup_scram", LOOKUP["lookup_scram"][1], dbname="plain"))


@pytest.mark.sluice_only("sluice's auth_dbname: PgBouncer 1.18 has no auth_dbname")
def test_auth_dbname_runs_the_query_elsewhere(poolers, pg, lookup_roles):
    p = lookup_pooler(poolers, settings={"auth_dbname": "authdb"},
                      databases={"appdb": {"host": "127.0.0.1", "port": pg.port,
                                           "dbname": "appdb"},
                                 "authdb": {"host": "127.0.0.1", "port": pg.port,
                                            "dbname": "appdb"}})
    with p.connect("lookup_md5", LOOKUP["lookup_md5"][1]) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    pools = {(r["database"], r["user"]) for r in p.admin("SHOW POOLS")}
    assert ("authdb", AUTH_USER) in pools
    assert ("appdb", AUTH_USER) not in pools


def test_login_storm_shares_the_auth_pool(poolers, pg, lookup_roles):
    p = lookup_pooler(poolers, settings={"default_pool_size": 2})
    password = LOOKUP["lookup_md5"][1]

    def login(i):
        with p.connect("lookup_md5", password) as c:
            return c.execute("SELECT 1").fetchone()[0]
    with BackendSampler(pg, user=AUTH_USER) as sampler:
        results = run_threads(login, 30)
    assert results == [1] * 30, results
    # 30 lookups, at most pool_size connections as the auth user.
    assert 1 <= sampler.max <= 2, sampler.samples


@pytest.mark.sluice_only("sluice's own timeout message")
def test_slow_auth_query_times_out_with_a_clear_error(poolers, lookup_roles):
    p = lookup_pooler(poolers, settings={
        "auth_query": "SELECT uname, phash FROM public.user_lookup($1), pg_sleep(10)",
        "server_connect_timeout": 1})
    t0 = time.monotonic()
    err = p.login_error("lookup_md5", LOOKUP["lookup_md5"][1])
    assert time.monotonic() - t0 < 8
    assert err.sqlstate == "08006", err
    assert "auth_query did not answer within 1 s (server_connect_timeout)" in err.message


@pytest.mark.sluice_only("sluice names the failing auth_query")
def test_broken_auth_query_is_reported(poolers, lookup_roles):
    p = lookup_pooler(poolers, settings={"auth_query": "SELECT nope FROM nowhere WHERE x=$1"})
    err = p.login_error("lookup_md5", LOOKUP["lookup_md5"][1])
    assert err.sqlstate == "08006", err
    assert err.message.startswith("sluice: auth_query failed:"), err
    assert "nowhere" in err.message


def test_default_auth_query_as_a_superuser(poolers, pg, lookup_roles):
    # PgBouncer's default auth_query reads pg_shadow; its auth user must be a superuser. Here
    # the superuser `postgres`, whom PostgreSQL trusts on 127.0.0.1, needs no secret at all.
    p = poolers(settings={"auth_user": "postgres", "auth_query": None})
    with p.connect("lookup_scram", LOOKUP["lookup_scram"][1]) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "lookup_scram"
    # No row at all for an unknown user: the same failure as a wrong password.
    assert_bad_password(p.login_error("not_a_role_at_all", "pw"))
    assert_bad_password(p.login_error("lookup_md5", "wrong"))


@pytest.mark.sluice_only("PgBouncer 1.18 logs auth_query's results at verbose=2")
def test_looked_up_secrets_are_not_logged(poolers, pg, lookup_roles):
    p = lookup_pooler(poolers, settings={"verbose": 2})
    for role, (_, password) in LOOKUP.items():
        with p.connect(role, password) as c:
            c.execute("SELECT 1")
        assert_bad_password(p.login_error(role, "wrong"))
    log = p.log()
    assert "login ok" in log
    for role in LOOKUP:
        secret = pg.secret(role)
        assert secret not in log
        assert secret.split("$")[-1].split(":")[0] not in log  # nor the StoredKey alone
    assert AUTH_PASSWORD not in log


@pytest.mark.sluice_only("PgBouncer 1.18 does not parse the address `all`")
def test_hba_method_with_a_looked_up_secret(poolers, pg, lookup_roles):
    from harness import write_file
    p = poolers(settings={"auth_user": AUTH_USER, "auth_query": QUERY, "auth_type": "hba"},
                users={AUTH_USER: AUTH_PASSWORD}, start=False)
    hba = p.dir / "hba.conf"
    write_file(hba, "host all lookup_md5 all md5\nhost all all all scram-sha-256\n")
    p.rewrite(settings={"auth_hba_file": str(hba)}, reload=False)
    p.start()
    for role, (_, password) in LOOKUP.items():
        with p.connect(role, password) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == role
    # SCRAM line, md5 secret: the client cannot prove it (as in PostgreSQL).
    write_file(hba, "host all all all scram-sha-256\n")
    p.reload()
    wait_until(lambda: p.log().count("SIGHUP") >= 1, 10, what="the reload")
    time.sleep(0.2)
    assert_bad_password(p.login_error("lookup_md5", LOOKUP["lookup_md5"][1]))
