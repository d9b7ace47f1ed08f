"""What the proxy changes in gunicorn's HTTP handling, in each worker, before it serves.

* Requests gunicorn's parser rejects (bad request line, duplicated Content-Length,
  header too large, ...) are answered with the proxy's JSON error instead of gunicorn's
  HTML page; gunicorn still decides the status.
* gunicorn drops an app's ``Date`` and ``Server`` (``gunicorn.util.hop_headers``) and
  writes its own. The host's ``Date`` matters (a cached answer must carry the stored
  ``Date`` with its ``Age``, RFC 9111 §4), so :class:`ProxyResponse` keeps the host's
  ``Date`` and ``Server``, writes gunicorn's ``Date`` only when the host sent none, and
  never advertises gunicorn in ``Server``. It also honours an app's ``Connection:
  close`` (gunicorn drops it as hop-by-hop), which the proxy sends when it answers
  without reading the request body.
* gunicorn sends a response's head and its body in two ``sendall`` calls, each a
  gevent socket operation plus two system calls: the head goes out with the first body
  piece instead, as under pywsgi (:func:`~wsgiproxy.http1.head_with_body`).
* gunicorn takes a chunk size of any number of hex digits and then waits for that many
  bytes; the proxy's rule (:func:`~wsgiproxy.http1.check_chunk_size`) applies instead.
* The parser's socket reads tell the worker's :class:`~.worker.HeadClock` when a
  request head's first bytes arrive, so the header timeout runs from then.

These are replacements of gunicorn module attributes, made by :func:`adapt_gunicorn`
in the worker process: gunicorn offers no hook for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gevent
from gunicorn import util as gunicorn_util
from gunicorn.http import body as gunicorn_body
from gunicorn.http import errors as gunicorn_errors
from gunicorn.http import message as gunicorn_message
from gunicorn.http import parser as gunicorn_parser
from gunicorn.http import unreader as gunicorn_unreader
from gunicorn.http import wsgi as gunicorn_wsgi

from ...errors import MalformedBody, error_for_status, raw_error_response
from ...http1 import check_chunk_size, head_with_body

if TYPE_CHECKING:
    from .worker import HeadClock

__all__ = ["ProxyResponse", "StrictChunkedReader", "adapt_gunicorn"]


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, writing the proxy's JSON error instead of HTML."""
    gunicorn_util.write_nonblock(
        sock, raw_error_response(error_for_status(status_int, mesg or reason)))


class ProxyResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, keeping the host's ``Date`` and ``Server``, honouring the
    app's ``Connection: close``, and sending the head with the first body piece."""

    _app_date = False
    _pending_head = b""
    headers_sent: bool
    chunked: bool

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        super().process_headers(headers)  # validates every header, drops some
        if self.status_code == 101:
            self.must_close = True  # after a tunnel nothing on the connection is HTTP
        for name, value in headers:
            lname = name.lower()
            if lname in ("date", "server"):
                self.headers.append((name, value.strip(" \t")))
                self._app_date = self._app_date or lname == "date"
            elif lname == "connection" and "close" in value.lower():
                self.must_close = True

    def default_headers(self) -> list[str]:
        return [line for line in super().default_headers()
                if not line.startswith("Server:")
                and not (self._app_date and line.startswith("Date:"))]

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        if self.status_code == 101:  # no body will follow: the tunnel's bytes do
            super().send_headers()
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._pending_head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True  # for gunicorn's bookkeeping; written with the body

    def _emit_body(self, data: bytes) -> None:
        head, self._pending_head = self._pending_head, b""
        if not head:
            super()._emit_body(data)
            return
        for piece in head_with_body(head, data, self.chunked):
            self.sock.sendall(piece)

    def close(self) -> None:
        if not self.headers_sent:  # no body was written: gunicorn makes the head now
            self.send_headers()
        head, self._pending_head = self._pending_head, b""
        if head:  # no body came (HEAD, 204, 304, an empty body)
            self.sock.sendall(head + (b"0\r\n\r\n" if self.chunked else b""))
            self.chunked = False  # its last chunk went with the head
        super().close()

    def sendfile(self, respiter: Any) -> bool:
        return False  # never used by the proxy; it would overtake a pending head


class StrictChunkedReader(gunicorn_body.ChunkedReader):  # type: ignore[misc]
    """gunicorn's chunked-body reader with the proxy's limit on chunk sizes."""

    def parse_chunk_size(self, unreader: Any, data: Any = None) -> Any:
        size, rest = super().parse_chunk_size(unreader, data)
        try:
            check_chunk_size(size)
        except MalformedBody as error:
            raise gunicorn_errors.InvalidChunkSize(error.message.encode()) from None
        return size, rest


def _timed_unreader(heads: dict[Any, HeadClock]) -> type:
    """gunicorn's socket reader, telling a request head's clock when its bytes come."""

    class TimedUnreader(gunicorn_unreader.SocketUnreader):  # type: ignore[misc]
        def chunk(self, size_hint: int | None = None) -> bytes:
            clock = heads.get(gevent.getcurrent())
            if clock is not None and not clock.started and self.buf.tell():
                clock.began()  # part of the head was read with the previous request
            data: bytes = super().chunk(size_hint)
            if clock is not None and data:
                clock.began()
            return data

    return TimedUnreader


def adapt_gunicorn(heads: dict[Any, HeadClock]) -> None:
    """Install the JSON error writer, the proxy's response class, the strict chunk
    reader and the timed socket reader in this process.

    :param heads: the worker's request heads being read, by greenlet.
    """
    gunicorn_wsgi.Response = ProxyResponse
    gunicorn_util.write_error = _write_json_error
    gunicorn_message.ChunkedReader = StrictChunkedReader
    gunicorn_parser.SocketUnreader = _timed_unreader(heads)
