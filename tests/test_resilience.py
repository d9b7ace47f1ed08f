"""docs/failures.md: same-host retries, failover to the next host, passive ejection, timeouts.

Every failing backend is real: a port nobody listens on (refused), a listener whose
accept queue is full (connect timeout), a host that accepts and never answers (read
timeout), one that resets after reading the body, one that answers 503 N times.
Attempts are read from the proxy's own access log, which lists each one.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections import Counter

import pytest
import requests

from support.backends import Reply, read_request
from support.client import session
from support.net import accepts, reserve_port, wait_until

DOMAIN = "svc.test"
SERVICE = "svc-test"



def hosts_tried(entry: dict) -> list[str]:
    return [a.split(" ")[0] for a in entry["upstream_attempts"]]


def outcomes(entry: dict) -> list[str]:
    return [" ".join(a.split(" ")[1:]) for a in entry["upstream_attempts"]]


@pytest.fixture
def black_hole():
    """A port whose accept queue is full: connecting to it times out, on loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    yield port
    filler.close()
    listener.close()


# -- failover --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
def test_refused_host_fails_over_at_once_for_every_method(backend, start_proxy, method):
    dead, live = reserve_port(), backend()
    p = start_proxy({DOMAIN: [dead, live.port]})
    with session(DOMAIN) as s:
        r = s.request(method, p.url("/proxy/x"), data=b"body" if method != "GET" else None,
                      headers={"X-Request-ID": f"fo-{method}"})
    assert r.status_code == 200
    entry = p.access(f"fo-{method}")
    assert entry["upstream_attempts"] == [f"127.0.0.1:{dead} refused",
                                          f"127.0.0.1:{live.port} response 200"]
    assert entry["duration_ms"] < 1000  # no backoff before the next host
    assert [s.body for s in live.seen] == ([b""] if method == "GET" else [b"body"])


def test_connect_timeout_fails_over_to_the_next_host(backend, start_proxy, black_hole):
    live = backend()
    p = start_proxy({DOMAIN: [black_hole, live.port]},
                    env={"UPSTREAM_CONNECT_TIMEOUT_SECONDS": "0.3"})
    with session(DOMAIN) as s:
        r = s.post(p.url("/proxy/x"), data=b"once", headers={"X-Request-ID": "ct"})
    assert r.status_code == 200
    assert outcomes(p.access("ct")) == ["connect_timeout", "response 200"]
    assert [s.body for s in live.seen] == [b"once"]


def test_one_host_down_60_requests_succeed_and_it_is_tried_once(backend, start_proxy):
    a, b = backend(name="a"), backend(name="b")
    dead = reserve_port()
    p = start_proxy({DOMAIN: [a.port, dead, b.port]})  # HOST_EJECT_SECONDS defaults to 10
    with session(DOMAIN) as s:
        statuses = [s.get(p.url(f"/proxy/{i}"), headers={"X-Request-ID": f"r{i}"}).status_code
                    for i in range(60)]
    assert statuses == [200] * 60
    tried = Counter(h for i in range(60) for h in hosts_tried(p.access(f"r{i}")))
    assert tried[f"127.0.0.1:{dead}"] == 1
    assert a.count + b.count == 60
    assert abs(a.count - b.count) <= 1  # the live hosts share the load evenly


def test_ejected_host_gets_traffic_again_after_it_restarts(backend, start_proxy):
    live = backend(name="live")
    revived_port = reserve_port()
    p = start_proxy({DOMAIN: [revived_port, live.port]}, env={"HOST_EJECT_SECONDS": "0.5"})
    with session(DOMAIN) as s:
        assert s.get(p.url("/proxy/first"), headers={"X-Request-ID": "first"}).ok
        assert outcomes(p.access("first"))[0] == "refused"
        revived = backend(name="revived", port=revived_port)
        wait_until(lambda: s.get(p.url("/proxy/again")).ok and revived.count > 0, 10,
                   interval=0.05, message="the restarted host to get a request")
        before = revived.count
        for _ in range(10):
            assert s.get(p.url("/proxy/rr")).ok
    assert revived.count - before == 5  # back in the round-robin: half of them


def test_every_host_ejected_they_are_tried_anyway(backend, start_proxy):
    first, second = reserve_port(), reserve_port()
    p = start_proxy({DOMAIN: [first, second]})
    with session(DOMAIN) as s:
        r = s.get(p.url("/proxy/x"), headers={"X-Request-ID": "all-down"})
        assert r.status_code == 502
        assert SERVICE in r.json()["error"]
        assert outcomes(p.access("all-down")) == ["refused", "refused"]  # each host once
        backend(port=second)  # one comes back while both are still ejected
        r = s.get(p.url("/proxy/x"), headers={"X-Request-ID": "back"})
    assert r.status_code == 200
    assert hosts_tried(p.access("back"))[-1] == f"127.0.0.1:{second}"


# -- same-host retries -------------------------------------------------------------------
def flaky(failures: int, status: int = 503, headers=()):
    """A backend answering ``status`` ``failures`` times per path, then 200."""
    counts: Counter = Counter()
    lock = threading.Lock()

    def respond(seen):
        with lock:
            counts[seen.target] += 1
            n = counts[seen.target]
        if n <= failures:
            return Reply(status, [("X-Try", str(n)), *headers], f"host's own {status} #{n}"
                         .encode())
        return Reply(200, [("X-Try", str(n))], b"fine")
    return respond


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_are_retried_on_the_same_host(backend, start_proxy, method):
    b = backend(flaky(2))
    p = start_proxy({DOMAIN: [b.port]})
    with session(DOMAIN) as s:
        r = s.request(method, p.url("/proxy/x"), headers={"X-Request-ID": f"i-{method}"})
    assert (r.status_code, r.headers["X-Try"]) == (200, "3")
    assert outcomes(p.access(f"i-{method}")) == ["retryable_status 503"] * 2 + ["response 200"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_post_and_patch_are_never_sent_twice(backend, start_proxy, method):
    b = backend(flaky(5))
    p = start_proxy({DOMAIN: [b.port]})
    with session(DOMAIN) as s:
        r = s.request(method, p.url("/proxy/x"), data=b"pay", headers={"X-Request-ID": "np"})
    assert (r.status_code, r.text) == (503, "host's own 503 #1")
    assert b.count == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_5xx_that_survives_retries_is_passed_through(backend, start_proxy, status):
    b = backend(flaky(10, status, headers=[("X-Own", "yes")]))
    p = start_proxy({DOMAIN: [b.port]})
    with session(DOMAIN) as s:
        r = s.get(p.url("/proxy/x"), headers={"X-Request-ID": "pt"})
    assert (r.status_code, r.text, r.headers["X-Own"]) == (status, f"host's own {status} #3",
                                                         "yes")
    assert len(p.access("pt")["upstream_attempts"]) == 3  # 1 + MAX_HTTP_RETRIES
    assert b.count == 3


def test_max_http_retries_zero_means_one_attempt(backend, start_proxy):
    b = backend(flaky(1))
    p = start_proxy({DOMAIN: [b.port]}, env={"MAX_HTTP_RETRIES": "0"})
    with session(DOMAIN) as s:
        assert s.get(p.url("/proxy/x")).status_code == 503
    assert b.count == 1


@pytest.mark.slow
@pytest.mark.parametrize(("retry_after", "waits"), [("1", 1.0), ("30", 2.0)])
def test_retry_after_is_honoured_up_to_two_seconds(backend, start_proxy, retry_after, waits):
    b = backend(flaky(1, headers=[("Retry-After", retry_after)]))
    p = start_proxy({DOMAIN: [b.port]})
    with session(DOMAIN) as s:
        start = time.monotonic()
        r = s.get(p.url("/proxy/x"))
        took = time.monotonic() - start
    assert r.status_code == 200
    assert b.count == 2
    assert waits <= took < waits + 1.5


def test_429_with_retry_after_goes_back_to_the_client(backend, start_proxy):
    b = backend(flaky(1, 429, headers=[("Retry-After", "1")]))
    p = start_proxy({DOMAIN: [b.port]})
    with session(DOMAIN) as s:
        assert s.get(p.url("/proxy/x")).status_code == 429
    assert b.count == 1


# -- timeouts and resets -----------------------------------------------------------------
@pytest.fixture
def hanging(raw_backend):
    """Accepts, reads the request, never answers (until the test ends)."""
    done = threading.Event()

    def handle(conn, first):
        read_request(conn, first)
        done.wait(30)

    b = raw_backend(handle)
    yield b
    done.set()


@pytest.mark.parametrize(("method", "attempts"), [("GET", 3), ("POST", 1)])
def test_read_timeout_gives_504(hanging, start_proxy, method, attempts):
    p = start_proxy({DOMAIN: [hanging.port]}, env={"UPSTREAM_READ_TIMEOUT_SECONDS": "0.3"})
    with session(DOMAIN) as s:
        r = s.request(method, p.url("/proxy/x"), data=b"x" if method == "POST" else None,
                      headers={"X-Request-ID": "rt"})
    assert r.status_code == 504
    assert SERVICE in r.json()["error"]
    assert outcomes(p.access("rt")) == ["read_timeout"] * attempts
    assert len(hanging.requests) == attempts


@pytest.mark.parametrize(("method", "size", "deliveries"), [
    ("POST", 10, 1), ("PATCH", 10, 1),
    ("PUT", 10, 3),  # idempotent and small enough to resend: retried
    ("PUT", 200_000, 1),  # idempotent but streamed: cannot be resent
])
def test_reset_after_the_body_is_read(raw_backend, start_proxy, method, size, deliveries):
    bodies = []

    def handle(conn, first):
        bodies.append(read_request(conn, first)[1])
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    b = raw_backend(handle)
    p = start_proxy({DOMAIN: [b.port]})
    payload = b"p" * size
    with session(DOMAIN) as s:
        r = s.request(method, p.url("/proxy/x"), data=payload)
    assert r.status_code == 502
    assert r.json()["error"].startswith(f"service '{SERVICE}'")
    assert bodies == [payload] * deliveries


def head_then_reset(bodies):
    """A host that reads the request, sends a response head, and dies before the body."""
    def handle(conn, first):
        bodies.append(read_request(conn, first)[1])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return handle


@pytest.mark.parametrize("server", ["pywsgi", "gunicorn"])
def test_a_host_that_dies_after_the_head_is_replaced_for_idempotent_methods(
        raw_backend, backend, start_proxy, server):
    bodies = []
    dying, live = raw_backend(head_then_reset(bodies)), backend()
    p = start_proxy({DOMAIN: [dying.port, live.port]}, server=server)
    with session(DOMAIN) as s:
        r = s.get(p.url("/proxy/x"), headers={"X-Request-ID": "head-reset"})
    assert r.status_code == 200
    assert live.count == 1
    assert outcomes(p.access("head-reset")) == ["reset 200", "response 200"]  # head, no body


def test_a_post_whose_answer_broke_off_is_not_sent_again(raw_backend, backend, start_proxy):
    bodies = []
    dying, live = raw_backend(head_then_reset(bodies)), backend()
    p = start_proxy({DOMAIN: [dying.port, live.port]})
    with session(DOMAIN) as s:
        r = s.post(p.url("/proxy/x"), data=b"once")
    assert r.status_code == 502
    assert r.json()["error"].startswith(f"service '{SERVICE}'")
    assert (bodies, live.count) == ([b"once"], 0)


def test_attempts_never_exceed_the_bound(backend, start_proxy):
    """Refused, then 503 until retries run out: 1 + (1 + MAX_HTTP_RETRIES) attempts."""
    dead, bad = reserve_port(), backend(flaky(100))
    p = start_proxy({DOMAIN: [dead, bad.port]}, env={"MAX_HTTP_RETRIES": "1",
                                                     "MAX_FORWARD_RETRIES": "1"})
    with session(DOMAIN) as s:
        for i in range(4):
            s.get(p.url(f"/proxy/{i}"), headers={"X-Request-ID": f"b{i}"})
    counts = [len(p.access(f"b{i}")["upstream_attempts"]) for i in range(4)]
    assert max(counts) <= (1 + 1) * (1 + 1)
    assert counts[0] == 3  # refused + two 503s


# -- under load --------------------------------------------------------------------------
@pytest.mark.slow
def test_killing_a_host_under_load_fails_no_request(tmp_path, start_proxy):
    """Three sample backends in processes; one is killed mid-run and started again."""
    import subprocess
    import sys

    from support.proxy import REPO

    ports = [reserve_port() for _ in range(3)]

    def start_backend(port):
        return subprocess.Popen([sys.executable, "-m", "wsgiproxy.sample_backend",
                                 "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL)

    procs = [start_backend(port) for port in ports]
    done = threading.Event()  # set on the way out too: a failure must not leave clients
    try:
        for port in ports:
            wait_until(lambda port=port: accepts(port), 10, message=f"backend {port}")
        # The requests in flight on the killed host's connections break: five of them in
        # a row eject it as an outlier (docs/health.md), for 1 s here instead of 30 s.
        p = start_proxy({DOMAIN: ports}, env={"HOST_EJECT_SECONDS": "1",
                                              "OUTLIER_BASE_EJECTION_SECONDS": "1"})
        failures: list = []
        served = itertools.count()  # next(served) - 1 requests answered so far

        def client():
            with session(DOMAIN) as s:
                while not done.is_set():
                    try:
                        r = s.get(p.url("/proxy/echo"))
                        if r.status_code != 200:
                            failures.append(r.status_code)
                    except requests.RequestException as exc:
                        failures.append(repr(exc))
                    next(served)

        def answered() -> int:
            return next(served) - 1  # reading the counter advances it by one: undo that

        def after(more: int, message: str) -> None:
            target = answered() + more
            wait_until(lambda: answered() >= target, 20, 0.01, message)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        after(100, "load with all hosts up")
        procs[1].kill()
        procs[1].wait()
        dead = f"127.0.0.1:{ports[1]} refused"
        # Refused once, ejected for HOST_EJECT_SECONDS, then tried (and refused) again.
        wait_until(lambda: sum(dead in e["upstream_attempts"] for e in p.access_log()) >= 2,
                   20, 0.05, "the dead host to be tried again after its ejection")
        procs[1] = start_backend(ports[1])
        wait_until(lambda: accepts(ports[1]), 10, message="the restarted backend")
        wait_until(lambda: any(e["upstream_host"] == f"127.0.0.1:{ports[1]}"
                               for e in p.access_log()[-50:]), 20, 0.05,
                   "the restarted host back in rotation")
        after(100, "load after it came back")
        done.set()
        for t in threads:
            t.join(10)
        assert answered() > 400
        assert failures == []
        hosts = Counter(e["upstream_host"] for e in p.access_log()[-200:])
        assert hosts[f"127.0.0.1:{ports[1]}"] > 0  # it is back in rotation
    finally:
        done.set()
        for proc in procs:
            proc.kill()
            proc.wait()

