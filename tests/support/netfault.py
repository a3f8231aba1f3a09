"""A TCP proxy in front of a lab daemon that cuts the network at a chosen moment.

The plugin reaches the target through it (a docker context pointing at the proxy), so
a test can make the target unreachable in the middle of a real migration: while the
checkpoint streams to it (after so many bytes of an archive upload), or at the restore
request (before forwarding it: the daemon never restores; or after: the daemon restores
but the answer is lost). After a cut every connection is closed and new ones are
refused for `outage` seconds, then the proxy forwards again, as a network that comes
back would. The trigger is read off the HTTP requests passing through, so no timing
guess is involved.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

ARCHIVE_PUT = re.compile(rb"PUT /v[\d.]+/containers/[^/ ]+/archive\?")
RESTORE = re.compile(rb"POST /v[\d.]+/containers/[^/ ]+/start\?checkpoint=")


@dataclass
class Cut:
    """When to cut: after `after_bytes` of an archive upload, or at the restore request
    (`restore`: "drop" before forwarding it, "lose-answer" after)."""
    after_bytes: int = 0
    restore: str = ""
    outage: float = 3.0
    # a wedged daemon: the first request matching this (bytes regex) is forwarded but its
    # answer never comes, and for `outage` seconds every connection is accepted and never
    # answered (connections are not refused: the daemon's socket still listens)
    hang: bytes = b""


@dataclass
class FaultyProxy:
    upstream: tuple[str, int]
    cut: Cut
    port: int = 0
    cut_at: float = 0.0  # monotonic time of the cut, 0 until it happened
    _listener: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _muted: set = field(default_factory=set)  # client sockets whose answers are swallowed

    def __enter__(self) -> FaultyProxy:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._listener:
            self._listener.close()
        self._close_all()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def in_outage(self) -> bool:
        return bool(self.cut_at) and time.monotonic() - self.cut_at < self.cut.outage

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.in_outage():
                if self.cut.hang:  # wedged: accepted, read, never answered
                    with self._lock:
                        self._conns.append(client)
                    threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                else:
                    client.close()  # unreachable: the connection is refused at once
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    def _trip(self) -> None:
        if not self.cut_at:
            self.cut_at = time.monotonic()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        _shut(*conns)
        for s in conns:
            s.close()

    def _swallow(self, client: socket.socket) -> None:
        try:
            while client.recv(65536):
                pass
        except OSError:
            pass

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if dst not in self._muted:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        """Client -> daemon, watching the requests for the trigger."""
        uploading = 0  # bytes forwarded since an archive upload began on this connection
        try:
            while data := client.recv(65536):
                if self.in_outage():
                    break
                if self.cut_at:  # one cut only: afterwards the network works again
                    server.sendall(data)
                    continue
                if self.cut.hang and re.search(self.cut.hang, data):
                    server.sendall(data)  # the daemon does it; its answer never comes
                    self._muted.add(client)
                    self.cut_at = time.monotonic()
                    self._swallow(client)
                    return
                if self.cut.restore and RESTORE.search(data):
                    if self.cut.restore == "drop":
                        self._trip()
                        return
                    server.sendall(data)
                    time.sleep(0.2)  # the request is on its way; its answer will be lost
                    self._trip()
                    return
                if self.cut.after_bytes:
                    if ARCHIVE_PUT.search(data):
                        uploading = 1
                    if uploading:
                        uploading += len(data)
                        if uploading > self.cut.after_bytes:
                            self._trip()
                            return
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client, server)


def _shut(*socks: socket.socket) -> None:
    """Both directions of each socket, whatever state it is in."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
