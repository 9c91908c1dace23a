"""A tiny PostgreSQL wire-protocol client for tests that need what libpq hides.

libpq (so psycopg) drops the SQLSTATE of an error that arrives while connecting or just before
the server closes the socket, and it cannot send arbitrary startup parameters. This client speaks
protocol 3.0 over a plain socket: startup with any parameters, trust / cleartext / md5 /
SCRAM-SHA-256 authentication, simple queries and cancel requests, and it keeps every
ErrorResponse's fields. Not thread-safe; one connection per object.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class ServerError(Exception):
    """An ErrorResponse; `fields` maps the one-letter field codes (S, C, M, ...) to values."""
    fields: dict
    closed: bool = False  # the other end closed the connection after sending it

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")

    @property
    def severity(self) -> str | None:
        return self.fields.get("V") or self.fields.get("S")

    def __str__(self) -> str:
        return f"{self.severity} {self.sqlstate}: {self.message}"


class ConnectionClosed(Exception):
    """The other end closed the socket without an ErrorResponse."""


@dataclass
class Result:
    rows: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    notices: list = field(default_factory=list)
    status: bytes = b""  # transaction status from ReadyForQuery: I, T or E


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def _fields(body: bytes) -> dict:
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


class PgWire:
    def __init__(self, host: str, port: int, timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._timeout = timeout
        self.params: dict[str, str] = {}
        self.backend_key: tuple[int, int] | None = None
        self._buf = b""

    # -- framing ------------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed("connection closed by peer")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_message(self) -> tuple[bytes, bytes]:
        head = self._recv_exact(5)
        kind, length = head[:1], struct.unpack("!I", head[1:])[0]
        return kind, self._recv_exact(length - 4)

    def send(self, kind: bytes, body: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)

    def _error(self, body: bytes) -> ServerError:
        err = ServerError(_fields(body))
        try:  # did the other end hang up after it?
            self.sock.settimeout(0.5)
            kind, _ = self.read_message()
        except ConnectionClosed:
            err.closed = True
        except (socket.timeout, OSError):
            pass
        else:
            self._buf = b""  # not expected; drop whatever it was
        finally:
            self.sock.settimeout(self._timeout)
        return err

    # -- startup ------------------------------------------------------------------------------

    def startup(self, user: str, database: str, password: str | None = None,
                **params: str) -> None:
        """Logs in; raises ServerError with the pooler's fields if it refuses."""
        body = struct.pack("!I", 196608) + _cstr("user") + _cstr(user) + _cstr("database") \
            + _cstr(database)
        for k, v in params.items():
            body += _cstr(k) + _cstr(v)
        body += b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        scram = None
        while True:
            kind, msg = self.read_message()
            if kind == b"E":
                raise self._error(msg)
            if kind == b"R":
                code = struct.unpack("!I", msg[:4])[0]
                if code == 0:
                    continue
                if code == 3:
                    self.send(b"p", _cstr(password or ""))
                elif code == 5:
                    inner = hashlib.md5((password or "").encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + msg[4:8]).hexdigest()
                    self.send(b"p", _cstr("md5" + outer))
                elif code == 10:
                    mechs = msg[4:].split(b"\0")
                    if b"SCRAM-SHA-256" not in mechs:
                        raise AssertionError(f"no SCRAM-SHA-256 in {mechs}")
                    scram = _Scram(password or "")
                    first = scram.client_first()
                    self.send(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!I", len(first))
                              + first)
                elif code == 11:
                    self.send(b"p", scram.client_final(msg[4:]))
                elif code == 12:
                    scram.verify_server_final(msg[4:])
                else:
                    raise AssertionError(f"unsupported auth request {code}")
            elif kind == b"S":
                k, v, _ = msg.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif kind == b"K":
                self.backend_key = struct.unpack("!II", msg)
            elif kind == b"Z":
                return
            elif kind == b"N":
                continue

    # -- queries ------------------------------------------------------------------------------

    def query(self, sql: str) -> Result:
        """Runs a simple query; raises ServerError for an ErrorResponse (after ReadyForQuery)."""
        self.send(b"Q", _cstr(sql))
        return self.result()

    def result(self) -> Result:
        """Reads the answer to a query already sent, up to ReadyForQuery (as `query`)."""
        res, err = Result(), None
        while True:
            try:
                kind, msg = self.read_message()
            except ConnectionClosed:
                if err is not None:
                    err.closed = True
                    raise err from None
                raise
            if kind == b"D":
                n = struct.unpack("!H", msg[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", msg[pos:pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(msg[pos:pos + ln].decode(errors="replace"))
                        pos += ln
                res.rows.append(tuple(row))
            elif kind == b"C":
                res.tags.append(msg.rstrip(b"\0").decode())
            elif kind == b"E":
                if err is None:
                    err = ServerError(_fields(msg))
            elif kind == b"N":
                res.notices.append(_fields(msg))
            elif kind == b"S":
                k, v, _ = msg.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif kind == b"Z":
                res.status = msg
                if err is not None:
                    raise err
                return res

    def wait_error(self, timeout: float) -> ServerError | None:
        """Waits, sending nothing, for the pooler to report an error to this idle client (as
        before closing it). Returns the ErrorResponse, or None if it just closed the socket;
        raises socket.timeout if nothing came."""
        self.sock.settimeout(timeout)
        try:
            while True:
                kind, msg = self.read_message()
                if kind == b"E":
                    err = ServerError(_fields(msg))
                    try:
                        self.read_message()
                    except (ConnectionClosed, OSError):
                        err.closed = True
                    return err
                # ParameterStatus or NoticeResponse may come first; skip them
        except (ConnectionClosed, ConnectionResetError):
            return None
        finally:
            self.sock.settimeout(self._timeout)

    def close(self) -> None:
        try:
            self.send(b"X", b"")
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "PgWire":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(host: str, port: int, user: str, database: str, password: str | None = None,
            timeout: float = 10, **params: str) -> PgWire:
    conn = PgWire(host, port, timeout)
    try:
        conn.startup(user, database, password, **params)
    except BaseException:
        conn.sock.close()
        raise
    return conn


def login_error(host: str, port: int, user: str, database: str, password: str | None = None,
                timeout: float = 10, **params: str) -> ServerError:
    """Logs in expecting a refusal; returns the ErrorResponse (fails if the login succeeds)."""
    try:
        conn = connect(host, port, user, database, password, timeout, **params)
    except ServerError as e:
        return e
    conn.close()
    raise AssertionError(f"login as {user} to {database} unexpectedly succeeded")


def cancel(host: str, port: int, key: tuple[int, int]) -> None:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(struct.pack("!IIII", 16, 80877102, *key))
        s.recv(1)  # the other end just closes


class _Scram:
    """Client side of SCRAM-SHA-256 without channel binding (RFC 5802, RFC 7677)."""

    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()

    def client_first(self) -> bytes:
        self.first_bare = f"n=,r={self.nonce}"
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise AssertionError("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{final_bare}".encode()
        sig = hmac.new(stored_key, self.auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        self.server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        expected = hmac.new(self.server_key, self.auth_message, "sha256").digest()
        got = base64.b64decode(server_final.decode().split("v=", 1)[1])
        if not hmac.compare_digest(expected, got):
            raise AssertionError("server signature does not verify")
