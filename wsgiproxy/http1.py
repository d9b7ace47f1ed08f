"""The HTTP/1.1 request grammar the proxy accepts, as pure functions (RFC 9112).

A proxy's reading of a request is what the host will read too, so where the RFC allows
leniency (bare LF, obs-fold, a second Content-Length, a chunk extension nobody checks)
the proxy refuses: a lenient parser in front of a strict one is how requests are
smuggled. ``python -m wsgiproxy`` parses request heads and chunk lines with these
functions; under gunicorn, gunicorn's own parser (as strict, RFC 9112) reads the head
and :func:`check_chunk_size` adds the one rule it lacks. They take bytes or a
``readline`` and raise :class:`~wsgiproxy.errors.ProxyError` subclasses, so they can be
tested without a socket (tests/test_http1.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .errors import BadRequest, HeadersTooLarge, MalformedBody, NotImplementedByProxy
from .limits import (
    MAX_CHUNK_LINE_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADER_LINE_BYTES,
    ONE_SEND_BYTES,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FIELD_VALUE", "MAX_CHUNK_SIZE", "TOKEN", "Framing", "RequestLine",
           "check_chunk_size", "head_with_body", "parse_chunk_line", "parse_request_line",
           "read_fields", "read_trailer", "request_framing"]

#: RFC 9110 §5.6.2 token.
TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A valid field value: VCHAR, obs-text, SP and HTAB (RFC 9110 §5.5); never CR, LF,
#: NUL or other controls.
FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# RFC 9112 §3: method SP request-target SP HTTP-version CRLF, nothing else.
_REQUEST_LINE: Final = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/1\.[01])\r\n")
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, with
# chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ).
_TOKEN_B: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_B: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*" + _TOKEN_B
                                + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN_B + rb"|" + _QUOTED_B
                                + rb"))?)*)\r\n")
#: A chunk size has at most 16 hex digits (2^64 - 1), under both servers: a longer one
#: would have the server wait for more bytes than any body can have.
MAX_CHUNK_SIZE: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    target: str  # as sent: never decoded
    version: str  # "HTTP/1.1" or "HTTP/1.0"


def parse_request_line(line: str) -> RequestLine:
    """``GET /x HTTP/1.1\\r\\n`` → its parts; anything else is 400."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequest(f"invalid request line {line.rstrip()[:100]!r}")
    return RequestLine(*match.groups())


def _field(line: bytes) -> tuple[str, str]:
    """One ``name: value CRLF`` line (of a header section or a trailer)."""
    if not line.endswith(b"\r\n") or b"\r" in line[:-2] or b"\n" in line[:-2]:
        raise BadRequest("header line not ended by CRLF")
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obsolete line folding in headers")
    text = line[:-2].decode("latin-1")
    name, colon, value = text.partition(":")
    if not colon or not TOKEN.fullmatch(name):
        raise BadRequest(f"invalid header name {name[:60]!r}")
    value = value.strip(" \t")
    if not FIELD_VALUE.fullmatch(value):
        raise BadRequest(f"invalid character in header {name}")
    return name, value


def read_fields(readline: Callable[[int], bytes],
                max_total: int = MAX_HEADER_BYTES) -> list[tuple[str, str]]:
    """Header lines up to the blank line, each checked whole: a line over 8 KiB or a
    section over ``max_total`` is 431; a bare LF, obs-fold, a bad name or a control
    character is 400; the connection closing first is 400."""
    fields: list[tuple[str, str]] = []
    total = 0
    while True:
        line = readline(MAX_HEADER_LINE_BYTES + 1)
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise HeadersTooLarge("a header line is over 8 KiB")
        total += len(line)
        if total > max_total:
            raise HeadersTooLarge("request header section is over 64 KiB")
        if line == b"\r\n":
            return fields
        if not line:
            raise BadRequest("connection closed within the header section")
        fields.append(_field(line))


@dataclass(frozen=True, slots=True)
class Framing:
    """How a request's body is delimited (RFC 9112 §6)."""

    chunked: bool = False
    length: int | None = None  # Content-Length; None with neither header: no body


def request_framing(lengths: list[str], codings: list[str], version: str) -> Framing:
    """One unambiguous body length, or refuse the request (the smuggling rules)."""
    if len(lengths) > 1:
        raise BadRequest("duplicated Content-Length")
    if codings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if ",".join(codings).strip(" \t").lower() != "chunked":
            raise NotImplementedByProxy(f"unsupported Transfer-Encoding {codings[0][:40]!r}")
        if version != "HTTP/1.1":
            raise BadRequest("chunked body in an HTTP/1.0 request")
        return Framing(chunked=True)
    if lengths:
        if not (lengths[0].isdigit() and lengths[0].isascii()):
            raise BadRequest(f"invalid Content-Length {lengths[0][:40]!r}")
        return Framing(length=int(lengths[0]))
    return Framing()


def check_chunk_size(size: int) -> int:
    """``size`` if a chunk may be that large (see :data:`MAX_CHUNK_SIZE`)."""
    if size > MAX_CHUNK_SIZE:
        raise MalformedBody("chunk size over 16 hex digits")
    return size


def parse_chunk_line(line: bytes) -> int:
    """The size of a ``chunk-size [ chunk-ext ] CRLF`` line, extensions checked whole."""
    if len(line) > MAX_CHUNK_LINE_BYTES or (match := _CHUNK_LINE.fullmatch(line)) is None:
        raise MalformedBody(f"invalid chunk size line {line[:60]!r}")
    return check_chunk_size(int(match.group(1), 16))


def read_trailer(readline: Callable[[int], bytes]) -> list[tuple[str, str]]:
    """The trailer section after the last chunk, up to its blank line: each line a
    field ended by CRLF (a bare LF is 400, never a wait for more bytes)."""
    fields: list[tuple[str, str]] = []
    total = 0
    while True:
        line = readline(MAX_HEADER_LINE_BYTES + 1)
        total += len(line)
        if len(line) > MAX_HEADER_LINE_BYTES or total > MAX_HEADER_BYTES:
            raise MalformedBody("chunked trailer section too large")
        if line == b"\r\n":
            return fields
        if not line:
            raise MalformedBody("request body ended within its trailer section")
        try:
            fields.append(_field(line))
        except BadRequest as error:
            raise MalformedBody(f"invalid trailer line: {error.message}") from None


def head_with_body(head: bytes, data: bytes, chunked: bool) -> list[bytes]:
    """What to write for a response head and its first body piece: one buffer when the
    piece is small (one send, one system call, instead of two), else the two apart (a
    large piece is not copied just to join it).

    :param chunked: the response is framed with chunked coding: the piece gets its frame.
    """
    if chunked and data:
        data = b"%x\r\n%s\r\n" % (len(data), data)
    if not data:
        return [head]
    if len(data) <= ONE_SEND_BYTES:
        return [head + data]
    return [head, data]
