"""Header rules at the two edges of the proxy (docs/forwarding.md).

Towards the host: hop-by-hop headers (and any header the client's ``Connection`` names)
are dropped; ``Host`` is kept as the client sent it (it was checked when routed);
forwarding headers are believed only from a trusted peer (:mod:`wsgiproxy.forwarded`):
``X-Forwarded-For`` gets the peer's address appended (or is set to it), and
``X-Forwarded-Host`` and ``X-Forwarded-Proto`` are set unless a trusted peer sent them;
``X-Request-ID`` is the client's when it is sane, a new one otherwise.

Towards the client: the same hop-by-hop rule, repeated headers kept as separate lines,
and any value a WSGI server would refuse (control characters) answered with 502 rather
than crashing the response half-way.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Final

from .errors import BadGateway, BadRequest, HeadersTooLarge
from .forwarded import is_forwarding_claim
from .http1 import FIELD_VALUE
from .limits import MAX_HEADER_BYTES, MAX_HEADER_LINE_BYTES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


__all__ = [
    "HOP_BY_HOP",
    "check_header_size",
    "client_headers",
    "client_headers_after_filters",
    "connection_tokens",
    "request_id",
    "upstream_headers",
    "upstream_headers_after_filters",
    "websocket_upgrade",
]

#: RFC 9110 §7.6.1, plus the legacy names docs/forwarding.md lists. ``Expect`` is answered by the
#: WSGI server on this hop, so it is not passed on either.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authorization",
    "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade",
})
#: Never forwarded as the client sent them: the proxy writes its own.
_NOT_FORWARDED: Final = HOP_BY_HOP | {"host", "expect", "x-request-id", "content-length"}

_HOP_BY_HOP_AND_LENGTH: Final = HOP_BY_HOP | {"content-length"}

_SANE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(client_value: str | None) -> str:
    """The client's X-Request-ID if it is 1-128 of ``[A-Za-z0-9._:-]``, else a new one."""
    if client_value and _SANE_REQUEST_ID.fullmatch(client_value):
        return client_value
    return os.urandom(16).hex()


@lru_cache(maxsize=512)
def _header_name(wsgi_key: str) -> str:
    """``HTTP_X_FORWARDED_FOR`` → ``X-Forwarded-For`` (WSGI lost the original case)."""
    return wsgi_key[5:].replace("_", "-").title()


def connection_tokens(value: str | None) -> frozenset[str]:
    """Lower-cased names listed in a ``Connection`` header."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def websocket_upgrade(environ: Mapping[str, object]) -> bool:
    """Whether the request asks to become a WebSocket (docs/websocket.md): a GET with
    ``Connection: upgrade`` and ``Upgrade: websocket``. Any other Upgrade token
    (``h2c``, ...) is not honoured: the request goes on as plain HTTP without it, since
    Upgrade is hop-by-hop (and h2c upgrades are a known way around a front proxy)."""
    if environ.get("REQUEST_METHOD") != "GET":
        return False
    connection = environ.get("HTTP_CONNECTION")
    upgrade = environ.get("HTTP_UPGRADE")
    if not isinstance(connection, str) or not isinstance(upgrade, str):
        return False
    return "upgrade" in connection_tokens(connection) and \
        "websocket" in connection_tokens(upgrade)


def check_header_size(environ: Mapping[str, object]) -> None:
    """431 for a header section over 64 KiB or a line over 8 KiB (docs/bad-input.md).

    The WSGI server has already parsed the headers; this bounds what the proxy accepts
    whatever server runs it (gunicorn caps lines, not the total).
    """
    total = 0
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            line = len(key) - 5 + len(value) + 4  # "Name: value\r\n"
            if line > MAX_HEADER_LINE_BYTES:
                raise HeadersTooLarge(f"header {_header_name(key)} is over 8 KiB")
            total += line
    if total > MAX_HEADER_BYTES:
        raise HeadersTooLarge("request header section is over 64 KiB")


def upstream_headers(
    environ: Mapping[str, str],
    host: str,
    rid: str,
    content_length: int | None,
    trusted: bool = False,
) -> dict[str, str]:
    """The headers to send the host, in the client's order, ``Host`` first.

    :param trusted: the peer is a trusted proxy (:meth:`~wsgiproxy.forwarded.Trust.trusts`):
        its forwarding headers are kept and appended to.
    """
    headers: dict[str, str] = {"Host": host}
    listed = connection_tokens(environ.get("HTTP_CONNECTION"))
    dropped = _NOT_FORWARDED | listed if listed else _NOT_FORWARDED
    for key, value in environ.items():
        if not key.startswith("HTTP_"):
            continue
        name = _header_name(key)
        lower = name.lower()
        if lower in dropped or (not trusted and is_forwarding_claim(lower)):
            continue
        if not FIELD_VALUE.fullmatch(value):
            raise BadRequest(f"invalid character in header {name}")
        headers[name] = value
    content_type = environ.get("CONTENT_TYPE")
    if content_type:
        if not FIELD_VALUE.fullmatch(content_type):
            raise BadRequest("invalid character in header Content-Type")
        headers["Content-Type"] = content_type
    if content_length is not None:
        headers["Content-Length"] = str(content_length)
    remote = environ.get("REMOTE_ADDR", "")
    forwarded_for = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
    headers.setdefault("X-Forwarded-Host", host)
    headers.setdefault("X-Forwarded-Proto", environ.get("wsgi.url_scheme", "http"))
    headers["X-Request-ID"] = rid
    return headers


def client_headers(
    upstream: Iterable[tuple[str, str]], *, connection: str | None, keep_length: bool
) -> list[tuple[str, str]]:
    """The host's response headers as the client gets them, repeated ones kept apart.

    :param connection: the host's ``Connection`` value; the names it lists are dropped.
    :param keep_length: False when the host framed the body with chunked coding, whose
        ``Content-Length`` (if any) does not describe the bytes the client will get.
    """
    dropped = _HOP_BY_HOP_AND_LENGTH if not keep_length else HOP_BY_HOP
    listed = connection_tokens(connection)
    if listed:
        dropped = dropped | listed
    out = []
    for name, value in upstream:
        if name.lower() in dropped:
            continue
        if not FIELD_VALUE.fullmatch(value):
            raise BadGateway(f"upstream sent an invalid {name} header")
        out.append((name, value))
    return out


def upstream_headers_after_filters(view: Iterable[tuple[str, str]], host: str, rid: str,
                                   content_length: int | None) -> dict[str, str]:
    """What the host gets after the filters (docs/filters.md): the fields they left
    (repeats joined), under the same rule as a client's fields, with the proxy's own
    Host, framing and request id."""
    fields: dict[str, str] = {"Host": host}
    first_spelling: dict[str, str] = {}
    for name, value in view:
        lower = name.lower()
        if lower in _NOT_FORWARDED:
            continue
        if lower in first_spelling:
            fields[first_spelling[lower]] += ("; " if lower == "cookie" else ", ") + value
        else:
            first_spelling[lower] = name
            fields[name] = value
    if content_length is not None:
        fields["Content-Length"] = str(content_length)
    fields["X-Request-ID"] = rid
    return fields


def client_headers_after_filters(original: list[tuple[str, str]],
                                 view: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A response's fields after the filters: theirs, with the body's framing as it was
    (a filter sees the body's framing but cannot change it)."""
    framing = [(n, v) for n, v in original if n.lower() in _HOP_BY_HOP_AND_LENGTH]
    return [*((n, v) for n, v in view if n.lower() not in _HOP_BY_HOP_AND_LENGTH), *framing]
