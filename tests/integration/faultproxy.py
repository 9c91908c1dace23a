"""A TCP proxy that injects network faults between the pooler and PostgreSQL.

Point a pooler's database entry at `FaultProxy(pg.port).port` instead of PostgreSQL's port, then:

- `latency(seconds)`: every chunk waits that long before it is forwarded (both directions);
- `reset_all()`: every connection through the proxy is reset (RST, via SO_LINGER 0) on both sides,
  as when a firewall or a dying host drops them;
- `half_close_all()`: the proxy shuts down its sending side towards the pooler (the pooler reads
  EOF) while it keeps forwarding what the pooler sends, as a peer that closed only one way;
- `stall()` / `resume()`: existing connections stop forwarding both ways (bytes wait in socket
  buffers, nobody is told), then go on; nothing is lost;
- `partition()` / `heal()`: `stall()` plus every new connection is accepted and held silently
  (TCP is up, no byte ever comes back), as a black hole: a login through it can only time out.
  `partition(reset_existing=True)` resets the existing connections instead of stalling them.
  On `heal()` held connections are forwarded (or dropped with `drop_held=True`).

Threads, no asyncio: one accepting thread and two pumps per connection, each blocking in recv()
with a short timeout so that `close()` ends them. `active` is how many connections are open.
Thread-safe; one proxy per test.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from harness import free_port


def _rst(sock: socket.socket) -> None:
    """Closes sock with a RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One proxied connection: downstream (the pooler's side) and upstream (PostgreSQL's)."""

    def __init__(self, proxy: "FaultProxy", down: socket.socket):
        self.proxy = proxy
        self.down = down
        self.up: socket.socket | None = None
        self.closed = threading.Event()
        self.half_closed = False
        self._lock = threading.Lock()
        self._pumps_left = 2

    def run(self) -> None:
        p = self.proxy
        # A partition holds new connections before they reach PostgreSQL: the pooler's login
        # hangs until its own timeout, as behind a black hole.
        while not p._flowing.wait(0.1):
            if self.closed.is_set() or p._closing.is_set() or self._peer_gone(self.down):
                self.close()
                return
        if p._drop_held_until > time.monotonic():
            self.reset()
            return
        try:
            self.up = socket.create_connection(("127.0.0.1", p.target), timeout=5)
        except OSError:
            self.reset()
            return
        for s in (self.down, self.up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(0.2)
        threading.Thread(target=self._pump, args=(self.down, self.up, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.up, self.down, True), daemon=True).start()

    @staticmethod
    def _peer_gone(sock: socket.socket) -> bool:
        """True once the pooler closed a held connection (EOF or reset)."""
        try:
            sock.setblocking(False)
            try:
                data = sock.recv(1, socket.MSG_PEEK)
                return data == b""
            except BlockingIOError:
                return False
            finally:
                sock.setblocking(True)
        except OSError:
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, to_pooler: bool) -> None:
        p = self.proxy
        try:
            while not self.closed.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                while not p._flowing.wait(0.1):
                    if self.closed.is_set():
                        return
                if p._latency:
                    time.sleep(p._latency)
                if to_pooler and self.half_closed:
                    continue  # the pooler's side was shut down for writing: drop what comes
                self._sendall(dst, data)
        except OSError:
            self.reset()
        finally:
            with self._lock:
                self._pumps_left -= 1
                done = self._pumps_left == 0
            if done:
                self.close()

    def _sendall(self, dst: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.closed.is_set():
            try:
                n = dst.send(view)
            except socket.timeout:
                continue
            view = view[n:]

    def half_close(self) -> None:
        self.half_closed = True
        try:
            self.down.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _rst(self.down)
        if self.up is not None:
            _rst(self.up)
        self.proxy._forget(self)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.down, self.up):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.proxy._forget(self)


class FaultProxy:
    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closing = threading.Event()
        self._latency = 0.0
        self._drop_held_until = 0.0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self.accepted = 0  # connections the pooler opened through the proxy, ever
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                down, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            link = _Link(self, down)
            with self._lock:
                self._links.add(link)
                self.accepted += 1
            threading.Thread(target=link.run, daemon=True).start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    @property
    def active(self) -> int:
        return len(self._snapshot())

    # -- faults -----------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        self._latency = seconds

    def reset_all(self) -> int:
        links = self._snapshot()
        for link in links:
            link.reset()
        return len(links)

    def half_close_all(self) -> int:
        links = self._snapshot()
        for link in links:
            link.half_close()
        return len(links)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def partition(self, reset_existing: bool = False) -> None:
        self._flowing.clear()
        if reset_existing:
            self.reset_all()

    def heal(self, drop_held: bool = False) -> None:
        if drop_held:
            # Connections held during the partition are reset instead of forwarded late.
            self._drop_held_until = time.monotonic() + 1.0
        self._flowing.set()

    def close(self) -> None:
        self._closing.set()
        self._flowing.set()
        try:
            self._listener.close()
        except OSError:
            pass
        for link in self._snapshot():
            link.reset()
        self._thread.join(2)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
