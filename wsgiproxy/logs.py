"""Logs: one JSON access line per request on stdout, the application log as JSON on stderr.

The application log goes through ``logging`` with python-json-logger's formatter, so
``logger.exception`` tracebacks land in the same JSON stream. The access log does not:
a line per request through ``logging`` (a record, handler locks, the formatter, a flush)
cost a large share of the proxy's CPU per request (docs/performance.md).
:class:`AccessLog` writes each line as ``json.dumps`` of :func:`access_fields` would
(:func:`access_line`, without building the dict) and buffers them like
nginx's ``access_log ... buffer= flush=``: written when 64 KiB have gathered or a second
has passed, and at exit.

Access line fields (see docs/metrics.md for their meaning)::

    time request_id client method service path status bytes bytes_received duration_ms
    upstream_host attempts upstream_attempts cache upgrade complete
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import IO, TYPE_CHECKING, Any, Final

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["UNROUTED", "AccessLog", "access_fields", "access_line", "configure_logging"]

#: The service label of requests that matched no service (never the client's Host).
UNROUTED: Final = "unrouted"


class _AppLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The application log's handler: JSON lines on stderr."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(JsonFormatter(["levelname", "name", "message"],
                                        rename_fields={"levelname": "level", "name": "logger"},
                                        timestamp="time"))


def configure_logging(level: str) -> None:
    """Install the application log's handler once (every gunicorn worker calls it)."""
    app = logging.getLogger("wsgiproxy")
    app.setLevel(level)
    if not any(isinstance(h, _AppLogHandler) for h in app.handlers):
        app.addHandler(_AppLogHandler())
        app.propagate = False


def access_fields(exchange: Exchange, finished_at: float) -> dict[str, Any]:
    """The access line of a finished request, as a dict."""
    return {
        "time": datetime.now(UTC).isoformat(),
        "request_id": exchange.request_id,
        "client": exchange.client,
        "method": exchange.method,
        "service": exchange.service or UNROUTED,
        "path": exchange.path,
        "status": exchange.status,
        "bytes": exchange.bytes_sent,
        "bytes_received": exchange.bytes_received,
        "duration_ms": round((finished_at - exchange.received_at) * 1000, 3),
        "upstream_host": exchange.upstream_host,
        "attempts": len(exchange.attempts),
        "upstream_attempts": [f"{a.host} {a.outcome}" + (f" {a.status}" if a.status else "")
                              for a in exchange.attempts],
        "cache": exchange.cache,
        "upgrade": exchange.upgrade,
        "complete": exchange.complete,
    }


def access_line(exchange: Exchange, finished_at: float) -> str:
    """``json.dumps(access_fields(exchange, finished_at)) + "\n"``, the same characters,
    written directly: the dict and the encoder's walk over it were most of the line's
    cost. Strings go through the encoder ``json.dumps`` itself uses."""
    q = encode_basestring_ascii
    attempts = exchange.attempts
    tried = ", ".join(q(f"{a.host} {a.outcome} {a.status}" if a.status else
                        f"{a.host} {a.outcome}") for a in attempts)
    return (f'{{"time": "{_now()}", "request_id": {q(exchange.request_id)}, '
            f'"client": {q(exchange.client)}, "method": {q(exchange.method)}, '
            f'"service": {q(exchange.service or UNROUTED)}, "path": {q(exchange.path)}, '
            f'"status": {int(exchange.status)}, "bytes": {int(exchange.bytes_sent)}, '
            f'"bytes_received": {int(exchange.bytes_received)}, '
            f'"duration_ms": {round((finished_at - exchange.received_at) * 1000, 3)!r}, '
            f'"upstream_host": {q(attempts[-1].host if attempts else "")}, '
            f'"attempts": {len(attempts)}, "upstream_attempts": [{tried}], '
            f'"cache": {q(exchange.cache)}, "upgrade": {q(exchange.upgrade)}, '
            f'"complete": {"true" if exchange.complete else "false"}}}\n')


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _now() -> str:
    """``datetime.now(UTC).isoformat()``, formatting the date and time once a second."""
    global _second
    now = time.time()
    second, text = _second
    if int(now) != second:
        second = int(now)
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, text)
    micro = int((now - second) * 1e6)
    return f"{text}.{micro:06d}+00:00" if micro else f"{text}+00:00"


class AccessLog:
    """Buffered JSON lines: one per finished request.

    :param stream: where the lines go (stdout, in text mode).
    :param flush_seconds: longest time a line waits in the buffer.
    :param buffer_bytes: size at which the buffer is written at once.

    Safe for greenlets and threads: appending to a list is atomic, and the writes are
    made under a lock. A background flusher (a greenlet once gevent has patched
    ``threading``) writes a waiting buffer out after ``flush_seconds``.
    """

    def __init__(self, stream: IO[str] | None = None, flush_seconds: float = 1.0,
                 buffer_bytes: int = 64 * 1024) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._flush_seconds = flush_seconds
        self._buffer_bytes = buffer_bytes
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        atexit.register(self.flush)

    def __call__(self, exchange: Exchange, finished_at: float) -> None:
        line = access_line(exchange, finished_at)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._buffer_bytes:
            self.flush()
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_later, daemon=True,
                                             name="wsgiproxy-access-log")
            self._flusher.start()

    def _flush_later(self) -> None:
        time.sleep(self._flush_seconds)
        self._flusher = None
        self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
            if lines:
                try:
                    self._stream.write("".join(lines))
                    self._stream.flush()
                except (OSError, ValueError):  # closed at exit, or a broken pipe
                    pass
