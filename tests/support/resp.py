"""A minimal Redis (RESP2) client for tests: enough for PING, SET, GET, DBSIZE, pipelines."""

from __future__ import annotations

import socket
import time


class Redis:
    def __init__(self, host: str, port: int, timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = self.sock.makefile("rb")

    @classmethod
    def over(cls, sock: socket.socket, timeout: float = 10) -> Redis:
        """A client on an already connected socket (a relay's, for a server not reachable
        directly)."""
        self = cls.__new__(cls)
        sock.settimeout(timeout)
        self.sock, self.buf = sock, sock.makefile("rb")
        return self

    def close(self) -> None:
        self.buf.close()
        self.sock.close()

    @staticmethod
    def encode(*args: str | bytes | int) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def read(self):
        line = self.buf.readline()
        if not line:
            raise ConnectionError("connection closed by server")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise ValueError(f"bad RESP line {line!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self.read()

    def pipeline(self, commands: list[tuple]) -> list:
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        return [self.read() for _ in commands]


def try_redis(address: str, port: int) -> Redis | None:
    """A client of the Redis server at address:port if it answers PING, else None (after a
    short pause: for wait_until)."""
    try:
        client = Redis(address, port, timeout=2)
        if client.call("PING") == "PONG":
            return client
    except (OSError, RuntimeError):
        time.sleep(0.2)
    return None
