"""A TCP proxy the fault tests control: put it between one daemon and Postgres, then cut it.

``cut()`` closes every proxied connection and refuses new ones (a network partition for that
daemon only); ``restore()`` lets connections through again. ``cut(hang=True)`` is a host that
vanished instead of one that refuses: new connections are accepted and then never answered, so a
client waits for its own connect timeout (``restore()`` closes them).

``latency`` (seconds) holds every chunk that long before passing it on, each way: a peer that far
away (a round trip then costs about twice that, plus the selector's millisecond granularity).
``bind`` puts the listener on another local address (the host side of a network namespace's link,
``testing/netns.py``); ``keepalive=(idle, interval, count)`` probes each accepted connection the
way Postgres probes its clients (rtx's ``tcp_keepalives_*``), so a client behind a dead link is
dropped on the server side too instead of being held open by the proxy.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import threading
import time


class TcpProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        bind: str = "127.0.0.1",
        keepalive: tuple[int, int, int] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.target = (target_host, target_port)
        self._latency = latency
        self.host = bind
        self._keepalive = keepalive
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((bind, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._hang = False
        self._held: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                if self._hang:
                    with self._lock:
                        self._held.append(client)  # accepted, never answered
                else:
                    client.close()  # refused while cut
                continue
            if self._keepalive is not None:
                idle, interval, count = self._keepalive
                client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):  # as libpq and the server do: no Nagle delay on small writes
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        held: collections.deque[tuple[float, socket.socket, bytes]] = collections.deque()  # (due, to, data)
        try:
            while True:
                timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
                for key, _ in sel.select(timeout=timeout):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    if self._latency:
                        held.append((time.monotonic() + self._latency, key.data, data))  # one delay: FIFO
                    else:
                        key.data.sendall(data)
                while held and held[0][0] <= time.monotonic():
                    _, to, data = held.popleft()
                    to.sendall(data)
                if not self._open.is_set() or self._stopped.is_set():
                    return
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self, *, hang: bool = False) -> None:
        self._hang = hang
        self._open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._open.set()
        with self._lock:
            held, self._held = self._held, []
        for s in held:
            s.close()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._listener.close()
        with self._lock:
            held, self._held = self._held, []
        for s in held:
            s.close()
