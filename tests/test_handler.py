"""The WSGI app on its own, in-process: it speaks WSGI on one side and the upstream
client's value on the other, so a fake upstream that returns :class:`UpstreamResponse`
values (or raises the proxy's errors) is enough to test routing, error rendering, the
response it writes and what it records. Metrics go to a registry of the test's own."""

from __future__ import annotations

import io
import json
import wsgiref.util
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from wsgiproxy.errors import BadGateway, UpstreamTimeout
from wsgiproxy.exchange import CacheResult
from wsgiproxy.handler import ProxyApp
from wsgiproxy.metrics import Metrics
from wsgiproxy.routes_file import Backend, Endpoint, Routes, Service
from wsgiproxy.settings import load_settings
from wsgiproxy.upstream import StoredBody, UpstreamResponse

SERVICE = Service("svc", "svc.test", (Backend("127.0.0.1", 9),))
ROUTES = Routes(Endpoint("127.0.0.1", 8080), (SERVICE,))


@dataclass
class FakeUpstream:
    """Answers with ``responses`` in turn (a ProxyError is raised), recording requests."""

    responses: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def channel(self, service, policy):
        return service

    def retire(self, domains):
        pass

    def send(self, service, host, request, log):
        self.requests.append((service, request))
        log.attempted("127.0.0.1:9", "response", 200)
        answer = self.responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        pass


class BrokenBody:
    """A body whose host goes away after the first piece."""

    complete = False

    def __iter__(self):
        yield b"first "
        raise ConnectionResetError("upstream response broken off")

    def close(self):
        pass


@pytest.fixture
def registry():
    return CollectorRegistry()


def make_app(registry, settings=None):
    lines = []
    upstream = FakeUpstream()
    application = ProxyApp(settings or load_settings(), ROUTES, upstream,
                           Metrics([SERVICE], registry),
                           access_log=lambda exchange, _: lines.append(exchange))
    application.lines = lines
    application.fake = upstream
    return application


@pytest.fixture
def app(registry):
    return make_app(registry)


def call(app, path="/proxy/x", method="GET", host="svc.test", body=b"", **headers):
    """Run one request through ``app``; (status, headers, body)."""
    environ = {"REQUEST_METHOD": method, "RAW_URI": path, "PATH_INFO": path,
               "HTTP_HOST": host, "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "10.1.2.3"}
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    wsgiref.util.setup_testing_defaults(environ)
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"], seen["headers"] = status, response_headers

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        result.close()
    return seen["status"], dict(seen["headers"]), data


def ok(body=b"hello", cache=CacheResult.MISS, headers=()):
    return UpstreamResponse(200, "OK", [("Content-Type", "text/plain"), *headers],
                            StoredBody(body), cache)


def test_a_routed_request_reaches_the_upstream_as_sent(app):
    app.fake.responses.append(ok())
    status, headers, body = call(app, "/proxy/a%2Fb?q=1", x_request_id="rid-1")
    assert (status, body) == ("200 OK", b"hello")
    service, request = app.fake.requests[0]
    assert (service, request.method, request.target) == (SERVICE, "GET", "/a%2Fb?q=1")
    assert request.headers["X-Forwarded-For"] == "10.1.2.3"
    assert (headers["X-Request-ID"], headers["X-Cache"]) == ("rid-1", "MISS")


@pytest.mark.parametrize(("cache", "x_cache"), [
    (CacheResult.HIT, "HIT"), (CacheResult.REVALIDATED, "HIT"), (CacheResult.MISS, "MISS"),
    (CacheResult.NONE, "MISS"),
])
def test_x_cache_says_where_the_body_came_from(app, cache, x_cache):
    app.fake.responses.append(ok(cache=cache))
    assert call(app)[1]["X-Cache"] == x_cache
    assert app.lines[0].cache == cache


def test_head_gets_the_headers_and_no_body(app):
    app.fake.responses.append(ok(b"a stored GET body"))
    status, _, body = call(app, method="HEAD")
    assert (status, body) == ("200 OK", b"")
    assert app.lines[0].complete


@pytest.mark.parametrize(("error", "status"), [
    (BadGateway("service 'svc': the host sent an invalid response"), "502 Bad Gateway"),
    (UpstreamTimeout("service 'svc': the host did not answer in time"), "504 Gateway Timeout"),
])
def test_an_upstream_error_is_json_with_its_status(app, error, status):
    app.fake.responses.append(error)
    got, headers, body = call(app, x_request_id="rid-2")
    assert got == status
    assert json.loads(body) == {"error": error.message}
    assert (headers["Content-Type"], headers["X-Request-ID"]) == ("application/json", "rid-2")


@pytest.mark.parametrize(("path", "host", "status"), [
    ("/elsewhere", "svc.test", "404 Not Found"),
    ("/proxy/x", "other.test", "404 Not Found"),
])
def test_unrouted_requests_never_reach_the_upstream(app, path, host, status):
    assert call(app, path, host=host)[0] == status
    assert app.fake.requests == []
    assert app.lines[0].service == ""


def test_a_body_over_the_limit_is_413_before_the_upstream(registry):
    app = make_app(registry, load_settings_with(MAX_REQUEST_BODY_BYTES="4"))
    status, headers, _ = call(app, method="POST", body=b"12345")
    assert (status, headers["Connection"]) == ("413 Content Too Large", "close")
    assert app.fake.requests == []


def load_settings_with(**env):
    """Settings from these values and the defaults (a python-decouple-like source)."""
    return load_settings(lambda name, default=None: env.get(name, default))


def test_a_bug_is_a_500_and_the_app_keeps_serving(app):
    app.fake.responses += [ValueError("a bug"), ok()]
    status, _, body = call(app)
    assert (status, json.loads(body)) == ("500 Internal Server Error",
                                          {"error": "internal proxy error"})
    assert call(app)[0] == "200 OK"


def test_a_body_broken_off_is_recorded_incomplete(app):
    app.fake.responses.append(UpstreamResponse(200, "OK", [], BrokenBody()))
    with pytest.raises(ConnectionResetError):
        call(app)
    assert (app.lines[0].complete, app.lines[0].bytes_sent) == (False, 6)


def test_metrics_go_to_the_registry_given(app, registry):
    app.fake.responses += [ok(cache=CacheResult.HIT), BadGateway("no")]
    call(app)
    call(app)
    call(app, host="nobody.test")

    def sample(name, **labels):
        return registry.get_sample_value(name, labels)

    assert sample("proxy_requests_total", service="svc", method="GET", code="200") == 1
    assert sample("proxy_requests_total", service="svc", method="GET", code="502") == 1
    assert sample("proxy_requests_total", service="unrouted", method="GET", code="404") == 1
    assert sample("proxy_cache_requests_total", service="svc", result="hit") == 1
    assert sample("proxy_upstream_attempts_total", service="svc", host="127.0.0.1:9",
                  outcome="response") == 2
    assert sample("proxy_request_duration_seconds_count", service="svc") == 2
    assert sample("proxy_requests_in_flight") == 0
