"""docs/metrics.md: metrics (exact counts, parsed with prometheus-client's own parser), health,
readiness, graceful shutdown and the access log, under both servers."""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest
import requests

from support.backends import Reply
from support.client import session
from support.metrics import scrape, value
from support.net import accepts, reserve_port, wait_until
from support.proxy import SERVERS

DOMAIN = "obs.test"


def by_path(seen):
    """/cached...: fresh for a minute; /error...: a 500; anything else: a 200, not stored."""
    if seen.target.startswith("/cached"):
        return Reply(200, [("Cache-Control", "max-age=60")], b"c")
    if seen.target.startswith("/error"):
        return Reply(500, [], b"e")
    return Reply(200, [], b"ok")


@pytest.mark.parametrize("server", SERVERS)
def test_metrics_count_known_traffic_exactly(backend, start_proxy, server):
    b = backend(by_path)
    dead = reserve_port()
    p = start_proxy({DOMAIN: [dead, b.port]}, server=server)
    service = "obs-test"
    # The harness's readiness probe was one unrouted request; it is counted when its
    # response has closed, which can be just after the probe has read it.
    before = wait_until(lambda: (m := scrape(p)) and value(
        m, "proxy_requests_total", service="unrouted", method="GET", code="404") == 1
        # its duration too: a finished request is two writes, and a scrape can fall
        # between them
        and value(m, "proxy_request_duration_seconds_count", service="unrouted") == 1
        and m, 10, message="the readiness probe to be counted")
    with session(DOMAIN) as s:
        assert s.get(p.url("/proxy/first")).status_code == 200  # dead refused, then b
        for _ in range(3):
            s.get(p.url("/proxy/cached"))  # miss, hit, hit
        s.post(p.url("/proxy/post"), data=b"x")
        s.get(p.url("/proxy/error"))
        s.get(p.url("/proxy/x"), headers={"Host": "evil.example"})  # unrouted
        s.request("BREW", p.url("/proxy/pot"))
    def delta():
        now = scrape(p)
        return {k: v - before.get(k, 0.0) for k, v in now.items() if not k[0].endswith(
            "_created")}
    m = wait_until(lambda: (d := delta()) and value(
        d, "proxy_request_duration_seconds_count", service="unrouted") == 1 and d, 10)
    total = 8
    assert value(m, "proxy_requests_total", service=service, method="GET", code="200") == 4
    assert value(m, "proxy_requests_total", service=service, method="POST", code="200") == 1
    assert value(m, "proxy_requests_total", service=service, method="GET", code="500") == 1
    assert value(m, "proxy_requests_total", service=service, method="OTHER", code="200") == 1
    assert value(m, "proxy_requests_total", service="unrouted", method="GET", code="404") == 1
    durations = sum(v for k, v in m.items() if k[0] == "proxy_request_duration_seconds_count")
    assert durations == total
    # forwarded (and answered by a host): everything but the two cache hits and the 404
    assert value(m, "proxy_request_processing_seconds_count", service=service) == 5
    assert value(m, "proxy_response_processing_seconds_count", service=service) == 5
    assert value(m, "proxy_upstream_attempts_total", service=service,
                 host=f"127.0.0.1:{dead}", outcome="refused") == 1
    assert value(m, "proxy_upstream_attempts_total", service=service,
                 host=f"127.0.0.1:{b.port}", outcome="response") == 5
    assert value(m, "proxy_cache_requests_total", service=service, result="hit") == 2
    assert value(m, "proxy_cache_requests_total", service=service, result="miss") == 3
    assert value(scrape(p), "proxy_upstream_host_up", service=service,
                 host=f"127.0.0.1:{b.port}") == 1
    assert value(m, "proxy_requests_in_flight") == 0
    assert value(scrape(p), "proxy_upstream_host_up", service=service,
                 host=f"127.0.0.1:{dead}") == 0
    assert not any("evil" in str(k) for k in m)  # a client's Host never becomes a label


def test_gunicorn_metrics_sum_every_worker(backend, start_proxy):
    b = backend(by_path)
    p = start_proxy({DOMAIN: [b.port]}, server="gunicorn", workers=2)
    sent = 0
    misses = 0

    def one_more():
        nonlocal sent, misses
        with session(DOMAIN) as s:  # a new connection: the kernel picks the worker
            r = s.get(p.url("/proxy/cached"))
        sent += 1
        misses += r.headers["X-Cache"] == "MISS"  # each worker has its own memory cache
        return misses == 2

    wait_until(one_more, 30, 0, "both workers to serve a request")
    m = scrape(p)
    assert value(m, "proxy_requests_total", service="obs-test", method="GET",
                 code="200") == sent
    assert value(m, "proxy_cache_requests_total", service="obs-test", result="miss") == 2
    # one metrics server, in the master: no worker holds the port
    holders = {c.pid for c in psutil.net_connections("tcp")
               if c.laddr and c.laddr.port == p.metrics_port and c.status == "LISTEN"}
    assert holders == {p.pid}


@pytest.mark.parametrize("server", SERVERS)
def test_health_and_readiness(backend, start_proxy, server):
    p = start_proxy({DOMAIN: [backend().port]}, server=server)
    assert requests.get(p.metrics_url("/healthz"), timeout=5).status_code == 200
    assert requests.get(p.metrics_url("/readyz"), timeout=5).status_code == 200
    assert requests.get(p.metrics_url("/nope"), timeout=5).status_code == 404
    assert requests.post(p.metrics_url("/metrics"), timeout=5).status_code == 405


def test_metrics_addr_empty_turns_the_server_off(backend, start_proxy):
    p = start_proxy({DOMAIN: [backend().port]}, env={"METRICS_ADDR": ""})
    with pytest.raises(requests.ConnectionError):
        requests.get(p.metrics_url("/healthz"), timeout=2)


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_finishes_the_slow_request_then_exits_0(backend, start_proxy, server):
    release = threading.Event()

    def slow(seen):
        release.wait(20)
        return Reply(200, [], b"finished")

    p = start_proxy({DOMAIN: [backend(slow).port]}, server=server)
    result = {}

    def client():
        with session(DOMAIN) as s:
            r = s.get(p.url("/proxy/slow"))
            result["status"], result["body"] = r.status_code, r.content

    t = threading.Thread(target=client)
    t.start()
    wait_until(lambda: value(scrape(p), "proxy_requests_in_flight") == 1, 10,
               message="the slow request to be in flight")
    p.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: requests.get(p.metrics_url("/readyz"), timeout=2).status_code == 503,
               10, message="/readyz to say 503")
    wait_until(lambda: not accepts(p.port), 5, message="the listener to close")
    release.set()
    t.join(20)
    assert result == {"status": 200, "body": b"finished"}
    assert p.proc.wait(20) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_finishes_a_long_streamed_response(backend, start_proxy, server):
    release = threading.Event()

    def stream(seen):
        def body():
            yield b"a" * 1000
            release.wait(20)
            yield b"b" * 1000
        return Reply(200, [("Content-Length", "2000")], body())

    p = start_proxy({DOMAIN: [backend(stream).port]}, server=server)
    with session(DOMAIN) as s, s.get(p.url("/proxy/stream"), stream=True) as r:
        first = r.raw.read(1000)
        p.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: requests.get(p.metrics_url("/readyz"), timeout=2).status_code
                   == 503, 10, message="shutdown to begin")
        release.set()
        rest = r.raw.read()
    assert first + rest == b"a" * 1000 + b"b" * 1000
    assert p.proc.wait(20) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_idle_keep_alive_connections_do_not_delay_shutdown(backend, start_proxy, server):
    p = start_proxy({DOMAIN: [backend().port]}, server=server, env={"GRACEFUL_TIMEOUT": "30"})
    with session(DOMAIN) as s:
        assert s.get(p.url("/proxy/x")).ok  # this connection now sits idle, kept alive
        started = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(20) == 0
    assert time.monotonic() - started < 10  # far less than GRACEFUL_TIMEOUT


@pytest.mark.parametrize("server", SERVERS)
def test_access_log_line(backend, start_proxy, server):
    b = backend()
    p = start_proxy({DOMAIN: [b.port]}, server=server)
    with session(DOMAIN) as s:
        r = s.post(p.url("/proxy/logged?q=1"), data=b"12345",
                   headers={"X-Request-ID": "log-me"})
    line = p.access("log-me")
    assert r.headers["X-Request-ID"] == "log-me"
    assert {k: line[k] for k in ("request_id", "client", "method", "service", "path",
                                 "status", "upstream_host", "attempts", "cache", "complete")} \
        == {"request_id": "log-me", "client": "127.0.0.1", "method": "POST",
            "service": "obs-test", "path": "/proxy/logged?q=1", "status": 200,
            "upstream_host": f"127.0.0.1:{b.port}", "attempts": 1, "cache": "",
            "complete": True}
    assert line["bytes"] == len(r.content)
    assert line["duration_ms"] > 0
    assert "time" in line


def test_an_upstream_failure_is_logged_once_with_the_request_id(raw_backend, start_proxy):
    def breaks_off(conn, first):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

    p = start_proxy({DOMAIN: [raw_backend(breaks_off).port]})
    with session(DOMAIN) as s, pytest.raises(requests.RequestException):
        s.get(p.url("/proxy/x"), headers={"X-Request-ID": "broken-1"}).content  # noqa: B018
    assert p.access("broken-1")["complete"] is False
    errors = [json.loads(line) for line in p.log.splitlines()
              if line.startswith("{") and '"level"' in line and "broken-1" in line]
    assert len(errors) == 1
    assert errors[0]["level"] == "WARNING"


def test_log_level_debug_explains_decisions(backend, start_proxy):
    p = start_proxy({DOMAIN: [backend().port]}, env={"LOG_LEVEL": "DEBUG"})
    with session(DOMAIN) as s:
        s.get(p.url("/proxy/debug"))
    p.wait_log('"level": "DEBUG"')


def test_python_m_wsgiproxy_exits_0_on_sigint(backend, start_proxy):
    p = start_proxy({DOMAIN: [backend().port]})
    p.proc.send_signal(signal.SIGINT)
    assert p.proc.wait(10) == 0
    assert "stopped (all requests finished)" in p.log  # it drained, not just died

