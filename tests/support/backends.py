"""Real backends on ephemeral loopback ports, in threads of the test process.

* :class:`HTTPBackend` — an HTTP/1.1 keep-alive server (``http.server``) that records
  every request and answers with a per-test ``respond`` function (default: echo JSON).
* :class:`RawBackend` — a bare TCP server whose per-connection function writes whatever
  bytes a test needs: interim responses, garbage, resets, hangs.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["HTTPBackend", "RawBackend", "Reply", "Seen", "cacheable", "echo", "read_head",
           "read_request"]


@dataclass
class Seen:
    """A request as a backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # id of the TCP connection it came on
    peer_cert: dict | None = None  # the client certificate, over TLS with one required
    server_name: str | None = None  # the SNI name the client sent, over TLS

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k, _ in self.headers)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""
    reason: str | None = None
    length: bool = True  # send Content-Length for bytes bodies (else chunked)


def echo(seen: Seen) -> Reply:
    data = {"method": seen.method, "target": seen.target,
            "headers": seen.headers, "body_bytes": len(seen.body)}
    return Reply(200, [("Content-Type", "application/json")], json.dumps(data).encode())


def cacheable(seen: Seen) -> Reply:
    """Fresh for a minute (``max-age=60``); the body is the request target."""
    return Reply(200, [("Cache-Control", "max-age=60")], seen.target.encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.server.backend.failed_handshakes += 1
                raise
        super().setup()

    def handle_one_request(self):
        # Same as BaseHTTPRequestHandler's, for any method name.
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._serve()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.close_connection = True

    def _read_chunked(self) -> bytes:
        """A chunked request body; one cut off (the proxy aborted it) is never recorded."""
        parts = []
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                raise ConnectionError(f"chunked body cut off at {line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _serve(self):
        backend = self.server.backend
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        # self.path has a leading "//" collapsed (CPython gh-87389): use the raw line.
        target = self.raw_requestline.split(b" ")[1].decode("latin-1")
        seen = Seen(self.command, target, list(self.headers.items()), body,
                    id(self.connection))
        if hasattr(self.connection, "getpeercert"):
            seen.peer_cert = self.connection.getpeercert() or None
            seen.server_name = getattr(self.connection, "sni", None)
        backend._record(seen)
        reply = backend.respond(seen)
        self.send_response_only(reply.status, reply.reason)
        names = {k.lower() for k, _ in reply.headers}
        for k, v in reply.headers:
            self.send_header(k, v)
        chunked = "transfer-encoding" in names
        if chunked:
            pass
        elif isinstance(reply.body, bytes):
            if reply.length and "content-length" not in names and reply.status not in (204, 304):
                self.send_header("Content-Length", str(len(reply.body)))
            elif not reply.length:
                chunked = True
                self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in names:
            chunked = True
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD" or reply.status in (204, 304):
            return
        pieces = [reply.body] if isinstance(reply.body, bytes) else reply.body
        try:
            for piece in pieces:
                if chunked:
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError) as exc:
            backend.aborted.append(exc)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: HTTPBackend

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a refused handshake is expected
            super().handle_error(request, client_address)


class HTTPBackend:
    """An HTTP/1.1 server on 127.0.0.1:<free port>, recording what it receives.

    :param respond: builds the reply to each request; default echoes it as JSON.
    """

    def __init__(self, respond: Callable[[Seen], Reply] = echo, name: str = "",
                 port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.name = name
        self.seen: list[Seen] = []
        self.aborted: list[BaseException] = []
        self.failed_handshakes = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        if tls is not None:  # an HTTPS backend: the handshake happens in each handler
            def remember_sni(sock, name, _context):
                sock.sni = name
            tls.sni_callback = remember_sni
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._server.backend = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    @property
    def count(self) -> int:
        return len(self.seen)

    def paths(self) -> Counter:
        return Counter(s.target for s in self.seen)

    def start(self) -> HTTPBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HTTPBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RawBackend:
    """A TCP server on 127.0.0.1:<free port>; ``handle(conn, first_request)`` per connection.

    ``first_request`` is the bytes of the first request head (up to the blank line)
    plus whatever body bytes arrived with it; ``handle`` owns the socket afterwards.
    """

    def __init__(self, handle: Callable[[socket.socket, bytes], None]) -> None:
        self.handle = handle
        self.connections = 0
        self.requests: list[bytes] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._conns: list[socket.socket] = []

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = read_head(conn)
            if data is None:
                return
            self.requests.append(data)
            self.handle(conn, data)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def start(self) -> RawBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> RawBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_head(conn: socket.socket, data: bytes = b"") -> bytes | None:
    """Bytes from ``conn`` up to the end of a request head (and whatever came with it);
    None if the peer closed first."""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def read_request(conn: socket.socket, first: bytes) -> tuple[bytes, bytes]:
    """(head, body) of one request whose head is in ``first`` (Content-Length bodies)."""
    head, _, rest = first.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head, rest[:length]
