"""The errors the proxy itself answers with, each carrying its HTTP status.

Raised anywhere in the request path and rendered by one function,
:func:`error_response`, whichever path meets them: the WSGI app, pywsgi's and gunicorn's
request parsers (through :func:`raw_error_response`) and the metrics/health server. Like
h11's ``error_status_hint`` and werkzeug's ``code``, the status belongs to the error
class, so mapping errors to statuses is data, not a chain of ``except`` clauses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

__all__ = [
    "BadGateway",
    "BadRequest",
    "BodyTooLarge",
    "ClientTimeout",
    "ConfigError",
    "ErrorResponse",
    "FilterFailed",
    "HeadersTooLarge",
    "InternalError",
    "MalformedBody",
    "MethodNotAllowed",
    "NoHostReachable",
    "NotCached",
    "NotFound",
    "NotImplementedByProxy",
    "ProxyError",
    "TooManyTunnels",
    "URITooLong",
    "UpstreamTimeout",
    "error_for_status",
    "error_response",
    "raw_error_response",
    "status_line",
]


class ConfigError(Exception):
    """A bad setting or routes file: start-up stops with this one-line message."""


class ProxyError(Exception):
    """An error answered by the proxy itself rather than by a backend."""

    status: ClassVar[HTTPStatus] = HTTPStatus.BAD_GATEWAY
    #: The client connection must not be reused (its request body was not read).
    close_connection: ClassVar[bool] = False
    #: How loudly the app logs it: most are the client's business, not the operator's.
    log_level: ClassVar[int] = logging.DEBUG

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "status" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its HTTP status")


class BadRequest(ProxyError):
    """Malformed request line, header, framing or body (docs/bad-input.md)."""

    status = HTTPStatus.BAD_REQUEST
    close_connection = True


class MalformedBody(BadRequest):
    """A request body the server cannot read: a bad chunk size or extension, a bare LF,
    a missing CRLF, a body cut short (docs/bad-input.md). Logged: it is a broken or hostile
    client, and the operator may want to know which."""

    status = HTTPStatus.BAD_REQUEST
    log_level = logging.WARNING


class NotFound(ProxyError):
    """No service for the Host, or a path outside ``/proxy/`` (docs/routing.md)."""

    status = HTTPStatus.NOT_FOUND


class MethodNotAllowed(ProxyError):
    """A method the metrics/health server does not serve."""

    status = HTTPStatus.METHOD_NOT_ALLOWED


class BodyTooLarge(ProxyError):
    """Request body over MAX_REQUEST_BODY_BYTES, refused before any backend is contacted."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    close_connection = True


class HeadersTooLarge(ProxyError):
    """Header section over 64 KiB, or one header line over 8 KiB."""

    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    close_connection = True


class ClientTimeout(ProxyError):
    """The client took too long to send its request's header section or paused too
    long within its body (docs/strangers.md)."""

    status = HTTPStatus.REQUEST_TIMEOUT
    close_connection = True
    log_level = logging.INFO

    def __init__(self, message: str, phase: str = "header") -> None:
        super().__init__(message)
        #: ``header`` or ``body``: the label of ``proxy_client_timeouts_total{phase}``.
        self.phase = phase


class TooManyTunnels(ProxyError):
    """MAX_TUNNELS upgraded connections are open in this worker already."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class URITooLong(BadRequest):
    """A request line longer than the server's limit."""

    status = HTTPStatus.REQUEST_URI_TOO_LONG


class NotImplementedByProxy(BadRequest):
    """A transfer coding the proxy does not decode (only chunked is)."""

    status = HTTPStatus.NOT_IMPLEMENTED


class BadGateway(ProxyError):
    """The host answered with something that is not a usable HTTP response."""

    status = HTTPStatus.BAD_GATEWAY


class NoHostReachable(BadGateway):
    """Every host of the service refused or timed out connecting."""

    status = HTTPStatus.BAD_GATEWAY


class UpstreamTimeout(ProxyError):
    """The host accepted the request but did not answer within the read timeout."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class NotCached(ProxyError):
    """``Cache-Control: only-if-cached`` and nothing fresh stored (RFC 9111 §5.2.1.7)."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class FilterFailed(ProxyError):
    """A filter raised (docs/filters.md); its traceback was logged where it happened."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, name: str) -> None:
        super().__init__(f"filter {name} failed")
        self.filter = name


class InternalError(ProxyError):
    """A bug in the proxy; logged with its traceback, answered with 500."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


_BY_STATUS: dict[int, type[ProxyError]] = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 408: ClientTimeout,
    413: BodyTooLarge, 414: URITooLong, 431: HeadersTooLarge, 501: NotImplementedByProxy,
}


def error_for_status(status: int, message: str) -> ProxyError:
    """The error a server's own parser means by ``status`` (gunicorn decides statuses
    itself); anything unexpected is a 400: the request could not be read."""
    return _BY_STATUS.get(status, BadRequest)(message)


#: RFC 9110's reason phrases where Python's differ before 3.13: the proxy's status lines
#: are the same whichever Python runs it.
_RFC9110_PHRASES: dict[int, str] = {413: "Content Too Large", 414: "URI Too Long",
                                    422: "Unprocessable Content"}


def status_line(status: int, reason: str | None = None) -> str:
    """``"404 Not Found"``: the reason given, or the standard phrase for the status."""
    if not reason:
        try:
            reason = _RFC9110_PHRASES.get(status) or HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return f"{status} {reason}"


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """An error as any server writes it: status line, headers and JSON body."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


def error_response(error: ProxyError, request_id: str | None = None) -> ErrorResponse:
    """The one rendering of a :class:`ProxyError`: ``{"error": "..."}`` with its status.

    ``Connection: close`` when the request body may be unread: reusing the connection
    would read it as the next request.
    """
    body = json.dumps({"error": error.message}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]
    if request_id:
        headers.append(("X-Request-ID", request_id))
    if error.close_connection:
        headers.append(("Connection", "close"))
    return ErrorResponse(status_line(error.status.value), headers, body)


def raw_error_response(error: ProxyError) -> bytes:
    """A whole HTTP/1.1 response for a server that rejects a request before the app sees
    it (a request line or header it cannot parse). Always closes: after a parse error
    nothing more on that connection can be trusted."""
    rendered = error_response(error)
    lines = [f"HTTP/1.1 {rendered.status}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in rendered.headers if k != "Connection"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + rendered.body
