"""docs/routing.md: Host and target → service and forwarded target; round-robin bookkeeping."""

from __future__ import annotations

from collections import Counter

import gevent
import pytest

from wsgiproxy.balancer import RoundRobin
from wsgiproxy.errors import BadRequest, NotFound
from wsgiproxy.route_table import RouteTable
from wsgiproxy.router import parse_host
from wsgiproxy.routes_file import Backend, Endpoint, Routes, Service
from wsgiproxy.settings import load_settings

A = Service("a", "a.example", (Backend("127.0.0.1", 1),))
B = Service("b", "b.example", (Backend("127.0.0.1", 2),))


class NoChannels:
    """Route-table tests need no upstream: a service's channel is the service itself."""

    def channel(self, service, policy):
        return service

    def retire(self, domains):
        pass


router = RouteTable.build(Routes(Endpoint("127.0.0.1", 1), (A, B)),
                          load_settings(lambda name, default=None: default), NoChannels())


@pytest.mark.parametrize(("host", "target", "service", "forwarded"), [
    pytest.param("a.example", "/proxy/api/v1/users?a=1", A, "/api/v1/users?a=1", id="plain"),
    pytest.param("a.example", "/proxy/", A, "/", id="root"),
    pytest.param("A.Example", "/proxy/x", A, "/x", id="case"),
    pytest.param("a.example:8080", "/proxy/x", A, "/x", id="port"),
    pytest.param("a.example.", "/proxy/x", A, "/x", id="trailing dot"),
    pytest.param("A.EXAMPLE.:80", "/proxy/x", A, "/x", id="all three"),
    pytest.param("b.example", "/proxy/a%2Fb%2f%41?q=%20&x", B, "/a%2Fb%2f%41?q=%20&x",
                 id="escapes untouched"),
    pytest.param("b.example", "/proxy/../admin", B, "/../admin", id="dot segments untouched"),
    pytest.param("b.example", "/proxy//double", B, "//double", id="double slash untouched"),
    pytest.param("elsewhere", "http://a.example/proxy/x?y", A, "/x?y",
                 id="absolute-form names the host"),
])
def test_resolve(host, target, service, forwarded):
    match = router.resolve(host, target)
    assert (match.route.service, match.target) == (service, forwarded)


@pytest.mark.parametrize(("host", "target", "error"), [
    pytest.param("a.example", "/proxy", NotFound, id="prefix without slash"),
    pytest.param("a.example", "/other/x", NotFound, id="outside /proxy/"),
    pytest.param("a.example", "/PROXY/x", NotFound, id="prefix is case-sensitive"),
    pytest.param("a.example", "/%70roxy/x", NotFound, id="escaped prefix"),
    pytest.param("c.example", "/proxy/x", NotFound, id="unknown host"),
    pytest.param("a.example.evil", "/proxy/x", NotFound, id="suffix of a domain"),
    pytest.param("a.example", "http://elsewhere.example/proxy/x", NotFound,
                 id="absolute-form to an unknown host"),
    pytest.param("a.example", "http://user@a.example/proxy/x", BadRequest,
                 id="userinfo in an absolute-form target"),
    pytest.param("a.example", "*", NotFound, id="asterisk-form"),
    pytest.param("a.example", "ftp://a.example/proxy/x", BadRequest, id="other scheme"),
    pytest.param(None, "/proxy/x", BadRequest, id="no Host"),
    pytest.param("", "/proxy/x", BadRequest, id="empty Host"),
    pytest.param("a.example:@evil.example", "/proxy/x", BadRequest, id="userinfo-like port"),
    pytest.param("evil@a.example", "/proxy/x", BadRequest, id="userinfo"),
    pytest.param("[a.example]:x", "/proxy/x", BadRequest, id="bracketed name"),
    pytest.param("a.example:80:80", "/proxy/x", BadRequest, id="two ports"),
    pytest.param("a.example:", "/proxy/x", BadRequest, id="empty port"),
    pytest.param("a.example:123456", "/proxy/x", BadRequest, id="six-digit port"),
    pytest.param("a.example x", "/proxy/x", BadRequest, id="space"),
    pytest.param("a..example", "/proxy/x", BadRequest, id="empty label"),
    pytest.param("a.example/x", "/proxy/x", BadRequest, id="slash"),
    pytest.param("[::1", "/proxy/x", BadRequest, id="unclosed IPv6"),
    pytest.param("[1.2.3.4]", "/proxy/x", BadRequest, id="IPv4 in brackets"),
])
def test_resolve_refuses(host, target, error):
    with pytest.raises(error):
        router.resolve(host, target)


@pytest.mark.parametrize(("host", "normalized"), [
    pytest.param("a.example", "a.example", id="plain"),
    pytest.param("A.Example.", "a.example", id="case and trailing dot"),
    pytest.param("a.example:80", "a.example", id="default port"),
    pytest.param("a.example:8080", "a.example:8080", id="other port"),
    pytest.param("10.0.0.1:80", "10.0.0.1", id="IPv4"),
    pytest.param("[::1]:8080", "[::1]:8080", id="IPv6"),
    pytest.param("[2001:DB8::1]", "[2001:db8::1]", id="IPv6 case"),
])
def test_parse_host_normalizes_for_the_cache_key(host, normalized):
    parsed = parse_host(host)
    assert (parsed.raw, parsed.normalized) == (host, normalized)


HOSTS = tuple(Backend("127.0.0.1", p) for p in (1, 2, 3))


def test_round_robin_is_exact_and_in_file_order():
    rr = RoundRobin(HOSTS, eject_seconds=10)
    picks = [rr.pick() for _ in range(30)]
    assert picks[:3] == list(HOSTS)
    assert Counter(picks) == {h: 10 for h in HOSTS}


def test_round_robin_is_exact_under_concurrent_greenlets():
    rr = RoundRobin(HOSTS, eject_seconds=10)
    picks: list[Backend] = []

    def client():
        for _ in range(10):
            picks.append(rr.pick())
            gevent.sleep(0)  # interleave with the others

    gevent.joinall([gevent.spawn(client) for _ in range(30)])
    assert Counter(picks) == {h: 100 for h in HOSTS}


def test_ejected_host_is_skipped_until_its_time_is_up():
    now = [100.0]
    events = []
    rr = RoundRobin(HOSTS, eject_seconds=10, clock=lambda: now[0],
                    listener=lambda host, up: events.append((host.port, up)))
    rr.eject(HOSTS[1])
    assert HOSTS[1] not in [rr.pick() for _ in range(6)]
    now[0] += 10.001
    assert HOSTS[1] in [rr.pick() for _ in range(3)]
    rr.mark_up(HOSTS[1])
    assert events == [(2, False), (2, True)]


def test_when_every_host_is_ejected_they_are_tried_anyway():
    rr = RoundRobin(HOSTS, eject_seconds=10)
    for h in HOSTS:
        rr.eject(h)
    assert {rr.pick() for _ in range(6)} == set(HOSTS)


# -- weights (docs/policy.md): smooth weighted round-robin, as nginx ---------------------------
HEAVY, LIGHT = Backend("127.0.0.1", 7, weight=3), Backend("127.0.0.1", 8)


def longest_run(picks, host) -> int:
    best = run = 0
    for p in picks:
        run = run + 1 if p == host else 0
        best = max(best, run)
    return best


def test_weights_3_and_1_give_30_and_10_never_more_than_3_in_a_row():
    rr = RoundRobin((HEAVY, LIGHT), eject_seconds=10)
    picks = [rr.pick() for _ in range(40)]
    assert Counter(picks) == {HEAVY: 30, LIGHT: 10}
    assert longest_run(picks, HEAVY) <= 3
    assert picks[:4] == [HEAVY, HEAVY, LIGHT, HEAVY]  # spread, not three then one


@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 2, 1), (1, 100), (7, 3, 2, 1)])
def test_every_host_gets_its_exact_share_over_a_cycle(weights):
    hosts = tuple(Backend("127.0.0.1", i + 1, weight=w) for i, w in enumerate(weights))
    rr = RoundRobin(hosts, eject_seconds=10)
    picks = [rr.pick() for _ in range(sum(weights) * 5)]
    assert Counter(picks) == {h: h.weight * 5 for h in hosts}


def test_an_ejected_heavy_host_leaves_the_others_their_proportions():
    third = Backend("127.0.0.1", 9, weight=2)
    now = [0.0]
    rr = RoundRobin((HEAVY, LIGHT, third), eject_seconds=10, clock=lambda: now[0])
    rr.eject(HEAVY)
    picks = [rr.pick() for _ in range(30)]
    assert Counter(picks) == {LIGHT: 10, third: 20}
    now[0] += 10.5  # the ejection has run out: back in with its weight
    picks = [rr.pick() for _ in range(60)]
    assert Counter(picks) == {HEAVY: 30, LIGHT: 10, third: 20}
