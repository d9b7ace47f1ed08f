"""Loopback helpers: reserved ports, polling with a deadline, raw HTTP exchanges.

The benchmarks (bench/common.py) use these too: one ``reserve_port``, one ``wait_port``.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

__all__ = ["RawResponse", "accepts", "raw_exchange", "read_response", "reserve_port",
           "wait_port", "wait_until"]


_handed_out: set[int] = set()


def reserve_port(host: str = "127.0.0.1") -> int:
    """A port a subprocess can bind with SO_REUSEADDR and no one else will get soon.

    Binding port 0 and closing hands the number back to the kernel at once (the race
    cachecontrol's get_free_port() has): the next bind(0), ours or a subprocess's, may
    get it again. So the server end closes first: its side of the connection, bound to
    the port, waits in TIME_WAIT for about a minute, and meanwhile the kernel gives the
    port out neither to bind(0) nor as an ephemeral port, while servers with
    SO_REUSEADDR (gunicorn, gevent, nginx) can still bind it and a connection to it is
    refused. (Closing the client end first leaves the client's port in TIME_WAIT and
    protects nothing: bind(0) then returned reserved ports hundreds of times in 40 000
    tries.) A number is also never handed out twice in one test session.
    """
    while True:
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, 0))
            server.listen(1)
            port = server.getsockname()[1]
            with socket.create_connection((host, port)) as client:
                accepted, _ = server.accept()
                accepted.close()  # the active close: TIME_WAIT lands on `port`
                client.recv(1)  # the FIN has arrived; our close completes the exchange
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``port`` now."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition"):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on ``port``; fail after ``timeout`` s."""
    wait_until(lambda: accepts(port, host), timeout, 0.05, f"something listening on port {port}")


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes = b""
    closed: bool = False  # the server closed the connection after this response
    extra: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        import json

        return json.loads(self.body)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self.fill():
                raise ConnectionError(f"connection closed before {marker!r}: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise ConnectionError(f"connection closed {n - len(self.buf)} bytes early")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self.fill():
            pass
        out, self.buf = self.buf, b""
        return out


def read_response(reader: _Reader, method: str = "GET") -> RawResponse:
    """Read one HTTP/1.1 response, honouring its framing (CL, chunked, or close)."""
    head = reader.until(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
    assert m, f"not a status line: {lines[0]!r}"
    status = int(m.group(1))
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    resp = RawResponse(status, m.group(2), headers, b"", head)  # type: ignore[arg-type]
    te = (resp.header("Transfer-Encoding") or "").lower()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in te:
        parts = []
        while True:
            size = int(reader.until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                reader.until(b"\r\n")
                break
            parts.append(reader.exactly(size))
            reader.until(b"\r\n")
        body = b"".join(parts)
    elif resp.header("Content-Length") is not None:
        body = reader.exactly(int(resp.header("Content-Length")))
    else:
        body = reader.rest()
    resp.body = body
    resp.closed = (resp.header("Connection") or "").lower() == "close"
    return resp


def raw_exchange(port: int, *requests: bytes, methods: list[str] | None = None,
                 timeout: float = 10.0, host: str = "127.0.0.1") -> list[RawResponse]:
    """Send raw request bytes on one connection and read one response per request."""
    out = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = _Reader(sock)
        for i, data in enumerate(requests):
            sock.sendall(data)
            resp = read_response(reader, (methods or [])[i] if methods else
                                 data.split(b" ", 1)[0].decode())
            out.append(resp)
            if resp.closed:
                break
    return out
