"""Each client keeps its own session parameters although it shares one server with others."""

import pytest

SETTINGS_SQL = ("SELECT current_setting('TimeZone'), current_setting('DateStyle'), "
                "current_setting('application_name'), current_setting('client_encoding'), "
                "pg_backend_pid()")

A = {"TimeZone": "Asia/Tokyo", "DateStyle": "German, DMY", "application_name": "client_a",
     "client_encoding": "LATIN1"}
B = {"TimeZone": "America/New_York", "DateStyle": "SQL, MDY", "application_name": "client_b",
     "client_encoding": "UTF8"}


def expected(values: dict) -> tuple:
    return (values["TimeZone"], values["DateStyle"], values["application_name"],
            values["client_encoding"])


def check_interleaved(run_a, run_b, rounds: int = 4) -> None:
    """run_a/run_b run SETTINGS_SQL in a transaction of their client and return the row."""
    pids = set()
    for i in range(rounds):
        for run, want in ((run_a, A), (run_b, B)) if i % 2 == 0 else ((run_b, B), (run_a, A)):
            row = run()
            assert tuple(row[:4]) == expected(want), f"round {i}: got {row[:4]}"
            pids.add(row[4])
    assert len(pids) == 1, f"clients did not share the one server: {pids}"


@pytest.fixture
def one_server(poolers):
    return poolers(settings={"pool_mode": "transaction", "default_pool_size": 1})


def test_startup_parameters_isolated(one_server):
    """Parameters sent in the startup packet follow the client onto the shared server."""
    with one_server.wire(**A) as a, one_server.wire(**B) as b:
        check_interleaved(lambda: a.query(SETTINGS_SQL).rows[0],
                          lambda: b.query(SETTINGS_SQL).rows[0])
        # The pooler reports the client's own values in ParameterStatus.
        for conn, want in ((a, A), (b, B)):
            for key in ("TimeZone", "DateStyle", "application_name", "client_encoding"):
                assert conn.params.get(key) == want[key], (key, conn.params)


def test_set_parameters_isolated(one_server):
    """Parameters changed with SET outside a transaction stick to the client that set them."""
    with one_server.connect(application_name="start_a") as a, \
            one_server.connect(application_name="start_b") as b:
        for conn, values in ((a, A), (b, B)):
            for key, value in values.items():
                conn.execute(f"SET {key} = '{value}'")

        def run(conn):
            with conn.transaction():
                return conn.execute(SETTINGS_SQL).fetchone()
        check_interleaved(lambda: run(a), lambda: run(b))


def test_set_in_rolled_back_transaction_does_not_stick(one_server):
    with one_server.connect(application_name="a0") as a, \
            one_server.connect(application_name="b0") as b:
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("BEGIN")
        a.execute("SET TimeZone = 'Europe/Berlin'")
        a.execute("ROLLBACK")
        b.execute("SET TimeZone = 'America/New_York'")
        for _ in range(2):
            assert b.execute("SHOW TimeZone").fetchone()[0] == "America/New_York"
            assert a.execute("SHOW TimeZone").fetchone()[0] == "Asia/Tokyo"


def test_server_reset_query_always_resets_between_transactions(poolers):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 1,
                          "server_reset_query_always": 1})
    with p.connect() as a, p.connect() as b:
        a.execute("SET statement_timeout = '123s'")
        assert b.execute("SHOW statement_timeout").fetchone()[0] != "123s"


def test_application_name_add_host(poolers):
    p = poolers(settings={"application_name_add_host": 1})
    with p.connect(application_name="billing") as c:
        name = c.execute("SELECT current_setting('application_name')").fetchone()[0]
    assert name.startswith("billing - 127.0.0.1("), name
