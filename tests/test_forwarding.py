"""docs/routing.md, docs/forwarding.md end to end: a real proxy (pywsgi and gunicorn) in
front of real backends."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.backends import Reply, Seen, echo
from support.client import get, session
from support.net import raw_exchange
from support.proxy import SERVERS, proxy_in_front

DOMAIN = "svc.test"
GZ = gzip.compress(b"hello " * 1000)


def respond(seen: Seen) -> Reply:
    path = seen.target.split("?")[0]
    if path == "/cookies":
        return Reply(200, [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
                           ("X-Multi", "one"), ("X-Multi", "two")], b"ok")
    if path == "/interleaved":
        return Reply(200, [("Set-Cookie", "a=1"), ("X-Multi", "one"), ("Set-Cookie", "b=2"),
                           ("X-Multi", "two")], b"ok")
    if path == "/hop":
        return Reply(200, [("Connection", "X-Hop, keep-alive"), ("X-Hop", "1"),
                           ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                           ("Trailer", "X-T"), ("Upgrade", "h2c"), ("X-Keep", "yes")], b"hop")
    if path == "/gzip":
        return Reply(200, [("Content-Encoding", "gzip"), ("Content-Type", "text/plain")], GZ)
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        return Reply(code, [("X-Status", str(code))], b"" if code in (204, 304) else b"body")
    if path == "/reason":
        return Reply(299, [], b"x", reason="Quite Fine")
    if path == "/chunked":
        return Reply(200, [("Transfer-Encoding", "chunked"), ("Content-Length", "999")],
                     [b"abc", b"def"])  # a stray length beside chunked coding
    if path == "/setcookie-once":
        return Reply(200, [("Set-Cookie", "session=secret; Path=/")], b"ok")
    return echo(seen)


@pytest.fixture(scope="module", params=SERVERS)
def shared_proxy(request, tmp_path_factory):
    """One running proxy, per server, for every test of this module (unlike the
    per-test ``start_proxy`` factory)."""
    with proxy_in_front(tmp_path_factory.mktemp(request.param), DOMAIN, respond,
                        server=request.param,
                        env={"MAX_REQUEST_BODY_BYTES": str(1024 * 1024)}) as p:
        yield p


@pytest.fixture
def backends(shared_proxy):
    return shared_proxy.backends


@pytest.fixture
def client():
    s = session()
    s.headers["Host"] = DOMAIN
    yield s
    s.close()


def seen_with(backends, rid: str) -> Seen:
    hits = [s for b in backends for s in b.seen if s.header("X-Request-ID") == rid]
    assert len(hits) == 1, f"{len(hits)} backend requests with id {rid}"
    return hits[0]


# -- methods and bodies ------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                    "HEAD", "PROPFIND"])
def test_every_method_is_forwarded(shared_proxy, backends, client, method):
    r = client.request(method, shared_proxy.url("/proxy/m"),
                       headers={"X-Request-ID": f"m-{method}"})
    assert r.status_code == 200
    assert seen_with(backends, f"m-{method}").method == method
    if method == "HEAD":
        assert r.content == b""


@pytest.mark.parametrize("size", [0, 1, 70_000, 600_000], ids=["empty", "1B", "70KB", "600KB"])
def test_content_length_body_arrives_byte_exact(shared_proxy, backends, client, size):
    body = os.urandom(size)
    rid = f"cl-{size}"
    r = client.post(shared_proxy.url("/proxy/upload"), data=body, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    seen = seen_with(backends, rid)
    assert seen.body == body
    assert seen.header("Content-Length") == str(size)


@pytest.mark.parametrize(("size", "framing"), [
    # Up to 64 KiB a chunked body is read whole: it goes on with a Content-Length (and a
    # retry could send it again).
    pytest.param(60_000, "length", id="small: read whole, with a length"),
    # A longer one is forwarded as it arrives, chunked: the proxy never holds it.
    pytest.param(200_000, "chunked", id="large: streamed on, chunked"),
])
def test_a_chunked_body_arrives_byte_exact(shared_proxy, backends, client, size, framing):
    body = os.urandom(size)
    pieces = (body[i:i + 7000] for i in range(0, len(body), 7000))
    rid = f"chunked-{size}"
    r = client.put(shared_proxy.url("/proxy/upload"), data=pieces, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    seen = seen_with(backends, rid)
    assert seen.body == body
    if framing == "length":
        assert (seen.header("Content-Length"), seen.has("Transfer-Encoding")) == (str(size), False)
    else:
        assert (seen.header("Transfer-Encoding"), seen.has("Content-Length")) == ("chunked", False)


# -- targets -------------------------------------------------------------------------
@pytest.mark.parametrize("target", [
    "/proxy/api/v1/users?a=1",
    "/proxy/a%2fb%2F%41%7e?q=%20x&y=%zz&z",
    "/proxy/../etc/passwd;x=1",
    "/proxy//two//slashes/",
    "/proxy/",
])
def test_target_is_forwarded_byte_for_byte(shared_proxy, backends, target):
    rid = f"t-{abs(hash(target))}"
    [resp] = raw_exchange(shared_proxy.port, (
        f"GET {target} HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Request-ID: {rid}\r\n\r\n").encode())
    assert resp.status == 200
    assert seen_with(backends, rid).target == target[len("/proxy"):]


def test_absolute_form_target_reaches_only_configured_hosts(shared_proxy, backends):
    before = sum(b.count for b in backends)
    [other] = raw_exchange(shared_proxy.port, (
        f"GET http://127.0.0.1:{backends[0].port}/proxy/x HTTP/1.1\r\n"
        f"Host: {DOMAIN}\r\n\r\n").encode())
    assert other.status == 404
    assert "error" in other.json()
    assert sum(b.count for b in backends) == before
    [same] = raw_exchange(shared_proxy.port, (
        f"GET http://{DOMAIN}/proxy/abs?x=1 HTTP/1.1\r\nHost: elsewhere.example\r\n"
        "X-Request-ID: absform\r\n\r\n").encode())
    assert same.status == 200
    seen = seen_with(backends, "absform")
    assert (seen.target, seen.header("Host")) == ("/abs?x=1", DOMAIN)


@pytest.mark.parametrize(("host", "path", "status"), [
    ("unknown.test", "/proxy/x", 404),
    (DOMAIN, "/elsewhere", 404),
    (DOMAIN, "/proxy", 404),
])
def test_unrouted_requests_get_json_errors(shared_proxy, client, host, path, status):
    r = client.get(shared_proxy.url(path), headers={"Host": host})
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.json()) == {"error"}


def test_host_matching_ignores_case_port_and_trailing_dot(shared_proxy, client):
    for host in (DOMAIN.upper(), f"{DOMAIN}:8080", f"{DOMAIN}.", f"{DOMAIN.upper()}.:1"):
        assert client.get(shared_proxy.url("/proxy/h"), headers={"Host": host}).status_code == 200


def test_round_robin_spreads_concurrent_requests_exactly(shared_proxy, backends):
    before = [b.count for b in backends]

    def one(_):
        with session() as s:
            return s.get(shared_proxy.url("/proxy/rr"), headers={"Host": DOMAIN}).status_code

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(one, range(30))) == [200] * 30
    assert [b.count - n for b, n in zip(backends, before, strict=False)] == [10, 10, 10]


# -- request headers -----------------------------------------------------------------
def test_forwarding_headers(shared_proxy, backends, client):
    r = client.get(shared_proxy.url("/proxy/fwd"), headers={
        "X-Request-ID": "fwd", "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Host": "spoofed.example", "X-Forwarded-Proto": "https"})
    assert r.status_code == 200
    seen = seen_with(backends, "fwd")
    assert seen.header("Host") == DOMAIN
    # 127.0.0.1 is not in TRUSTED_PROXIES: what it claims about earlier hops is dropped.
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Host") == DOMAIN
    assert seen.header("X-Forwarded-Proto") == "http"


def test_hop_by_hop_request_headers_are_dropped(shared_proxy, backends):
    [resp] = raw_exchange(shared_proxy.port, (
        f"GET /proxy/hop-req HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Request-ID: hopreq\r\n"
        "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        "TE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\n"
        "Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n").encode())
    assert resp.status == 200
    seen = seen_with(backends, "hopreq")
    for name in ("Connection", "X-Secret", "Keep-Alive", "TE", "Trailer", "Upgrade",
                 "Proxy-Authorization", "Proxy-Connection"):
        assert not seen.has(name), name
    assert seen.header("X-Kept") == "yes"


def test_no_user_agent_or_accept_encoding_is_invented(shared_proxy, backends):
    raw_exchange(shared_proxy.port, f"GET /proxy/ua HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                             "X-Request-ID: bare\r\n\r\n".encode())
    seen = seen_with(backends, "bare")
    assert not seen.has("User-Agent")
    assert not seen.has("Accept-Encoding")


@pytest.mark.parametrize(("sent", "kept"), [
    ("abc-123.X:y_z", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("has space", False),
    ("semi;colon", False),
    (None, False),
])
def test_request_id_is_kept_when_sane_and_echoed(shared_proxy, backends, client, sent, kept):
    headers = {"X-Request-ID": sent} if sent is not None else {}
    r = client.get(shared_proxy.url("/proxy/rid"), headers=headers)
    rid = r.headers["X-Request-ID"]
    if kept:
        assert rid == sent
    else:
        assert rid != sent
        assert 1 <= len(rid) <= 128
    assert seen_with(backends, rid).target == "/rid"


def test_request_id_is_echoed_on_proxy_errors(shared_proxy, client):
    r = client.get(shared_proxy.url("/nope"), headers={"X-Request-ID": "err-1"})
    assert (r.status_code, r.headers["X-Request-ID"]) == (404, "err-1")


# -- responses -----------------------------------------------------------------------
def test_repeated_response_headers_stay_separate(shared_proxy):
    conn = http.client.HTTPConnection("127.0.0.1", shared_proxy.port, timeout=10)
    conn.request("GET", "/proxy/cookies", headers={"Host": DOMAIN})
    resp = conn.getresponse()
    resp.read()
    headers = resp.getheaders()
    assert [v for k, v in headers if k == "Set-Cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert [v for k, v in headers if k == "X-Multi"] == ["one", "two"]
    conn.close()


def test_response_headers_keep_the_hosts_order(shared_proxy):
    """Repeats of a name that the host interleaved with another name reach the client
    in the host's order, not grouped by name."""
    [resp] = raw_exchange(shared_proxy.port, (
        f"GET /proxy/interleaved HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n").encode())
    assert [(k, v) for k, v in resp.headers if k in ("Set-Cookie", "X-Multi")] == [
        ("Set-Cookie", "a=1"), ("X-Multi", "one"), ("Set-Cookie", "b=2"), ("X-Multi", "two")]


def test_hop_by_hop_response_headers_are_dropped(shared_proxy, client):
    r = get(shared_proxy, "/proxy/hop", client=client)
    assert r.content == b"hop"
    for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert name not in r.headers, name
    assert r.headers["X-Keep"] == "yes"


def test_gzip_body_passes_undecoded(shared_proxy):
    [resp] = raw_exchange(shared_proxy.port, f"GET /proxy/gzip HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                                      "Accept-Encoding: gzip\r\n\r\n".encode())
    assert resp.body == GZ
    assert resp.header("Content-Encoding") == "gzip"
    assert resp.header("Content-Length") == str(len(GZ))


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(shared_proxy, code):
    [resp, after] = raw_exchange(
        shared_proxy.port,
        f"GET /proxy/status/{code} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode(),
        f"GET /proxy/after HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
    assert (resp.status, resp.body, resp.header("X-Status")) == (code, b"", str(code))
    assert after.status == 200  # the connection was not confused by a phantom body


def test_head_keeps_the_length_and_sends_no_body(shared_proxy):
    [head, after] = raw_exchange(
        shared_proxy.port, f"HEAD /proxy/gzip HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode(),
        f"GET /proxy/after HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
    assert head.header("Content-Length") == str(len(GZ))
    assert head.body == b""
    assert after.status == 200


@pytest.mark.parametrize("code", [201, 301, 404, 418, 500, 503, 599])
def test_status_is_passed_through(shared_proxy, client, code):
    r = get(shared_proxy, f"/proxy/status/{code}", client=client, allow_redirects=False)
    assert (r.status_code, r.headers["X-Status"]) == (code, str(code))


def test_reason_phrase_is_passed_through(shared_proxy):
    [resp] = raw_exchange(shared_proxy.port, f"GET /proxy/reason HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n"
                          .encode())
    assert (resp.status, resp.reason) == (299, "Quite Fine")


def test_a_chunked_response_with_a_stray_length_is_reframed(shared_proxy, client):
    r = get(shared_proxy, "/proxy/chunked", client=client)
    assert r.content == b"abcdef"
    assert r.headers.get("Content-Length") in (None, "6")


def test_upstream_date_reaches_the_client_once(shared_proxy):
    [resp] = raw_exchange(shared_proxy.port, f"GET /proxy/d HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n"
                          .encode())
    assert len(resp.all("Date")) == 1
    assert not any("gunicorn" in v for v in resp.all("Server"))


def test_one_clients_cookies_never_reach_another(shared_proxy, backends, client):
    first = get(shared_proxy, "/proxy/setcookie-once", client=client)
    assert first.headers["Set-Cookie"] == "session=secret; Path=/"
    with session() as other:
        other.get(shared_proxy.url("/proxy/cookie-check"),
                  headers={"Host": DOMAIN, "X-Request-ID": "cookie-check"})
    assert not seen_with(backends, "cookie-check").has("Cookie")


def test_keeps_serving_concurrently(shared_proxy, client):
    def one(i):
        with session() as s:
            r = s.post(shared_proxy.url(f"/proxy/c{i}"), data=b"x" * i, headers={"Host": DOMAIN})
            return r.json()["body_bytes"]

    with ThreadPoolExecutor(20) as pool:
        assert sorted(pool.map(one, range(100))) == list(range(100))


def test_json_echo_roundtrip(shared_proxy, client):
    payload = {"hello": "world", "n": [1, 2, 3]}
    r = client.post(shared_proxy.url("/proxy/json"), json=payload)
    assert r.json()["body_bytes"] == len(json.dumps(payload))
    assert Counter([r.status_code]) == {200: 1}
    assert threading.active_count() >= 1
