"""COPY in both directions through the pooler, ~10 MB each way, content verified."""

import hashlib
import random
import string

import pytest

ROWS = 100_000


@pytest.fixture
def copy_table(pg):
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP TABLE IF EXISTS copy_t")
        c.execute("CREATE TABLE copy_t (id int PRIMARY KEY, payload text NOT NULL)")
    yield "copy_t"
    with pg.connect("appdb", user="sluice_md5") as c:
        c.execute("DROP TABLE copy_t")


def make_data() -> bytes:
    rnd = random.Random(42)
    alphabet = string.ascii_letters + string.digits
    lines = [f"{i}\t{''.join(rnd.choices(alphabet, k=rnd.randint(60, 140)))}\n"
             for i in range(ROWS)]
    return "".join(lines).encode()


def test_copy_in_and_out(poolers, pg, copy_table):
    data = make_data()
    assert len(data) > 9_000_000
    p = poolers(settings={"default_pool_size": 1})
    with p.connect() as c:
        with c.transaction():
            with c.cursor().copy("COPY copy_t (id, payload) FROM STDIN") as copy:
                for off in range(0, len(data), 65536):
                    copy.write(data[off:off + 65536])
        # Another client on the same single server in between must see a consistent table.
        with p.connect() as other:
            assert other.execute("SELECT count(*) FROM copy_t").fetchone()[0] == ROWS
        out = bytearray()
        with c.cursor().copy("COPY (SELECT id, payload FROM copy_t ORDER BY id) TO STDOUT") \
                as copy:
            for chunk in copy:
                out += chunk
        assert c.execute("SELECT 1").fetchone()[0] == 1  # session still in sync afterwards
    assert len(out) == len(data)
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    # And PostgreSQL itself agrees on what was stored.
    with pg.connect("appdb") as direct:
        total = direct.execute("SELECT sum(length(payload)) FROM copy_t").fetchone()[0]
    assert total == sum(len(line.split(b"\t")[1]) - 1 for line in data.splitlines(True))


def test_copy_error_keeps_the_pool_usable(poolers, copy_table):
    p = poolers(settings={"default_pool_size": 1})
    with p.connect() as c:
        with pytest.raises(Exception):
            with c.transaction():
                with c.cursor().copy("COPY copy_t (id, payload) FROM STDIN") as copy:
                    copy.write(b"1\tok\nnot-a-number\tbad\n")
        assert c.execute("SELECT count(*) FROM copy_t").fetchone()[0] == 0
    with p.connect() as c2:
        assert c2.execute("SELECT 1").fetchone()[0] == 1
