"""docs/websocket.md, docs/tls.md, docs/policy.md over real sockets: WebSocket tunnels
(a real websockets client and
server) and the Upgrade rules, TLS to hosts (certificates from a test CA made by
trustme), per-service timeouts, retries, body limits, cache switches and weights."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import threading
import time
from collections import Counter

import pytest
import requests
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from support.backends import Reply, cacheable, read_request
from support.client import session
from support.net import reserve_port, wait_until
from support.proxy import SERVERS

WS = "ws.test"


# -- WebSocket -------------------------------------------------------------------------
@contextlib.contextmanager
def websocket_backend(handler=None):
    """A real WebSocket server (websockets, in a thread): echoes every message."""
    def echo(ws):
        for message in ws:
            ws.send(message)

    with serve(handler or echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(5)


def ws_connect(p, path="/proxy/echo", **kw):
    """A WebSocket client connected through the proxy, with Host: ws.test."""
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    return connect(f"ws://{WS}{path}", sock=sock, open_timeout=10, close_timeout=5, **kw)


def tunnels_active(p) -> float | None:
    found = re.search(r'^proxy_tunnels_active\{service="ws-test"\} (\S+)$',
                      requests.get(p.metrics_url()).text, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.parametrize("server", SERVERS)
def test_websocket_messages_pass_both_ways_unchanged(start_proxy, server):
    with websocket_backend() as port:
        p = start_proxy({WS: [port]}, server=server)
        binary = os.urandom(100 * 1024)  # random: permessage-deflate cannot shrink it
        with ws_connect(p, additional_headers={"X-Request-ID": "ws-1"}) as ws:
            ws.send("hello through the proxy")
            assert ws.recv(timeout=5) == "hello through the proxy"
            ws.send(binary)
            assert ws.recv(timeout=5) == binary
            wait_until(lambda: tunnels_active(p) == 1, 5, 0.05, "the tunnel gauge at 1")
        line = p.access("ws-1")
        wait_until(lambda: tunnels_active(p) == 0, 5, 0.05, "the tunnel gauge back at 0")
    assert (line["status"], line["upgrade"], line["service"]) == (101, "websocket", "ws-test")
    assert line["bytes"] > len(binary)
    assert line["bytes_received"] > len(binary)
    assert line["duration_ms"] > 0


@pytest.mark.parametrize("server", SERVERS)
def test_the_host_closing_closes_the_client(start_proxy, server):
    def once(ws):
        ws.send("bye")
        ws.close(code=1000, reason="done")

    with websocket_backend(once) as port:
        p = start_proxy({WS: [port]}, server=server)
        with ws_connect(p) as ws:
            assert ws.recv(timeout=5) == "bye"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd.code == 1000
        assert requests.get(p.url("/proxy/x"), headers={"Host": WS}).status_code in (
            400, 404, 426, 200)  # the proxy still serves plain requests afterwards


@pytest.mark.parametrize("server", SERVERS)
def test_an_idle_tunnel_is_closed(start_proxy, server):
    with websocket_backend() as port:
        p = start_proxy({WS: [port]}, server=server, env={"TUNNEL_IDLE_TIMEOUT_SECONDS": "0.5"})
        with ws_connect(p) as ws:
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
            started = time.monotonic()
            with pytest.raises((ConnectionClosed, TimeoutError)):
                ws.recv(timeout=5)
            assert time.monotonic() - started < 3


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_gives_a_tunnel_the_graceful_period_then_closes_it(start_proxy, server):
    with websocket_backend() as port:
        p = start_proxy({WS: [port]}, server=server, env={"GRACEFUL_TIMEOUT": "1"})
        with ws_connect(p) as ws:
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            p.proc.send_signal(signal.SIGTERM)
            ws.send("during the grace period")
            assert ws.recv(timeout=5) == "during the grace period"
            started = time.monotonic()
            with pytest.raises((ConnectionClosed, TimeoutError)):
                ws.recv(timeout=10)
            assert time.monotonic() - started < 5
        assert p.proc.wait(10) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_a_handshake_the_host_refuses_is_an_ordinary_response(backend, start_proxy, server):
    b = backend(lambda seen: Reply(403, [("Content-Type", "text/plain")], b"no sockets"))
    p = start_proxy({WS: [b.port]}, server=server)
    r = requests.get(p.url("/proxy/chat"), headers={
        "Host": WS, "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert (r.status_code, r.content) == (403, b"no sockets")
    seen = b.seen[-1]
    assert (seen.header("Upgrade"), seen.header("Connection")) == ("websocket", "Upgrade")
    assert seen.header("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("token", ["h2c", "TLS/1.0", "foo"])
def test_other_upgrade_tokens_are_never_forwarded(backend, start_proxy, server, token):
    b = backend()
    p = start_proxy({WS: [b.port]}, server=server)
    r = requests.get(p.url("/proxy/h2"), headers={
        "Host": WS, "Connection": "Upgrade, HTTP2-Settings", "Upgrade": token,
        "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
    assert r.status_code == 200
    seen = b.seen[-1]
    assert not seen.has("Upgrade")
    assert not seen.has("HTTP2-Settings")  # named in Connection: hop-by-hop too
    assert seen.header("Connection") in (None, "keep-alive", "close")


@pytest.mark.parametrize("server", SERVERS)
def test_a_handshake_fails_over_from_a_dead_host(start_proxy, server):
    with websocket_backend() as port:
        p = start_proxy({WS: [reserve_port(), port]}, server=server)
        with ws_connect(p) as ws:
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"


# -- TLS to hosts ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_backend(backend, ca):
    """Factory: an HTTPS backend with a certificate for ``names``, signed by ``ca``."""
    def start(*names, issuer=None, client_ca=None, respond=None):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (issuer or ca).issue_cert(*names).configure_cert(context)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(context)
        return backend(respond or (lambda seen: Reply(200, [], b"secure")), tls=context)
    return start


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def outcomes(p, rid):
    return [" ".join(a.split(" ")[1:]) for a in p.access(rid)["upstream_attempts"]]


@pytest.mark.parametrize("server", SERVERS)
def test_a_verified_tls_host_with_its_own_server_name(tls_backend, start_proxy, ca_file, server):
    b = tls_backend("payments.internal")
    p = start_proxy({"pay.test": {"hosts": [b.port], "tls": {"ca_file": ca_file,
                                                              "server_name": "payments.internal"}}},
                    server=server)
    with session("pay.test") as s:
        for _ in range(5):
            r = s.get(p.url("/proxy/charge"))
            assert (r.status_code, r.content) == (200, b"secure")
    assert {seen.server_name for seen in b.seen} == {"payments.internal"}  # SNI
    assert len({seen.connection for seen in b.seen}) == 1  # one handshake, reused


def test_the_server_name_defaults_to_the_service_domain(tls_backend, start_proxy, ca_file):
    b = tls_backend("pay.test")
    p = start_proxy({"pay.test": {"hosts": [b.port], "tls": {"ca_file": ca_file}}})
    assert requests.get(p.url("/proxy/x"), headers={"Host": "pay.test"}).content == b"secure"
    assert b.seen[-1].server_name == "pay.test"


@pytest.mark.parametrize("server", SERVERS)
def test_an_untrusted_certificate_is_502_naming_service_and_reason(tls_backend, start_proxy,
                                                                     ca_file, server):
    b = tls_backend("pay.test", issuer=trustme.CA())  # not the CA the proxy trusts
    p = start_proxy({"pay.test": {"hosts": [b.port], "tls": {"ca_file": ca_file}}}, server=server)
    r = requests.get(p.url("/proxy/x"), headers={"Host": "pay.test", "X-Request-ID": "bad"})
    assert r.status_code == 502
    assert r.json()["error"] == ("service 'pay-test': no host could be reached: TLS "
                                 "handshake failed: certificate verify failed: unable to "
                                 "get local issuer certificate")
    assert outcomes(p, "bad") == ["tls_error"]
    assert b.seen == []


def test_a_certificate_for_another_name_is_refused(tls_backend, start_proxy, ca_file):
    b = tls_backend("other.internal")
    p = start_proxy({"pay.test": {"hosts": [b.port], "tls": {"ca_file": ca_file,
                                                              "server_name": "payments.internal"}}})
    r = requests.get(p.url("/proxy/x"), headers={"Host": "pay.test"})
    assert r.status_code == 502
    assert r.json()["error"].endswith("TLS handshake failed: hostname 'payments.internal' "
                                      "doesn't match 'other.internal'")


def test_a_tls_failure_fails_over_and_ejects_the_host(tls_backend, start_proxy, ca_file):
    bad = tls_backend("pay.test", issuer=trustme.CA())
    good = tls_backend("pay.test")
    p = start_proxy({"pay.test": {"hosts": [bad.port, good.port], "tls": {"ca_file": ca_file}}},
                    env={"HOST_EJECT_SECONDS": "60"})
    with session("pay.test") as s:
        for i in range(4):
            assert s.get(p.url("/proxy/x"), headers={"X-Request-ID": f"f{i}"}).ok
    assert outcomes(p, "f0") == ["tls_error", "response 200"]
    assert [outcomes(p, f"f{i}") for i in (1, 2, 3)] == [["response 200"]] * 3  # ejected
    assert requests.get(p.metrics_url()).text.count(
        f'proxy_upstream_attempts_total{{host="127.0.0.1:{bad.port}",outcome="tls_error"') == 1


def test_verify_false_accepts_any_certificate_and_says_so(tls_backend, start_proxy):
    b = tls_backend("whatever.example", issuer=trustme.CA())
    p = start_proxy({"pay.test": {"hosts": [b.port], "tls": {"verify": False}}})
    assert requests.get(p.url("/proxy/x"), headers={"Host": "pay.test"}).content == b"secure"
    p.wait_log("service 'pay-test': the TLS certificates of its hosts are not verified")
    assert "InsecureRequestWarning" not in p.log


def test_a_client_certificate_is_presented(tls_backend, start_proxy, ca, ca_file, tmp_path):
    client_ca = trustme.CA()
    b = tls_backend("pay.test", client_ca=client_ca)
    leaf = client_ca.issue_cert("wsgiproxy.client")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    for blob in leaf.cert_chain_pems:
        with open(cert, "ab") as f:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    p = start_proxy({"with.test": {"hosts": [b.port], "tls": {
                         "ca_file": ca_file, "server_name": "pay.test",
                         "cert_file": str(cert), "key_file": str(key)}},
                     "without.test": {"hosts": [b.port], "tls": {"ca_file": ca_file,
                                                                 "server_name": "pay.test"}}})
    assert requests.get(p.url("/proxy/x"), headers={"Host": "with.test"}).status_code == 200
    subject = dict(x[0] for x in b.seen[-1].peer_cert["subject"])
    assert subject.get("commonName") == "wsgiproxy.client" or \
        ("DNS", "wsgiproxy.client") in b.seen[-1].peer_cert["subjectAltName"]
    refused = requests.get(p.url("/proxy/x"), headers={"Host": "without.test"})
    assert refused.status_code == 502


# -- per-service policy and weights --------------------------------------------------------
def test_weights_share_real_requests(backend, start_proxy):
    heavy, light = backend(name="heavy"), backend(name="light")
    p = start_proxy({"w.test": {"hosts": [{"port": heavy.port, "weight": 3}, light.port]}})
    with session("w.test") as s:
        for _ in range(40):
            assert s.get(p.url("/proxy/x")).ok
    assert (heavy.count, light.count) == (30, 10)


def flaky_503(seen):
    return Reply(503, [], b"busy")


def test_retries_are_per_service(backend, start_proxy):
    tuned, default = backend(flaky_503), backend(flaky_503)
    p = start_proxy({"tuned.test": {"hosts": [tuned.port], "retries": {"http": 0}},
                     "default.test": [default.port]})
    assert requests.get(p.url("/proxy/x"), headers={"Host": "tuned.test"}).status_code == 503
    assert requests.get(p.url("/proxy/x"), headers={"Host": "default.test"}).status_code == 503
    assert (tuned.count, default.count) == (1, 3)  # MAX_HTTP_RETRIES=2 for the other


def test_forward_retries_are_per_service(backend, start_proxy):
    live = backend()
    dead = [reserve_port() for _ in range(3)]
    p = start_proxy({"one.test": {"hosts": [*dead, live.port], "retries": {"forward": 1}}})
    r = requests.get(p.url("/proxy/x"), headers={"Host": "one.test", "X-Request-ID": "fw"})
    assert r.status_code == 502  # two hosts tried, both dead; the live one never reached
    assert outcomes(p, "fw") == ["refused", "refused"]


def test_timeouts_are_per_service(raw_backend, start_proxy):
    done = threading.Event()

    def hang(conn, first):
        read_request(conn, first)
        done.wait(10)

    b = raw_backend(hang)
    p = start_proxy({"slow.test": {"hosts": [b.port], "timeouts": {"read_seconds": 0.3},
                                   "retries": {"http": 0}}})
    try:
        started = time.monotonic()
        r = requests.get(p.url("/proxy/x"), headers={"Host": "slow.test"})
        took = time.monotonic() - started
    finally:
        done.set()
    assert r.status_code == 504
    assert 0.3 <= took < 2  # not UPSTREAM_READ_TIMEOUT_SECONDS (30)
    assert len(b.requests) == 1


def test_eject_seconds_are_per_service(backend, start_proxy):
    live, revived_port = backend(), reserve_port()
    p = start_proxy({"e.test": {"hosts": [revived_port, live.port], "eject_seconds": 0.3}},
                    env={"HOST_EJECT_SECONDS": "60"})
    with session("e.test") as s:
        assert s.get(p.url("/proxy/x")).ok  # refused: ejected for 0.3 s, not 60
        revived = backend(port=revived_port)
        wait_until(lambda: s.get(p.url("/proxy/x")).ok and revived.count > 0, 5, 0.05,
                   "the host back after its short ejection")


def test_body_limits_are_per_service(backend, start_proxy):
    small, big = backend(), backend()
    p = start_proxy({"small.test": {"hosts": [small.port], "max_request_body_bytes": 1024},
                     "big.test": [big.port]})
    body = b"b" * 2048
    assert requests.post(p.url("/proxy/x"), data=body,
                         headers={"Host": "small.test"}).status_code == 413
    assert requests.post(p.url("/proxy/x"), data=body,
                         headers={"Host": "big.test"}).status_code == 200
    assert (small.count, big.count) == (0, 1)


def test_the_cache_can_be_off_or_kept_shorter_per_service(backend, start_proxy):
    off, short, normal = backend(cacheable), backend(cacheable), backend(cacheable)
    p = start_proxy({"off.test": {"hosts": [off.port], "cache": {"enabled": False}},
                     "short.test": {"hosts": [short.port], "cache": {"ttl_seconds": 0.5}},
                     "normal.test": [normal.port]})

    def x_cache(domain):
        return requests.get(p.url("/proxy/c"), headers={"Host": domain}).headers["X-Cache"]

    assert [x_cache("off.test") for _ in range(3)] == ["MISS"] * 3
    assert [x_cache("normal.test") for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert [x_cache("short.test") for _ in range(2)] == ["MISS", "HIT"]
    wait_until(lambda: x_cache("short.test") == "MISS", 5, 0.05, "the short TTL to run out")
    assert x_cache("normal.test") == "HIT"
    assert Counter({"off": off.count, "normal": normal.count}) == {"off": 3, "normal": 1}
