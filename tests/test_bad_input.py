"""docs/bad-input.md: every malformed request gets its status and a JSON error, reaches no host,
and the proxy keeps serving. Raw sockets, because a client library would refuse to send
most of these."""

from __future__ import annotations

import re
import socket

import pytest

from support.net import raw_exchange, wait_until
from support.proxy import SERVERS, proxy_in_front

DOMAIN = "svc.test"
LIMIT = 100_000
OK = f"GET /proxy/ok HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()


@pytest.fixture(scope="module", params=SERVERS)
def shared_proxy(request, tmp_path_factory):
    """One running proxy, per server, for every test of this module (unlike the
    per-test ``start_proxy`` factory): a test reads only its own part of the log."""
    with proxy_in_front(tmp_path_factory.mktemp(request.param), DOMAIN, backends=1,
                        server=request.param, env={"MAX_REQUEST_BODY_BYTES": str(LIMIT)}) as p:
        p.backend = p.backends[0]
        yield p


def req(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + body


H = f"Host: {DOMAIN}\n"
BAD = [
    pytest.param(b"GARBAGE\r\n\r\n", (400,), id="request line"),
    pytest.param(req(f"GET /proxy/x HTTP/9.9\n{H}\n"), (400, 505), id="HTTP version"),
    pytest.param(req(f"GET /proxy/x  HTTP/1.1\n{H}\n"), (400,), id="double space"),
    pytest.param(b"GET /proxy/\xc3\xa9 HTTP/1.1\r\nHost: svc.test\r\n\r\n", (400,),
                 id="non-ASCII target"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}NoColon\n\n"), (400,), id="header no colon"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}X-A : 1\n\n"), (400,),
                 id="space before colon"),
    pytest.param(b"GET /proxy/x HTTP/1.1\nHost: svc.test\n\n", (400,), id="bare LF"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}X-A: 1\n folded\n\n"), (400,), id="obs-fold"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}X-A: a\x00b\n\n"), (400,), id="NUL in value"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}X-A: a\rX-Injected: b\n\n"), (400,),
                 id="CR injection"),
    pytest.param(req(f"POST /proxy/x HTTP/1.1\n{H}Content-Length: 3\nContent-Length: 3\n\n",
                     b"abc"), (400,), id="duplicated Content-Length"),
    pytest.param(req(f"POST /proxy/x HTTP/1.1\n{H}Content-Length: 3\nContent-Length: 4\n\n",
                     b"abcd"), (400,), id="conflicting Content-Length"),
    pytest.param(req(f"POST /proxy/x HTTP/1.1\n{H}Content-Length: +3\n\n", b"abc"), (400,),
                 id="signed Content-Length"),
    pytest.param(req(f"POST /proxy/x HTTP/1.1\n{H}Content-Length: 3, 3\n\n", b"abc"), (400,),
                 id="listed Content-Length"),
    pytest.param(req(f"POST /proxy/x HTTP/1.1\n{H}Content-Length: 3\n"
                     "Transfer-Encoding: chunked\n\n", b"3\r\nabc\r\n0\r\n\r\n"), (400,),
                 id="Content-Length and Transfer-Encoding"),
    pytest.param(req(f"POST /proxy/x HTTP/1.1\n{H}Transfer-Encoding: gzip\n\n"), (400, 501),
                 id="unknown transfer coding"),
    pytest.param(req(f"POST /proxy/x HTTP/1.0\n{H}Transfer-Encoding: chunked\n\n",
                     b"0\r\n\r\n"), (400,), id="chunked HTTP/1.0"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}X-Big: {'a' * 9000}\n\n"), (431, 400),
                 id="header line over 8 KiB"),
    pytest.param(req(f"GET /proxy/x HTTP/1.1\n{H}" +
                     "".join(f"X-H{i}: {'b' * 1000}\n" for i in range(70)) + "\n"),
                 (431, 400), id="header section over 64 KiB"),
    pytest.param(req(f"GET /proxy/{'p' * 9000} HTTP/1.1\n{H}\n"), (414, 400),
                 id="request line over 8 KiB"),
]


@pytest.mark.parametrize(("data", "statuses"), BAD)
def test_bad_request_gets_json_error_and_reaches_no_host(shared_proxy, data, statuses):
    before = shared_proxy.backend.count
    [resp] = raw_exchange(shared_proxy.port, data, methods=["GET"])
    assert resp.status in statuses, resp.head
    assert resp.header("Content-Type") == "application/json"
    assert isinstance(resp.json()["error"], str)
    assert shared_proxy.backend.count == before
    assert not any(s.has("X-Injected") for s in shared_proxy.backend.seen)
    [after] = raw_exchange(shared_proxy.port, OK)
    assert after.status == 200


def test_body_over_limit_by_length_gets_413_before_it_is_sent(shared_proxy):
    before = shared_proxy.backend.count
    with socket.create_connection(("127.0.0.1", shared_proxy.port), timeout=10) as sock:
        sock.sendall(req(f"POST /proxy/x HTTP/1.1\n{H}Content-Length: {LIMIT + 1}\n\n"))
        answer = b""  # no body is sent: the answer cannot be waiting for it
        while chunk := sock.recv(65536):  # the proxy closes after answering
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'{"error": ' in answer
    assert b"Connection: close" in answer
    assert shared_proxy.backend.count == before


def test_chunked_body_over_limit_gets_413(shared_proxy):
    before = shared_proxy.backend.count
    chunk = b"%x\r\n%s\r\n" % (50_000, b"c" * 50_000)
    [resp] = raw_exchange(shared_proxy.port, req(f"POST /proxy/x HTTP/1.1\n{H}"
                                                 "Transfer-Encoding: chunked\n\n",
                                                 chunk * 3 + b"0\r\n\r\n"))
    assert resp.status == 413
    assert "error" in resp.json()
    assert shared_proxy.backend.count == before


def test_body_at_the_limit_is_forwarded(shared_proxy):
    [resp] = raw_exchange(shared_proxy.port, req(f"POST /proxy/x HTTP/1.1\n{H}"
                                                 f"Content-Length: {LIMIT}\n\n", b"l" * LIMIT))
    assert resp.status == 200
    assert shared_proxy.backend.seen[-1].body == b"l" * LIMIT


def test_smuggled_second_request_is_never_forwarded(shared_proxy):
    before = shared_proxy.backend.count
    smuggle = (b"POST /proxy/a HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               b"GET /proxy/smuggled HTTP/1.1\r\nHost: svc.test\r\n\r\n")
    with socket.create_connection(("127.0.0.1", shared_proxy.port), timeout=10) as sock:
        sock.sendall(smuggle)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert data.count(b"\r\n\r\n") == 1  # one response, then the connection closed
    assert shared_proxy.backend.count == before


# -- malformed chunked bodies (docs/bad-input.md): 400, Connection: close, one warning line
CHUNKED = f"POST /proxy/chunked HTTP/1.1\r\n{H.strip()}\r\nTransfer-Encoding: chunked\r\n\r\n"
TAIL = b"GET /proxy/second HTTP/1.1\r\nHost: svc.test\r\n\r\n"  # must never be served
MALFORMED_CHUNKS = [
    pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x prefix"),
    pytest.param(b"+5\r\nhello\r\n0\r\n\r\n", id="plus sign"),
    pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="minus sign"),
    pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="space after size"),
    pytest.param(b" 5\r\nhello\r\n0\r\n\r\n", id="space before size"),
    pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="not hex"),
    pytest.param(b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="size too large"),
    pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare LF after size"),
    pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare LF after data"),
    pytest.param(b"5\r\nhelloXY0\r\n\r\n", id="data not ended by CRLF"),
    pytest.param(b"5;a\x01b\r\nhello\r\n0\r\n\r\n", id="control character in extension"),
    pytest.param(b"5;=x\r\nhello\r\n0\r\n\r\n", id="extension without a name"),
]


def _send_and_read(port: int, data: bytes, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _malformed_body_warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "malformed request body" in line]


def _wait_logged(proxy, answer: bytes) -> None:
    """Wait for the access line of the request ``answer`` answers: its handling, and
    whatever it logged, is over. (The proxy is the module's: a test reads only the log
    written since its own :meth:`~ProxyProcess.log_mark`, up to its own access line.)"""
    rid = re.search(rb"\r\nX-Request-ID: ([^\r]+)\r\n", answer)
    assert rid, answer[:300]
    proxy.access(rid.group(1).decode())


@pytest.mark.parametrize("body", MALFORMED_CHUNKS)
def test_a_malformed_chunked_body_is_400_and_closes(shared_proxy, body):
    before, mark = shared_proxy.backend.count, shared_proxy.log_mark()
    answer = _send_and_read(shared_proxy.port, CHUNKED.encode() + body + TAIL)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer
    assert b'{"error": "malformed request body' in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # the rest is never read as a second request
    assert shared_proxy.backend.count == before
    _wait_logged(shared_proxy, answer)
    warnings = wait_until(lambda: _malformed_body_warnings(shared_proxy.log_since(mark)), 5,
                          0.02, "the warning line")
    assert len(warnings) == 1
    assert '"level": "WARNING"' in warnings[0]
    assert "Traceback" not in shared_proxy.log_since(mark)
    [after] = raw_exchange(shared_proxy.port, OK)
    assert after.status == 200


@pytest.mark.parametrize("body", [
    pytest.param(b"5\r\nhel", id="cut in a chunk"),
    pytest.param(b"5\r\nhello\r\n", id="no last chunk"),
    pytest.param(b"5\r", id="cut in a size line"),
])
def test_a_truncated_chunked_body_is_400(shared_proxy, body):
    before, mark = shared_proxy.backend.count, shared_proxy.log_mark()
    answer = _send_and_read(shared_proxy.port, CHUNKED.encode() + body, half_close=True)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer
    assert shared_proxy.backend.count == before
    _wait_logged(shared_proxy, answer)
    assert "Traceback" not in shared_proxy.log_since(mark)
