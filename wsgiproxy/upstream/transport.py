"""The urllib3 connection pool and connection the proxy uses to talk to hosts.

What a proxy needs that urllib3's defaults do not do:

* **Interim responses.** ``http.client`` skips ``100 Continue`` but takes any other 1xx
  (``103 Early Hints``) as the final response; the real response then stays unread in a
  pooled connection and is handed to the *next* request on it. :class:`FinalResponse`
  reads past every 1xx to the final response (CPython gh-88926 / bpo-44721).
* **Byte-exact targets.** ``HTTPConnectionPool.urlopen`` percent-normalises a target
  (``%2f`` becomes ``%2F``). The caller hands ``urlopen`` the raw target as a keyword
  argument too (urllib3 passes extra keywords on to ``_make_request``, retries
  included), and :meth:`UpstreamConnectionPool._make_request` sends that one.
* **One name lookup for many connections.** urllib3 looks the host up for every new
  connection, which under gevent queued a burst of them for seconds; the pool's
  :class:`~wsgiproxy.upstream.addresses.HostAddresses` says where its connections go,
  and :meth:`_ProxyConnection._new_conn` connects there.
* **A record of attempts.** urllib3 retries inside ``urlopen``; the pool writes each
  attempt and how it ended into the :class:`AttemptLog` handed over the same way, for
  the access log and the metrics.
"""

from __future__ import annotations

import http.client
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import SKIP_HEADER
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from ..limits import MAX_RESPONSE_HEADERS, MAX_RESPONSE_LINE_BYTES
from .addresses import HostAddresses
from .failures import Outcome, classify
from .retry import RETRYABLE_STATUSES

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse

    _ConnectionBase = HTTPConnection
    _PoolBase = HTTPConnectionPool
else:
    _ConnectionBase = _PoolBase = object

__all__ = ["AttemptLog", "FinalResponse", "UpstreamConnection", "UpstreamConnectionPool",
           "UpstreamHTTPSConnection", "UpstreamHTTPSConnectionPool"]

logger = logging.getLogger(__name__)


class AttemptLog(Protocol):
    """Where the attempts of one client request are written
    (:class:`~wsgiproxy.exchange.Exchange` is one)."""

    def attempted(self, host: str, outcome: str, status: int = 0) -> None: ...

    def sent(self, at: float) -> None: ...

    def answered(self, at: float) -> None: ...

    def broke_off(self, outcome: str) -> None: ...




class _Fields(http.client.HTTPMessage):
    """The header fields of a response, as urllib3 and http.client read them.

    ``email.message.Message`` runs every read through its policy object; the fields
    here are already decoded ``str`` pairs, for which that policy returns them as they
    are, so reads go straight to the list.
    """

    def items(self) -> list[tuple[str, str]]:
        return list(self._headers)  # type: ignore[attr-defined]

    def get(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        for key, value in self._headers:  # type: ignore[attr-defined]
            if key.lower() == name:
                return value
        return failobj


class FinalResponse(http.client.HTTPResponse):
    """An ``http.client`` response that reads past interim (1xx) responses and parses
    its header section directly.

    ``HTTPResponse.begin`` stops at any 1xx but 100, and parses headers with the
    ``email`` package, which was the largest single cost of a proxied request. This
    ``begin`` is the standard library's with both changed; everything it sets, and the
    ``HTTPMessage`` urllib3 reads, are the same.
    """

    #: The header fields as the host sent them, in its order (urllib3's
    #: ``HTTPHeaderDict`` groups repeats of a name together).
    fields: list[tuple[str, str]]

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            # 101 ends HTTP on the connection and is final (the answer to a WebSocket
            # handshake; unasked, the adapter refuses it); every other 1xx is interim.
            if not 100 <= status < 200 or status == 101:
                break
            interim = self._read_fields()
            logger.debug("skipped interim response %s (%d fields)", status, len(interim))
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        message = _Fields()
        message._headers = self.fields = self._read_fields()
        self.headers = self.msg = message
        coding = message.get("transfer-encoding")
        self.chunked = bool(coding) and coding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = message.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _read_fields(self) -> list[tuple[str, str]]:
        """Header lines up to the blank line; an obs-fold becomes a space (RFC 9112 §5.2)."""
        fields: list[tuple[str, str]] = []
        readline = self.fp.readline
        while True:
            line = readline(MAX_RESPONSE_LINE_BYTES + 1)
            if len(line) > MAX_RESPONSE_LINE_BYTES:
                raise http.client.LineTooLong("header line")
            if line in (b"\r\n", b"\n", b""):
                return fields
            if line[:1] in (b" ", b"\t"):
                if not fields:
                    raise http.client.HTTPException("folded line before any header")
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
                continue
            raw_name, colon, raw_value = line.partition(b":")
            if not colon or not raw_name.strip():
                raise http.client.HTTPException(f"invalid header line {line[:80]!r}")
            fields.append((raw_name.strip().decode("latin-1"),
                           raw_value.strip(b" \t\r\n").decode("latin-1")))
            if len(fields) > MAX_RESPONSE_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_RESPONSE_HEADERS} headers")


class _ProxyConnection(_ConnectionBase):
    """What the proxy's connections do, over plain HTTP or TLS: skip interim responses,
    write validated header lines once, note when a request has been sent."""

    response_class = FinalResponse

    #: Where this connection goes, handed over by its pool; without it (a connection
    #: made elsewhere), urllib3 connects as it does.
    addresses: HostAddresses | None = None

    def _new_conn(self) -> socket.socket:
        """urllib3's connect to the pool's :class:`HostAddresses` instead of a lookup of
        its own: the same socket options, timeout, source address and errors, each
        address tried in turn."""
        if self.addresses is None:
            return super()._new_conn()
        try:
            addresses = self.addresses.resolve()
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        failure: OSError = OSError("no address")
        for family, sockaddr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                timeout: Any = self.timeout  # urllib3 may leave its "default" sentinel
                if timeout is not _DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
            except OSError as error:
                sock.close()
                failure = error
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(failure, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. "
                      f"(connect timeout={self.timeout})") from failure
        raise NewConnectionError(
            self, f"Failed to establish a new connection: {failure}") from failure

    def putheader(self, header: str | bytes, *values: Any) -> None:
        """Write one header line. The proxy validated every name and value when the
        request came in (:mod:`wsgiproxy.headers`); http.client and urllib3 would check
        and encode each one again, at a cost per request measured in the benchmark."""
        value = values[0] if len(values) == 1 else ", ".join(str(v) for v in values)
        if value == SKIP_HEADER:
            return
        name = header.decode("latin-1") if isinstance(header, bytes) else header
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line:
            raise ValueError(f"CR or LF in header {name!r}")
        self._output(line.encode("latin-1"))  # type: ignore[attr-defined]

    #: When the last request on this connection was written out (head and body).
    sent_at: float = 0.0

    def request(
        self, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any
    ) -> None:
        if headers is not None:  # urlopen's own copy, made for this attempt
            # Without these, urllib3 would invent a User-Agent and "Accept-Encoding:
            # identity" when the client sent none: the host sees what the client sent.
            headers.setdefault("User-Agent", SKIP_HEADER)
            headers.setdefault("Accept-Encoding", SKIP_HEADER)
        super().request(method, url, body=body, headers=headers, **kw)
        self.sent_at = time.perf_counter()


class UpstreamConnection(_ProxyConnection, HTTPConnection):
    """A plain-HTTP connection to a host."""

    @property
    def is_connected(self) -> bool:
        """Whether a pooled connection can take another request: open, nothing unread.

        urllib3 asks with a zero-timeout ``poll()``, which under gevent goes through the
        hub. gevent keeps the OS socket non-blocking (as ``_sock``), so a peek at it
        answers the same question with one system call. Bytes nobody asked for mean
        the connection is not reusable either.
        """
        sock = self.sock
        if sock is None:
            return False
        raw = getattr(sock, "_sock", None)
        if raw is None:  # not under gevent
            return bool(super().is_connected)
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False


class UpstreamHTTPSConnection(_ProxyConnection, HTTPSConnection):
    """A TLS connection to a host (docs/tls.md). Whether it can take another request is
    asked as urllib3 asks: a peek at the raw socket would see TLS records, not HTTP."""


class _AttemptLogging(_PoolBase):
    """A connection pool that sends raw targets and logs every attempt.

    ``urlopen`` callers pass ``target=`` (the raw target to send) and ``log=`` (an
    :class:`AttemptLog`); urllib3 hands both to :meth:`_make_request` on every attempt.
    """

    def __init__(self, host: str, port: int | None = None, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        #: The host as the routes file and the logs write it.
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.label = f"{host}:{self.port}"
        #: Where its connections go (one lookup of a name for all of them).
        self.addresses = HostAddresses(
            self.host, self.port or (443 if self.scheme == "https" else 80))

    def _new_conn(self) -> Any:
        conn: Any = super()._new_conn()
        conn.addresses = self.addresses
        return conn

    def _make_request(  # type: ignore[override]
        self, conn: Any, method: str, url: str, *, target: str | None = None,
        log: AttemptLog | None = None, **kwargs: Any,
    ) -> BaseHTTPResponse:
        if target is None or log is None:  # a plain urlopen (Session.send)
            return super()._make_request(conn, method, target or url, **kwargs)
        conn.sent_at = 0.0
        try:
            response = super()._make_request(conn, method, target, **kwargs)
        except BaseException as error:
            if conn.sent_at:
                log.sent(conn.sent_at)
            log.attempted(self.label, classify(error))
            raise
        log.sent(conn.sent_at)
        log.answered(time.perf_counter())
        outcome = Outcome.RETRYABLE_STATUS if response.status in RETRYABLE_STATUSES \
            else Outcome.RESPONSE
        log.attempted(self.label, outcome, response.status)
        return response


class UpstreamConnectionPool(_AttemptLogging, HTTPConnectionPool):
    """The pool of one host, over plain HTTP."""

    ConnectionCls = UpstreamConnection


class UpstreamHTTPSConnectionPool(_AttemptLogging, HTTPSConnectionPool):
    """The pool of one host, over TLS."""

    ConnectionCls = UpstreamHTTPSConnection

    def _validate_conn(self, conn: Any) -> None:
        """urllib3's, without its ``InsecureRequestWarning`` on every request to a host
        whose certificate is not verified: ``tls.verify: false`` is deliberate, and is
        logged once, at start-up."""
        HTTPConnectionPool._validate_conn(self, conn)
        if conn.is_closed:
            conn.connect()
