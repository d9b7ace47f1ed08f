"""Logs: one JSON access line per request on stdout, the application log as JSON on stderr.

python-json-logger does the formatting (rather than hand-built JSON): it escapes
whatever a client put in a header and keeps the standard ``logging`` API, so
``logger.exception`` tracebacks land in the same JSON stream.

Access line fields (see the README for their meaning)::

    time request_id client method service path status bytes duration_ms
    upstream_host attempts upstream_attempts cache complete
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Final

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["ACCESS_LOGGER", "UNROUTED", "access_fields", "configure_logging", "log_access"]

ACCESS_LOGGER: Final = logging.getLogger("wsgiproxy.access")
#: The service label of requests that matched no service (never the client's Host).
UNROUTED: Final = "unrouted"
_MARK: Final = "_wsgiproxy_handler"


def _handler(stream: Any, fields: list[str], rename: dict[str, str]) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(fields, rename_fields=rename, timestamp="time"))
    setattr(handler, _MARK, True)
    return handler


def configure_logging(level: str) -> None:
    """Install both handlers once (idempotent: every gunicorn worker calls it)."""
    app = logging.getLogger("wsgiproxy")
    app.setLevel(level)
    if not any(getattr(h, _MARK, False) for h in app.handlers):
        app.addHandler(_handler(sys.stderr, ["levelname", "name", "message"],
                                {"levelname": "level", "name": "logger"}))
        app.propagate = False
    ACCESS_LOGGER.setLevel(logging.INFO)  # the access log is not subject to LOG_LEVEL
    if not any(getattr(h, _MARK, False) for h in ACCESS_LOGGER.handlers):
        ACCESS_LOGGER.addHandler(_handler(sys.stdout, [], {}))
        ACCESS_LOGGER.propagate = False


def access_fields(exchange: Exchange, finished_at: float) -> dict[str, Any]:
    """The access line of a finished request, as a dict."""
    return {
        "request_id": exchange.request_id,
        "client": exchange.client,
        "method": exchange.method,
        "service": exchange.service or UNROUTED,
        "path": exchange.path,
        "status": exchange.status,
        "bytes": exchange.bytes_sent,
        "duration_ms": round((finished_at - exchange.received_at) * 1000, 3),
        "upstream_host": exchange.upstream_host,
        "attempts": len(exchange.attempts),
        "upstream_attempts": [f"{a.host} {a.outcome}" + (f" {a.status}" if a.status else "")
                              for a in exchange.attempts],
        "cache": exchange.cache,
        "complete": exchange.complete,
    }


def log_access(exchange: Exchange, finished_at: float) -> None:
    if ACCESS_LOGGER.isEnabledFor(logging.INFO):
        ACCESS_LOGGER.info("", extra=access_fields(exchange, finished_at))
