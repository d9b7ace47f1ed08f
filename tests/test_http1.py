"""wsgiproxy.http1, the request grammar both servers enforce, as tables: no socket."""

from __future__ import annotations

import io

import pytest

from wsgiproxy.errors import BadRequest, HeadersTooLarge, MalformedBody, NotImplementedByProxy
from wsgiproxy.http1 import (
    Framing,
    head_with_body,
    parse_chunk_line,
    parse_request_line,
    read_fields,
    read_trailer,
    request_framing,
)
from wsgiproxy.limits import ONE_SEND_BYTES


def lines(data: bytes):
    return io.BytesIO(data).readline


@pytest.mark.parametrize(("line", "parts"), [
    pytest.param("GET /x HTTP/1.1\r\n", ("GET", "/x", "HTTP/1.1"), id="origin-form"),
    pytest.param("PROPFIND * HTTP/1.0\r\n", ("PROPFIND", "*", "HTTP/1.0"), id="asterisk"),
    pytest.param("GET http://a/x?%2F HTTP/1.1\r\n", ("GET", "http://a/x?%2F", "HTTP/1.1"),
                 id="absolute-form, escapes kept"),
])
def test_parse_request_line(line, parts):
    parsed = parse_request_line(line)
    assert (parsed.method, parsed.target, parsed.version) == parts


@pytest.mark.parametrize("line", [
    pytest.param("GET /x HTTP/1.1\n", id="bare LF"),
    pytest.param("GET  /x HTTP/1.1\r\n", id="two spaces"),
    pytest.param("GET /x HTTP/2.0\r\n", id="HTTP/2 version"),
    pytest.param("GET /x\r\n", id="HTTP/0.9"),
    pytest.param("G(T /x HTTP/1.1\r\n", id="method not a token"),
    pytest.param("GET /a b HTTP/1.1\r\n", id="space in target"),
    pytest.param("GET /\x7f HTTP/1.1\r\n", id="control in target"),
    pytest.param("", id="empty"),
])
def test_parse_request_line_refuses(line):
    with pytest.raises(BadRequest):
        parse_request_line(line)


def test_read_fields_keeps_order_repeats_and_values():
    fields = read_fields(lines(b"Host: a\r\nX-A:  1 \r\nx-a: 2\r\nEmpty:\r\n\r\nBODY"))
    assert fields == [("Host", "a"), ("X-A", "1"), ("x-a", "2"), ("Empty", "")]


@pytest.mark.parametrize(("data", "error"), [
    pytest.param(b"Host: a\n\r\n", BadRequest, id="bare LF"),
    pytest.param(b"Host: a\rb\r\n\r\n", BadRequest, id="CR inside"),
    pytest.param(b"Host: a\r\n folded\r\n\r\n", BadRequest, id="obs-fold"),
    pytest.param(b"Host : a\r\n\r\n", BadRequest, id="space before colon"),
    pytest.param(b"No colon\r\n\r\n", BadRequest, id="no colon"),
    pytest.param(b"X: a\x00b\r\n\r\n", BadRequest, id="NUL in value"),
    pytest.param(b"Host: a\r\n", BadRequest, id="closed before the blank line"),
    pytest.param(b"X: " + b"a" * 9000 + b"\r\n\r\n", HeadersTooLarge, id="line over 8 KiB"),
    pytest.param(b"X: aaaaaaaaaa\r\n" * 5000 + b"\r\n", HeadersTooLarge, id="over 64 KiB"),
])
def test_read_fields_refuses(data, error):
    with pytest.raises(error):
        read_fields(lines(data))


@pytest.mark.parametrize(("lengths", "codings", "version", "framing"), [
    pytest.param([], [], "HTTP/1.1", Framing(), id="no body"),
    pytest.param(["12"], [], "HTTP/1.1", Framing(length=12), id="Content-Length"),
    pytest.param([], ["chunked"], "HTTP/1.1", Framing(chunked=True), id="chunked"),
    pytest.param([], ["Chunked "], "HTTP/1.1", Framing(chunked=True), id="chunked, any case"),
])
def test_request_framing(lengths, codings, version, framing):
    assert request_framing(lengths, codings, version) == framing


@pytest.mark.parametrize(("lengths", "codings", "version", "error"), [
    pytest.param(["1", "1"], [], "HTTP/1.1", BadRequest, id="duplicated Content-Length"),
    pytest.param(["5"], ["chunked"], "HTTP/1.1", BadRequest, id="both"),
    pytest.param(["+5"], [], "HTTP/1.1", BadRequest, id="signed length"),
    pytest.param(["\u0665"], [], "HTTP/1.1", BadRequest, id="non-ASCII digit"),
    pytest.param([], ["gzip, chunked"], "HTTP/1.1", NotImplementedByProxy, id="other coding"),
    pytest.param([], ["chunked"], "HTTP/1.0", BadRequest, id="chunked in HTTP/1.0"),
])
def test_request_framing_refuses(lengths, codings, version, error):
    with pytest.raises(error):
        request_framing(lengths, codings, version)


@pytest.mark.parametrize(("line", "size"), [
    pytest.param(b"5\r\n", 5, id="plain"),
    pytest.param(b"1A\r\n", 26, id="hex"),
    pytest.param(b"5;name=value\r\n", 5, id="extension"),
    pytest.param(b'5 ; a="q \\" x"\r\n', 5, id="quoted extension"),
    pytest.param(b"ffffffffffffffff\r\n", (1 << 64) - 1, id="16 digits"),
])
def test_parse_chunk_line(line, size):
    assert parse_chunk_line(line) == size


@pytest.mark.parametrize("line", [
    pytest.param(b"5\n", id="bare LF"),
    pytest.param(b"0x5\r\n", id="0x prefix"),
    pytest.param(b"-5\r\n", id="negative"),
    pytest.param(b"5;\x01\r\n", id="control in extension"),
    pytest.param(b"1ffffffffffffffff\r\n", id="17 digits"),
    pytest.param(b"\r\n", id="empty"),
])
def test_parse_chunk_line_refuses(line):
    with pytest.raises(MalformedBody):
        parse_chunk_line(line)


def test_read_trailer():
    assert read_trailer(lines(b"X-Sum: 1\r\n\r\n")) == [("X-Sum", "1")]
    assert read_trailer(lines(b"\r\n")) == []


@pytest.mark.parametrize("data", [
    pytest.param(b"X-T: y\n\r\n", id="bare LF: refused, not waited on"),
    pytest.param(b"X-T: y\r\n", id="cut short"),
    pytest.param(b"Bad Name: y\r\n\r\n", id="bad name"),
])
def test_read_trailer_refuses(data):
    with pytest.raises(MalformedBody):
        read_trailer(lines(data))


@pytest.mark.parametrize(("data", "chunked", "writes"), [
    pytest.param(b"", False, [b"H"], id="no body"),
    pytest.param(b"abc", False, [b"Habc"], id="one send"),
    pytest.param(b"abc", True, [b"H3\r\nabc\r\n"], id="one send, chunked"),
    pytest.param(b"x" * (ONE_SEND_BYTES + 1), False, [b"H", b"x" * (ONE_SEND_BYTES + 1)],
                 id="large piece: two sends, no copy"),
])
def test_head_with_body(data, chunked, writes):
    assert head_with_body(b"H", data, chunked) == writes
