"""The errors the proxy itself answers with, each carrying its HTTP status.

Raised anywhere in the request path, rendered in exactly one place
(:meth:`wsgiproxy.handler.ProxyApp.__call__`) as ``{"error": "<message>"}``. Like h11's
``error_status_hint`` and werkzeug's ``code``, the status belongs to the error class, so
mapping errors to statuses is data, not a chain of ``except`` clauses.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import ClassVar

__all__ = [
    "BadGateway",
    "BadRequest",
    "BodyTooLarge",
    "ConfigError",
    "HeadersTooLarge",
    "InternalError",
    "NotImplementedByProxy",
    "NoHostReachable",
    "NotCached",
    "NotFound",
    "ProxyError",
    "URITooLong",
    "UpstreamTimeout",
    "error_body",
    "raw_error_response",
]


class ConfigError(Exception):
    """A bad setting or routes file: start-up stops with this one-line message."""


class ProxyError(Exception):
    """An error answered by the proxy itself rather than by a backend."""

    status: ClassVar[HTTPStatus] = HTTPStatus.BAD_GATEWAY
    #: The client connection must not be reused (its request body was not read).
    close_connection: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "status" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its HTTP status")


class BadRequest(ProxyError):
    """Malformed request line, header or framing (SPEC §9)."""

    status = HTTPStatus.BAD_REQUEST
    close_connection = True


class NotFound(ProxyError):
    """No service for the Host, or a path outside ``/proxy/`` (SPEC §4)."""

    status = HTTPStatus.NOT_FOUND


class BodyTooLarge(ProxyError):
    """Request body over MAX_REQUEST_BODY_BYTES, refused before any backend is contacted."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    close_connection = True


class HeadersTooLarge(ProxyError):
    """Header section over 64 KiB, or one header line over 8 KiB."""

    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    close_connection = True


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


class InternalError(ProxyError):
    """A bug in the proxy; logged with its traceback, answered with 500."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class URITooLong(BadRequest):
    """A request line longer than the server's limit."""

    status = HTTPStatus.REQUEST_URI_TOO_LONG


class NotImplementedByProxy(BadRequest):
    """A transfer coding the proxy does not decode (only chunked is)."""

    status = HTTPStatus.NOT_IMPLEMENTED


def error_body(message: str) -> bytes:
    """The JSON body of every error the proxy answers itself."""
    return json.dumps({"error": message}).encode()


def raw_error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for a server that rejects a request before the
    app sees it (a request line or header it cannot parse). Always closes: after a
    parse error nothing more on that connection can be trusted."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = error_body(message)
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body
