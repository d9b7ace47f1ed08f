"""docs/strangers.md over real sockets, under both servers: each attack a stranger could
make (a crafted Host that poisons the cache, clients that hang up mid-response, stalled
headers and bodies, huge chunked uploads, forged forwarding headers, a garbage cache
entry, too many tunnels) fails, and ordinary clients keep being served."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import msgpack
import psutil
import pytest
import redis
import requests

from support.backends import Reply
from support.client import get
from support.net import raw_exchange, wait_until
from support.proxy import SERVERS, ProxyProcess
from support.redis_server import REDIS_URL, needs_redis

pytestmark = pytest.mark.parametrize("server", SERVERS)


def echo_host_link(seen):
    """A host that builds links from Host, and says its page may be cached."""
    body = json.dumps({"link": f"http://{seen.header('Host')}/next"}).encode()
    return Reply(200, [("Content-Type", "application/json"),
                       ("Cache-Control", "public, max-age=60")], body)


def counter(name: str, labels: str, proxy: ProxyProcess) -> float:
    """A counter's value on the proxy's /metrics (summed over workers)."""
    text = requests.get(proxy.metrics_url(), timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the Host header ---------------------------------------------------------------------
@pytest.mark.parametrize("host", ["app.test:@evil.example", "[app.test]:x", "app.test:80:80",
                                  "evil@app.test", "app.test:", "app .test"])
def test_a_crafted_host_is_400_and_reaches_no_host(tmp_path, backend, server, host):
    b = backend(echo_host_link)
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p:
        [answer] = raw_exchange(p.port, f"GET /proxy/page HTTP/1.1\r\nHost: {host}\r\n"
                                        "\r\n".encode())
        assert answer.status == 400, answer.body
        assert "error" in answer.json()
        assert b.count == 0
        assert get(p, "/proxy/page", host="app.test").status_code == 200  # still serving


def test_a_host_that_echoes_host_cannot_poison_the_cache(tmp_path, backend, server):
    b = backend(echo_host_link)
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p:
        # The attacker's request, and a valid Host spelled differently, are not the
        # ordinary client's key.
        [refused] = raw_exchange(p.port, b"GET /proxy/page HTTP/1.1\r\n"
                                         b"Host: app.test:@evil.example\r\n\r\n")
        assert refused.status == 400
        odd = get(p, "/proxy/page", host="app.test:8080")
        assert odd.json()["link"] == "http://app.test:8080/next"
        ordinary = get(p, "/proxy/page", host="app.test")
        assert ordinary.headers["X-Cache"] == "MISS"
        assert ordinary.json()["link"] == "http://app.test/next"
        again = get(p, "/proxy/page", host="APP.test.")  # the same key, normalised
        assert again.headers["X-Cache"] == "HIT"
        assert again.json()["link"] == "http://app.test/next"
        assert b.count == 2


@pytest.mark.parametrize("spelling", ["APP.TEST.", "app.test:80", "App.Test"])
def test_a_response_to_an_odd_spelling_of_host_is_never_stored(tmp_path, backend, server,
                                                               spelling):
    """To a browser ``app.test.`` or ``app.test:80`` is another origin: a page whose links
    say so must not reach the ordinary client, even when the stranger asks first."""
    b = backend(echo_host_link)
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p:
        first = get(p, "/proxy/page", host=spelling)
        assert first.json()["link"] == f"http://{spelling}/next"
        ordinary = get(p, "/proxy/page", host="app.test")
        assert ordinary.headers["X-Cache"] == "MISS"
        assert ordinary.json()["link"] == "http://app.test/next"
        assert get(p, "/proxy/page", host="app.test").headers["X-Cache"] == "HIT"


def test_a_trusted_peers_host_claims_are_not_stored(tmp_path, backend, server):
    def echo_claims(seen):
        body = f"{seen.header('X-Forwarded-Host')} {seen.header('X-Original-URL')}".encode()
        return Reply(200, [("Cache-Control", "public, max-age=60")], body)

    b = backend(echo_claims)
    env = {"TRUSTED_PROXIES": "127.0.0.1"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        claimed = get(p, "/proxy/c", host="app.test",
                      headers={"X-Forwarded-Host": "evil.example", "X-Original-URL": "/admin"})
        assert claimed.text == "evil.example /admin"
        plain = get(p, "/proxy/c", host="app.test")
        assert (plain.headers["X-Cache"], plain.text) == ("MISS", "app.test None")


# -- unread bodies ----------------------------------------------------------------------
def test_an_answer_before_the_body_closes_the_connection(tmp_path, backend, server):
    """A 404 answered without reading a (huge) body: the server must not go on reading
    it for the next request; the connection closes and others are served."""
    b = backend()
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p, \
            socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST /nope HTTP/1.1\r\nHost: app.test\r\n"
                  b"Content-Length: 100000000000000\r\n\r\n" + b"x" * 65536)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:100]
        assert b"\r\nConnection: close\r\n" in answer
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(2000):  # the stranger keeps sending; the proxy has hung up
                s.sendall(b"x" * 65536)
        assert get(p, "/proxy/ok", host="app.test", timeout=5).status_code == 200
        assert time.monotonic() - started < 5


# -- coalescing locks ---------------------------------------------------------------------
def test_clients_that_hang_up_mid_response_leave_no_lock(tmp_path, backend, server):
    """Three clients hang up 0.2 s into a slow cacheable response (no-cache: each request
    goes upstream); the next request for the URL must not wait for a lock."""
    def slow_cacheable(seen):
        def pieces():
            for _ in range(20):
                yield b"x" * 10240
                time.sleep(0.05)
        return Reply(200, [("Cache-Control", "no-cache"), ("ETag", '"v1"'),
                           ("Content-Length", str(20 * 10240))], pieces())

    b = backend(slow_cacheable)
    env = {"CACHE_LOCK_TIMEOUT_SECONDS": "5"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", p.port)) as s:
                s.sendall(b"GET /proxy/big HTTP/1.1\r\nHost: app.test\r\n\r\n")
                s.recv(1024)
                time.sleep(0.2)
        started = time.monotonic()
        response = get(p, "/proxy/big", host="app.test", timeout=10)
        assert response.status_code == 200
        assert time.monotonic() - started < 3, "the request waited for a lock"


# -- slow clients ---------------------------------------------------------------------------
def test_a_stalled_header_section_gets_408_and_others_are_served(tmp_path, backend, server):
    b = backend()
    env = {"CLIENT_HEADER_TIMEOUT_SECONDS": "1"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /proxy/x HTTP/1.1\r\nHost: app.test\r\nX-Half: ")
            started = time.monotonic()
            assert get(p, "/proxy/ok", host="app.test", timeout=2).status_code == 200
            answer = s.recv(65536)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"error"' in answer
        assert 0.5 < waited < 3
        assert b.paths()["/x"] == 0
        wait_until(lambda: counter("proxy_client_timeouts_total", 'phase="header"', p) == 1,
                   5, message="the header timeout counted")


def test_a_stalled_body_gets_408_and_its_upstream_request_is_aborted(tmp_path, backend,
                                                                     server):
    b = backend()
    env = {"CLIENT_BODY_TIMEOUT_SECONDS": "1"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"POST /proxy/upload HTTP/1.1\r\nHost: app.test\r\n"
                      b"Content-Length: 100000\r\n\r\nabc")
            started = time.monotonic()
            answer = s.recv(65536)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert 0.5 < waited < 3
        # The upstream request was aborted: the host never got the whole body.
        assert all(len(seen.body) < 100000 for seen in b.seen)
        wait_until(lambda: counter("proxy_client_timeouts_total", 'phase="body"', p) == 1,
                   5, message="the body timeout counted")


def test_a_client_that_stops_reading_is_dropped_quietly(tmp_path, backend, server):
    big = b"r" * (64 * 2**20)
    b = backend(lambda seen: Reply(200, [("Cache-Control", "no-store")], big))
    env = {"CLIENT_BODY_TIMEOUT_SECONDS": "1"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        mark = p.log_mark()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", p.port))
            s.sendall(b"GET /proxy/big HTTP/1.1\r\nHost: app.test\r\n\r\n")
            wait_until(lambda: counter("proxy_client_timeouts_total", 'phase="response"', p)
                       == 1, 15, 0.1, "the stalled reader dropped")
        assert get(p, "/proxy/ok", host="app.test").status_code == 200
        assert "Traceback" not in p.log_since(mark)


def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_time(tmp_path, backend,
                                                                          server):
    b = backend()
    env = {"KEEPALIVE_SECONDS": "1", "CLIENT_HEADER_TIMEOUT_SECONDS": "10"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p, \
            socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(1024) == b""  # closed, with no answer: there was no request
        assert 0.5 < time.monotonic() - started < 5


@pytest.mark.slow
def test_many_stalled_connections_do_not_deny_service(tmp_path, backend, server):
    b = backend()
    env = {"CLIENT_HEADER_TIMEOUT_SECONDS": "30", "CLIENT_BODY_TIMEOUT_SECONDS": "30"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        stalled = []
        try:
            for i in range(1500):
                s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
                if i % 10:
                    s.sendall(b"GET /proxy/x HTTP/1.1\r\nHost: app.test\r\nX-A: ")
                else:
                    s.sendall(b"POST /proxy/x HTTP/1.1\r\nHost: app.test\r\n"
                              b"Content-Length: 10\r\n\r\nabc")
                stalled.append(s)
            wait_until(lambda: len(psutil.Process(p.worker_pids()[0]).net_connections())
                       >= 1500, 20, 0.1, "the worker holding every connection")
            started = time.monotonic()
            assert get(p, "/proxy/ok", host="app.test", timeout=5).status_code == 200
            assert time.monotonic() - started < 1
        finally:
            for s in stalled:
                s.close()


# -- memory -------------------------------------------------------------------------------
def test_chunked_uploads_stream_with_bounded_memory(tmp_path, backend, server):
    """Concurrent chunked uploads of 9 MiB each are forwarded as they arrive: the
    worker's memory grows by a few pieces per upload, not by the bodies."""
    b = backend(lambda seen: Reply(200, [], str(len(seen.body)).encode()))
    uploads, size = 20, 9 * 1024 * 1024
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p:
        worker = psutil.Process(p.worker_pids()[0])
        get(p, "/proxy/warm", host="app.test")
        before = worker.memory_info().rss
        peak = [before]

        def upload():
            piece = b"y" * 65536

            def pieces():
                for _ in range(size // len(piece)):
                    yield piece
                    peak[0] = max(peak[0], worker.memory_info().rss)
            response = get(p, "/proxy/upload", host="app.test", method="POST",
                           data=pieces(), timeout=60)
            assert response.text == str(size)

        threads = [threading.Thread(target=upload) for _ in range(uploads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert b.count == uploads + 1
        added = (peak[0] - before) / 2**20
        assert added < 40, f"{uploads} uploads added {added:.0f} MiB"


def test_a_chunked_body_over_the_limit_is_413(tmp_path, backend, server):
    b = backend()
    env = {"MAX_REQUEST_BODY_BYTES": "200000"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        def pieces():
            for _ in range(10):
                yield b"z" * 65536
        response = get(p, "/proxy/up", host="app.test", method="POST", data=pieces())
        assert response.status_code == 413
        assert "limit" in response.json()["error"]
        assert b.paths()["/up"] == 0  # the upstream request was cut off, never whole
        assert get(p, "/proxy/ok", host="app.test").status_code == 200


# -- forwarding headers --------------------------------------------------------------------
FORGED = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6",
          "X-Original-URL": "/admin", "X-Rewrite-URL": "/admin", "X-Forwarded-Port": "1",
          "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
          "X-Forwarded-Scheme": "https", "Client-IP": "6.6.6.6", "X-Original-Host": "evil",
          "CF-Connecting-IP": "6.6.6.6", "X-HTTP-Method-Override": "DELETE"}


def test_forwarding_headers_from_an_untrusted_peer_are_replaced(tmp_path, backend, server):
    b = backend()
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p:
        response = get(p, "/proxy/x", host="app.test", headers=FORGED)
        seen = b.seen[-1]
        assert seen.header("X-Forwarded-For") == "127.0.0.1"
        assert seen.header("X-Forwarded-Host") == "app.test"
        assert seen.header("X-Forwarded-Proto") == "http"
        for name in ("Forwarded", "X-Real-IP", "X-Original-URL", "X-Rewrite-URL",
                     "X-Forwarded-Port", "X-Forwarded-Scheme", "Client-IP", "X-Original-Host",
                     "CF-Connecting-IP", "X-HTTP-Method-Override"):
            assert not seen.has(name), name
        line = p.access(response.headers["X-Request-ID"])
        assert line["client"] == "127.0.0.1"


def test_forwarding_headers_from_a_trusted_peer_are_kept(tmp_path, backend, server):
    b = backend()
    env = {"TRUSTED_PROXIES": "127.0.0.0/8, 10.0.0.0/8"}
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        headers = {**FORGED, "X-Forwarded-For": "203.0.113.9, 10.1.2.3"}
        response = get(p, "/proxy/x", host="app.test", headers=headers)
        seen = b.seen[-1]
        assert seen.header("X-Forwarded-For") == "203.0.113.9, 10.1.2.3, 127.0.0.1"
        assert seen.header("X-Forwarded-Proto") == "https"
        assert seen.header("X-Real-IP") == "6.6.6.6"
        # The rightmost address no trusted proxy vouches for is the client.
        line = p.access(response.headers["X-Request-ID"])
        assert line["client"] == "203.0.113.9"


# -- the cache store ---------------------------------------------------------------------
@needs_redis
def test_a_garbage_cache_entry_is_a_counted_miss(tmp_path, backend, server):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")], b"real"))
    env = {"CACHE_URL": REDIS_URL}
    target = f"/garbage-{server}-{time.time_ns()}"
    conn = redis.Redis.from_url(REDIS_URL)
    key = f"wsgiproxy:http://app.test{target}"
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        for garbage in (b"not msgpack \xff", msgpack.packb([1, "200", 5]),
                        msgpack.packb([1, 200, "OK", "headers", b"", 0, 0, 60, {}, False])):
            conn.set(key, garbage)
            response = get(p, f"/proxy{target}", host="app.test")
            assert response.status_code == 200
            assert response.content == b"real"
            assert response.headers["X-Cache"] == "MISS"
        assert counter("proxy_cache_errors_total", 'operation="decode"', p) >= 3
    conn.delete(key)
    conn.close()


# -- tunnels -----------------------------------------------------------------------------
def test_tunnels_beyond_max_tunnels_get_503(tmp_path, raw_backend, server):
    def websocket(conn, first):
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n")
        conn.recv(1)  # hold the tunnel open until the test ends

    b = raw_backend(websocket)
    env = {"MAX_TUNNELS": "2"}
    upgrade = (b"GET /proxy/ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server, env=env) as p:
        open_ones = []
        try:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
                s.sendall(upgrade)
                assert s.recv(1024).startswith(b"HTTP/1.1 101 ")
                open_ones.append(s)
            [refused] = raw_exchange(p.port, upgrade)
            assert refused.status == 503
            assert "tunnels" in refused.json()["error"]
            assert b.connections == 2
        finally:
            for s in open_ones:
                s.close()
        # Closed tunnels free their places.
        def a_tunnel_opens():
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
                s.sendall(upgrade)
                return s.recv(1024).startswith(b"HTTP/1.1 101 ")
        wait_until(a_tunnel_opens, 10, 0.1, "a place for a tunnel")


# -- pywsgi's trailers ---------------------------------------------------------------------
def test_a_trailer_line_ended_by_a_bare_lf_is_400_not_a_hang(tmp_path, backend, server):
    b = backend()
    with ProxyProcess(tmp_path, {"app.test": [b.port]}, server=server) as p:
        [answer] = raw_exchange(p.port, b"POST /proxy/x HTTP/1.1\r\nHost: app.test\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n"
                                        b"5\r\nhello\r\n0\r\nX-Trailer: y\n\r\n", timeout=5)
        assert answer.status == 400
        assert b.count == 0
