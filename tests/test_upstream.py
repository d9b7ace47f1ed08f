"""The upstream client in-process, against real backends on loopback: the session is
where its adapters live, and the value it returns is all the handler needs."""

from __future__ import annotations

import pytest

from support.backends import Reply
from wsgiproxy.exchange import CacheResult, Exchange
from wsgiproxy.routes_file import Backend, Service
from wsgiproxy.settings import load_settings
from wsgiproxy.upstream import UpstreamClient, UpstreamRequest
from wsgiproxy.upstream.adapter import ServiceAdapter


def service(*ports: int, domain: str = "svc.test") -> Service:
    return Service(domain.replace(".", "-"), domain,
                   tuple(Backend("127.0.0.1", p) for p in ports))


@pytest.fixture
def settings():
    return load_settings(lambda name, default=None: default)


def test_the_session_is_where_adapters_are_found_and_it_works_as_a_session(backend, settings):
    a, b = backend(name="a"), backend(name="b")
    svc = service(a.port, b.port)
    client = UpstreamClient(settings, [svc])
    adapter = client.session.get_adapter("http://svc.test/x")
    assert isinstance(adapter, ServiceAdapter)
    assert adapter.service == svc
    for _ in range(4):  # plain Session.get, round-robin over the service's hosts
        assert client.session.get("http://svc.test/plain").status_code == 200
    assert (a.count, b.count) == (2, 2)
    client.close()


def test_update_keeps_unchanged_services_and_replaces_changed_ones(backend, settings):
    a = backend()
    one, two = service(a.port), service(a.port, domain="two.test")
    client = UpstreamClient(settings, [one, two])
    kept = client.session.get_adapter("http://svc.test/")
    replaced = client.session.get_adapter("http://two.test/")
    changed = service(a.port, a.port + 1, domain="two.test")
    client.update([one, changed])
    assert client.session.get_adapter("http://svc.test/") is kept
    assert client.session.get_adapter("http://two.test/") is not replaced
    client.update([one])
    assert list(client.session.adapters) == ["http://svc.test/"]
    client.close()


def test_send_returns_one_value_with_the_body_as_it_arrives(backend, settings):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60"), ("X-A", "1"),
                                         ("Connection", "X-A")], b"body!"))
    svc = service(b.port)
    client = UpstreamClient(settings, [svc])
    exchange = Exchange("rid", "GET", "/proxy/x")
    request = UpstreamRequest("GET", "/x", {"Host": "svc.test"})
    response = client.send(svc, request, exchange)
    assert (response.status, response.reason, response.cache) == (200, "OK", CacheResult.MISS)
    assert not any(k.lower() in ("x-a", "connection") for k, _ in response.headers)
    assert b"".join(response.body) == b"body!"
    response.body.close()
    assert response.body.complete
    assert [(a.outcome, a.status) for a in exchange.attempts] == [("response", 200)]
    again = client.send(svc, request, Exchange("rid2", "GET", "/proxy/x"))
    assert (again.cache, b"".join(again.body)) == (CacheResult.HIT, b"body!")
    assert b.count == 1
    client.close()
