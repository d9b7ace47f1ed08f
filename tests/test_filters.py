"""Filters (docs/filters.md): real backends count what reaches them, a real auth server
answers forward_auth, and both servers run the same chains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
import yaml
from wsgiproxy_apikey import digest

from support.backends import HTTPBackend, Reply, cacheable, echo
from support.client import get
from support.net import reserve_port, wait_until
from support.proxy import REPO, SERVERS, ProxyProcess, routes_yaml

OPEN, GUARDED, AUTH, BOOM, ORDER = "open.test", "guarded.test", "auth.test", "boom.test", \
    "order.test"
KEYED = "keyed.test"  # through the example distribution (examples/wsgiproxy-apikey)


def with_proxy_filters(text: str, filters: list[dict]) -> str:
    data = yaml.safe_load(text)
    data["proxy"]["filters"] = filters
    return yaml.safe_dump(data, sort_keys=False)


def auth_server_reply(seen) -> Reply:
    """An auth server: ``Bearer good`` is user 42; ``Bearer moved`` is sent to log in."""
    token = seen.header("Authorization")
    if token == "Bearer good":
        return Reply(200, [("X-User-Id", "42"), ("X-Ignored", "x")], b"")
    if token == "Bearer moved":
        return Reply(302, [("Location", "https://login.example/?next=1")], b"")
    return Reply(401, [("WWW-Authenticate", 'Bearer realm="api"'),
                       ("Content-Type", "text/plain")], b"who are you?")


class Stack:
    """One backend per service, an auth server, and the proxy in front of them."""

    def __init__(self, tmp, server: str) -> None:
        self.backends = {d: HTTPBackend(cacheable if d == GUARDED else echo).start()
                         for d in (OPEN, GUARDED, AUTH, BOOM, ORDER, KEYED)}
        self.auth = HTTPBackend(auth_server_reply).start()
        services = {
            OPEN: {"hosts": [self.backends[OPEN].port], "filters": [
                {"use": "headers", "config": {
                    "request": {"set": {"X-Env": "test"}, "remove": ["X-Debug"]},
                    "response": {"set": {"Strict-Transport-Security": "max-age=60"},
                                 "remove": ["Content-Type"]}}}]},
            GUARDED: {"hosts": [self.backends[GUARDED].port], "filters": [
                {"use": "access", "config": {"allow": ["10.0.0.0/8"],
                                             "deny": ["10.6.6.0/24"]}}]},
            AUTH: {"hosts": [self.backends[AUTH].port], "filters": [
                {"use": "forward_auth", "config": {
                    "url": f"http://127.0.0.1:{self.auth.port}/check",
                    "copy_headers": ["X-User-Id"], "timeout_seconds": 2}}]},
            BOOM: {"hosts": [self.backends[BOOM].port], "filters": [
                {"use": "apps.filters:Raises"}]},
            ORDER: {"hosts": [self.backends[ORDER].port], "filters": [
                {"use": "headers", "config": {"request": {"set": {"X-Who": "service"}},
                                              "response": {"set": {"X-Who": "service"}}}},
                {"use": "apps.filters:Counts"}]},
            KEYED: {"hosts": [self.backends[KEYED].port], "filters": [
                {"use": "api_key", "config": {"keys": {"billing": digest("s3cret")}}}]},
        }
        self.proxy = ProxyProcess(tmp, services, server=server, env={
            "TRUSTED_PROXIES": "127.0.0.1", "PYTHONPATH": str(REPO / "tests")})
        self.proxy.write_routes({}, text=with_proxy_filters(
            routes_yaml(self.proxy.port, services),
            [{"use": "headers", "config": {"request": {"set": {"X-Who": "proxy"}},
                                           "response": {"set": {"X-Who": "proxy"}}}}]))

    def close(self) -> None:
        self.proxy.stop()
        for b in [*self.backends.values(), self.auth]:
            b.stop()


@pytest.fixture(scope="module", params=SERVERS)
def stack(request, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp(f"filters-{request.param}"), request.param)
    s.proxy.start()
    yield s
    s.close()


def seen_headers(stack: Stack, domain: str) -> dict[str, str]:
    return {k.lower(): v for k, v in stack.backends[domain].seen[-1].headers}


# -- headers ----------------------------------------------------------------------------
def test_headers_are_set_and_removed_both_ways(stack):
    r = get(stack.proxy, host=OPEN, headers={"X-Debug": "1", "X-Env": "client"})
    assert r.status_code == 200
    at_host = seen_headers(stack, OPEN)
    assert at_host["x-env"] == "test"
    assert "x-debug" not in at_host
    assert r.headers["Strict-Transport-Security"] == "max-age=60"
    assert "Content-Type" not in r.headers
    assert r.headers["X-Cache"] == "MISS"
    assert json.loads(r.content)["target"] == "/x"  # the body is untouched


def test_request_hooks_run_proxy_first_and_response_hooks_in_reverse(stack):
    r = get(stack.proxy, host=ORDER)
    assert seen_headers(stack, ORDER)["x-who"] == "service"  # proxy's, then the service's
    assert r.headers["X-Who"] == "proxy"  # the service's, then the proxy's


# -- access -----------------------------------------------------------------------------
@pytest.mark.parametrize(("client", "status"), [("10.1.2.3", 200), ("10.6.6.7", 403),
                                                 ("192.0.2.1", 403), ("::ffff:10.1.2.3", 200)])
def test_access_allows_and_denies_by_the_client_address(stack, client, status):
    before = stack.backends[GUARDED].count
    r = get(stack.proxy, f"/proxy/access-{status}-{client}", host=GUARDED,
            headers={"X-Forwarded-For": client})
    assert r.status_code == status
    if status == 403:
        assert r.json() == {"error": "forbidden"}
        assert stack.backends[GUARDED].count == before  # the host never saw it


def test_a_cached_response_still_goes_through_access(stack):
    path = f"/proxy/cached-{stack.proxy.server}"
    allowed = get(stack.proxy, path, host=GUARDED, headers={"X-Forwarded-For": "10.0.0.1"})
    again = get(stack.proxy, path, host=GUARDED, headers={"X-Forwarded-For": "10.0.0.1"})
    assert (allowed.status_code, again.headers["X-Cache"]) == (200, "HIT")
    denied = get(stack.proxy, path, host=GUARDED, headers={"X-Forwarded-For": "192.0.2.9"})
    assert denied.status_code == 403
    assert "X-Cache" not in denied.headers
    assert denied.content == b'{"error": "forbidden"}'


# -- forward_auth -----------------------------------------------------------------------
def test_forward_auth_2xx_continues_with_the_copied_headers(stack):
    r = get(stack.proxy, "/proxy/me?x=1", host=AUTH,
            headers={"Authorization": "Bearer good", "X-User-Id": "1 (forged)"})
    assert r.status_code == 200
    at_host = seen_headers(stack, AUTH)
    assert at_host["x-user-id"] == "42"
    assert "x-ignored" not in at_host
    check = stack.auth.seen[-1]
    assert (check.method, check.target) == ("GET", "/check")
    assert check.header("Authorization") == "Bearer good"
    assert check.header("X-Forwarded-Method") == "GET"
    assert check.header("X-Forwarded-Uri") == "/proxy/me?x=1"  # as the client sent it
    assert check.header("X-Forwarded-Host") == AUTH


def test_forward_auth_strips_a_forged_header_the_auth_server_does_not_set(stack):
    def no_user(seen):
        return Reply(204, [], b"")
    stack.auth.respond = no_user
    try:
        r = get(stack.proxy, host=AUTH, headers={"X-User-Id": "0 (admin, forged)"})
    finally:
        stack.auth.respond = auth_server_reply
    assert r.status_code == 200
    assert "x-user-id" not in seen_headers(stack, AUTH)


@pytest.mark.parametrize(("token", "status", "header"), [
    ("Bearer bad", 401, ("WWW-Authenticate", 'Bearer realm="api"')),
    ("Bearer moved", 302, ("Location", "https://login.example/?next=1")),
])
def test_forward_auth_refusals_reach_the_client_as_the_auth_server_sent_them(
        stack, token, status, header):
    before = stack.backends[AUTH].count
    r = get(stack.proxy, host=AUTH, headers={"Authorization": token}, allow_redirects=False)
    assert r.status_code == status
    assert r.headers[header[0]] == header[1]
    if status == 401:
        assert r.content == b"who are you?"
    assert stack.backends[AUTH].count == before


def test_forward_auth_keeps_its_connections_to_the_auth_server(stack):
    before = {s.connection for s in stack.auth.seen}
    for _ in range(5):
        assert get(stack.proxy, host=AUTH, headers={"Authorization": "Bearer good"}).ok
    used = {s.connection for s in stack.auth.seen[-5:]} - before
    assert len(used) <= 1  # one pooled connection (two workers' pools are not shared)


def test_an_authenticated_response_is_not_stored_for_the_next_user(tmp_path):
    """A filter that authenticates sets request.authenticated: the cache then stores
    only what the host marks public, as for a request with Authorization."""
    def per_user(seen):
        public = "public" in seen.target
        return Reply(200, [("Cache-Control", "public, max-age=60" if public else "max-age=60")],
                      f"for {seen.header('X-Api-Client')}".encode())
    with HTTPBackend(per_user) as host:
        keys = {"a": digest("key-a"), "b": digest("key-b")}
        services = {KEYED: {"hosts": [host.port], "filters": [
            {"use": "api_key", "config": {"keys": keys}}]}}
        with ProxyProcess(tmp_path, services) as proxy:
            a = get(proxy, "/proxy/me", host=KEYED, headers={"X-Api-Key": "key-a"})
            b = get(proxy, "/proxy/me", host=KEYED, headers={"X-Api-Key": "key-b"})
            assert (a.text, b.text) == ("for a", "for b")
            assert b.headers["X-Cache"] == "MISS"
            get(proxy, "/proxy/public", host=KEYED, headers={"X-Api-Key": "key-a"})
            shared = get(proxy, "/proxy/public", host=KEYED, headers={"X-Api-Key": "key-b"})
            assert shared.headers["X-Cache"] == "HIT"  # the host said public


def test_forward_auth_has_one_deadline_for_an_auth_server_that_drips(tmp_path, raw_backend):
    import time as _time

    def drip(conn, _request):
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(100):  # a byte every 0.1 s: no single read ever times out
                conn.sendall(b"x")
                _time.sleep(0.1)
        except OSError:
            pass
    auth = raw_backend(drip)
    with HTTPBackend() as host:
        services = {AUTH: {"hosts": [host.port], "filters": [
            {"use": "forward_auth", "config": {"url": f"http://127.0.0.1:{auth.port}/",
                                               "timeout_seconds": 0.5}}]}}
        with ProxyProcess(tmp_path, services) as proxy:
            started = _time.monotonic()
            r = get(proxy, host=AUTH)
            took = _time.monotonic() - started
            assert (r.status_code, r.json()) == (503, {"error": "auth server timed out"})
            assert took < 3
            assert host.count == 0


def test_forward_auth_with_the_auth_server_down_is_503_never_an_open_door(tmp_path):
    dead = reserve_port()
    with HTTPBackend() as host:
        services = {AUTH: {"hosts": [host.port], "filters": [
            {"use": "forward_auth", "config": {"url": f"http://127.0.0.1:{dead}/",
                                               "timeout_seconds": 0.5}}]}}
        with ProxyProcess(tmp_path, services) as proxy:
            r = get(proxy, host=AUTH, headers={"Authorization": "Bearer good"})
            assert (r.status_code, r.json()) == (503, {"error": "auth server unreachable"})
            assert host.count == 0


# -- a third-party filter, installed as a distribution ----------------------------------
def test_an_installed_filter_is_found_by_its_entry_point_and_guards_the_service(stack):
    refused = get(stack.proxy, host=KEYED, headers={"X-Api-Key": "guess"})
    assert refused.status_code == 401
    assert stack.backends[KEYED].count == 0
    assert refused.headers["WWW-Authenticate"] == 'ApiKey header="X-Api-Key"'
    r = get(stack.proxy, host=KEYED, headers={"X-Api-Key": "s3cret", "X-Api-Client": "root"})
    assert r.status_code == 200
    at_host = seen_headers(stack, KEYED)
    assert at_host["x-api-client"] == "billing"
    assert "x-api-key" not in at_host


# -- a filter that raises ---------------------------------------------------------------
@pytest.mark.parametrize("hook", ["on_request", "on_response"])
def test_a_filter_that_raises_is_500_logged_once_counted_and_the_proxy_serves_on(stack, hook):
    mark, errors = stack.proxy.log_mark(), filter_errors(stack.proxy)
    r = get(stack.proxy, host=BOOM, headers={"X-Boom": hook})
    assert (r.status_code, r.json()) == (500, {"error": "filter apps.filters:Raises failed"})
    log = wait_until(lambda: f"boom in {hook}" in stack.proxy.log_since(mark)
                     and stack.proxy.log_since(mark), 10, message="the traceback")
    assert "Traceback" in log
    assert log.count(f"apps.filters:Raises failed in {hook}") == 1
    assert get(stack.proxy, host=BOOM).status_code == 200
    wait_until(lambda: filter_errors(stack.proxy) == errors + 1, 10, 0.05,
               "proxy_filter_errors_total to count it")


def test_a_completion_hook_that_raises_is_logged_and_counted_only(stack):
    mark = stack.proxy.log_mark()
    r = get(stack.proxy, host=BOOM, headers={"X-Boom": "on_complete"})
    assert r.status_code == 200
    assert r.json()["target"] == "/x"
    wait_until(lambda: "boom in on_complete" in stack.proxy.log_since(mark), 10,
               message="the traceback")
    assert get(stack.proxy, host=BOOM).status_code == 200


def filter_errors(proxy: ProxyProcess, service: str = "boom-test",
                  name: str = "apps.filters:Raises") -> float:
    text = requests.get(proxy.metrics_url(), timeout=5).text
    line = f'proxy_filter_errors_total{{filter="{name}",service="{service}"}}'
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


# -- short-circuit answers --------------------------------------------------------------
def test_a_short_circuit_answer_is_logged_and_never_reaches_the_host(stack):
    before = stack.backends[GUARDED].count
    r = get(stack.proxy, host=GUARDED, headers={"X-Forwarded-For": "192.0.2.3",
                                                "X-Request-ID": "denied-1"})
    assert r.status_code == 403
    assert r.headers["X-Request-ID"] == "denied-1"
    line = stack.proxy.access("denied-1")
    assert (line["status"], line["upstream_attempts"]) == (403, [])
    assert stack.backends[GUARDED].count == before


def test_on_complete_sees_the_outcome_and_state_survives_between_requests(stack):
    first = get(stack.proxy, host=ORDER)
    second = get(stack.proxy, host=ORDER)
    assert int(second.headers["X-Seen"]) == int(first.headers["X-Seen"]) + 1
    assert second.headers["X-Last-Outcome"] == "200 miss -"


# -- bad config -------------------------------------------------------------------------
def check_config(routes_file, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsgiproxy", "--check-config"], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "CONFIGURATION_FILENAME": str(routes_file),
                               "PYTHONPATH": str(REPO / "tests"), **(env or {})},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("entry", "message"), [
    ({"use": "acces", "config": {"allow": ["10.0.0.0/8"]}},
     "proxy.services[0].filters[0].use: unknown filter 'acces' (did you mean 'access'? "
     "known: "),
    ({"use": "access", "config": {"allow": ["10.0.0.0/8", "ten"]}},
     "proxy.services[0].filters[0].config.allow[1]: 'ten' is not an address or CIDR block"),
    ({"use": "access", "config": {"alow": ["10.0.0.0/8"]}},
     "proxy.services[0].filters[0].config.alow: unknown key (did you mean 'allow'? "
     "expected one of allow, deny)"),
    ({"use": "forward_auth", "config": {"url": "ftp://x"}},
     "proxy.services[0].filters[0].config.url: must be an http:// or https:// URL"),
    ({"use": "apps.filters:Nope"},
     "proxy.services[0].filters[0].use: filter 'apps.filters:Nope' could not be imported: "
     "AttributeError"),
])
def test_check_config_prints_the_filters_own_one_line_message(tmp_path, entry, message):
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(8080, {OPEN: {"hosts": [9], "filters": [entry]}}))
    done = check_config(routes)
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"wsgiproxy: {routes}: {message}"), done.stderr
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_an_unknown_filter_stops_start_up_with_exit_2(tmp_path, server):
    services = {OPEN: {"hosts": [9], "filters": [{"use": "no_such_filter"}]}}
    proxy = ProxyProcess(tmp_path, services, server=server)
    proxy.start(wait=False)
    assert proxy.proc.wait(30) == 2
    proxy.stop()
    assert "proxy.services[0].filters[0].use: unknown filter 'no_such_filter'" in proxy.log


@pytest.mark.parametrize("server", SERVERS)
def test_a_reload_with_a_bad_filter_is_refused_and_an_unchanged_filter_keeps_its_state(
        tmp_path, server):
    with HTTPBackend() as host:
        counted = {"use": "apps.filters:Counts"}
        services = {OPEN: {"hosts": [host.port], "filters": [counted]}}
        proxy = ProxyProcess(tmp_path, services, server=server,
                             env={"PYTHONPATH": str(REPO / "tests")})
        with proxy:
            assert [get(proxy, host=OPEN).headers["X-Seen"] for _ in range(3)] == \
                ["1", "2", "3"]
            proxy.write_routes({OPEN: {"hosts": [host.port], "filters": [
                counted, {"use": "access", "config": {"allow": ["nope"]}}]}})
            proxy.reload()
            line = proxy.wait_log("routes not reloaded")
            assert "filters[1].config.allow[0]: 'nope' is not an address" in line
            assert get(proxy, host=OPEN).headers["X-Seen"] == "4"  # old routes serve
            # a good reload that adds a filter keeps the unchanged one, with its count
            proxy.write_routes({OPEN: {"hosts": [host.port], "filters": [
                counted, {"use": "headers", "config": {"response": {"set": {"X-New": "1"}}}}]}})
            proxy.reload()
            wait_until(lambda: "X-New" in get(proxy, host=OPEN).headers, 10, 0.05,
                       "the new routes")
            assert int(get(proxy, host=OPEN).headers["X-Seen"]) > 5


def test_a_dual_stack_listener_still_believes_its_trusted_proxy_and_keys_on_ipv4(tmp_path):
    """On a socket bound to ``::`` an IPv4 peer is ``::ffff:127.0.0.1``: it must still be
    the trusted proxy 127.0.0.1, and a client without one is ``127.0.0.1``, not a second
    spelling that ``access`` and rate limits would treat as another address."""
    with HTTPBackend() as host:
        services = {GUARDED: {"hosts": [host.port], "filters": [
            {"use": "access", "config": {"allow": ["10.0.0.0/8"]}}]}}
        proxy = ProxyProcess(tmp_path, services, env={"TRUSTED_PROXIES": "127.0.0.1"})
        data = yaml.safe_load(proxy.routes.read_text())
        data["proxy"]["listen"]["address"] = "::"
        proxy.write_routes({}, text=yaml.safe_dump(data, sort_keys=False))
        with proxy:
            behind = get(proxy, host=GUARDED, headers={"X-Forwarded-For": "10.1.2.3",
                                                       "X-Request-ID": "dual-1"})
            direct = get(proxy, host=GUARDED, headers={"X-Request-ID": "dual-2"})
            assert (behind.status_code, direct.status_code) == (200, 403)
            assert proxy.access("dual-1")["client"] == "10.1.2.3"
            assert proxy.access("dual-2")["client"] == "127.0.0.1"
