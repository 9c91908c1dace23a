"""A client that reads a large result slowly: the pooler stops reading from the server instead of
buffering the result (write watermarks), the result still arrives whole and in order, and other
clients are served meanwhile."""

import time
from pathlib import Path

from harness import IS_SLUICE

ROWS = 40000
WIDTH = 1000  # about 40 MB of DataRows


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stall_then_read_slowly(p, w, during_stall=None) -> None:
    """Asks `w` (logged in) for the 40 MB result, reads nothing for 1.5 s while checking that the
    pooler's RSS does not grow by the result, runs `during_stall`, then reads every row slowly,
    checking order and size, and one more query."""
    w.query("SELECT 1")  # a server exists, buffers warmed up
    before = rss_kb(p.proc.pid)
    w.send(b"Q", f"SELECT g, repeat('x', {WIDTH}) FROM generate_series(1, {ROWS}) g\0"
           .encode())
    time.sleep(1.5)  # read nothing: PostgreSQL could send all 40 MB by now
    stalled = rss_kb(p.proc.pid)
    print(f"RSS {before} kB -> {stalled} kB while the client reads nothing")
    if IS_SLUICE:
        # At most the client's write watermark (512 KiB) plus a server read buffer, not the
        # result: the server is paused until the client drains.
        assert stalled - before < 16 * 1024, (before, stalled)  # room for sanitizer shadow memory
    if during_stall:
        during_stall()
    n = 0
    while True:
        kind, body = w.read_message()
        if kind == b"D":
            n += 1
            # DataRow: int16 count, then int32 length + bytes per column; check order and size.
            first_len = int.from_bytes(body[2:6], "big")
            assert int(body[6:6 + first_len]) == n
            second_len = int.from_bytes(body[6 + first_len:10 + first_len], "big")
            assert second_len == WIDTH
            if n % 4000 == 0:
                time.sleep(0.05)  # keep reading slowly
        elif kind == b"Z":
            break
    assert n == ROWS
    assert w.query("SELECT 2").rows[0][0] == "2"
    w.close()


def test_slow_reader_of_a_large_result_is_held_back_not_buffered(poolers):
    p = poolers(settings={"default_pool_size": 2})

    def others_are_served():  # the pool's other server is still there for everyone else
        with p.connect() as other:
            assert other.execute("SELECT 41 + 1").fetchone()[0] == 42
    stall_then_read_slowly(p, p.wire(timeout=30), others_are_served)


def test_stalled_reader_does_not_hold_up_others_and_its_server_comes_back(poolers, pg):
    """A client stops reading a large result while other clients keep committing on the pool's
    other server; then it vanishes (RST). Its server is not leaked: it is closed (it was in the
    middle of a result) and the pool settles back to PostgreSQL's own backends."""
    from faultlib import Ledger, assert_settled
    from faultproxy import _rst

    p = poolers(settings={"default_pool_size": 2, "query_wait_timeout": 30})
    w = p.wire(timeout=30)
    w.query("SELECT 1")
    w.send(b"Q", f"SELECT g, repeat('x', {WIDTH}) FROM generate_series(1, {ROWS}) g\0"
           .encode())
    w.read_message()  # RowDescription: the result is on its way, and the reader stops here
    ledger = Ledger(p, pg, "ledger_stalled_reader", n=3).start()
    try:
        ledger.wait_commits(100)
        if IS_SLUICE:
            rows = [r for r in p.admin("SHOW POOLS") if r["database"] == "appdb"]
            assert rows[0]["sv_active"] >= 1, rows  # the stalled reader still holds its server
    finally:
        _rst(w.sock)
        ledger.stop()
    assert not ledger.errors(), ledger.summary()
    ledger.assert_durable()
    assert_settled(p, pg, 2)
