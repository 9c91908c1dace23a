"""Bad input closes only the connection that sent it, with a clear error."""

import struct

import pgwire
import pytest

from harness import IS_SLUICE


def _expect_fatal(w, sqlstate_prefix="08"):
    err = w.wait_error(5)
    assert err is not None, "no error before the connection closed"
    assert err.severity == "FATAL", err
    if IS_SLUICE:
        assert err.sqlstate.startswith(sqlstate_prefix), err
    return err


def test_unknown_message_type_closes_only_that_client(poolers):
    p = poolers()
    with p.connect() as bystander, p.wire() as w:
        w.send(b"!", b"garbage")
        err = _expect_fatal(w)
        if IS_SLUICE:
            assert "unknown message type" in err.message
        assert bystander.execute("SELECT 1").fetchone()[0] == 1


def test_oversized_message_names_max_packet_size(poolers):
    p = poolers(settings={"max_packet_size": 4096})
    with p.connect() as bystander, p.wire() as w:
        # A Query whose declared length is far beyond max_packet_size.
        w.sock.sendall(b"Q" + struct.pack("!I", 1_000_000) + b"SELECT 1")
        err = _expect_fatal(w)
        if IS_SLUICE:
            assert "max_packet_size" in err.message and "4096" in err.message, err
        assert bystander.execute("SELECT 2").fetchone()[0] == 2


def test_invalid_length_closes_only_that_client(poolers):
    p = poolers()
    with p.connect() as bystander, p.wire() as w:
        w.sock.sendall(b"Q" + struct.pack("!I", 2))  # shorter than the length field itself
        _expect_fatal(w)
        assert bystander.execute("SELECT 3").fetchone()[0] == 3


@pytest.mark.sluice_only("PgBouncer accepts a startup packet of up to its pkt_buf")
def test_oversized_startup_packet(poolers):
    p = poolers()
    import socket
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(struct.pack("!I", 1_000_000) + struct.pack("!I", 196608))
    data = s.recv(4096)
    assert data[:1] == b"E", data
    assert b"08P01" in data and b"startup packet" in data, data
    s.close()
