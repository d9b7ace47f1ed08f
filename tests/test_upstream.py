"""The upstream client in-process, against real backends on loopback: the session is
where its adapters live, and the value it returns is all the handler needs."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import pytest

from support.backends import Reply
from support.client import get
from support.proxy import SERVERS
from wsgiproxy.exchange import CacheResult, Exchange
from wsgiproxy.policy import resolve_policy
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


def channels(client, settings, *services):
    """A channel per service, as one routes load builds them; the others are retired."""
    built = {s.domain: client.channel(s, resolve_policy(s, settings)) for s in services}
    client.retire(list(built))
    return built


def test_the_session_is_where_adapters_are_found(backend, settings):
    a, b = backend(name="a"), backend(name="b")
    svc = service(a.port, b.port)
    client = UpstreamClient(settings)
    channel = channels(client, settings, svc)["svc.test"]
    adapter = client.session.get_adapter("http://svc.test/x")
    assert isinstance(adapter, ServiceAdapter)
    assert adapter is channel.adapter
    assert adapter.service == svc
    for _ in range(4):  # round-robin over the service's hosts
        request = UpstreamRequest("GET", "/plain", {"Host": "svc.test"})
        response = client.send(channel, "svc.test", request, Exchange("r", "GET", "/"))
        b"".join(response.body)
        response.body.close()
    assert (a.count, b.count) == (2, 2)
    client.close()


def test_a_new_load_keeps_unchanged_services_and_replaces_changed_ones(backend, settings):
    a = backend()
    one, two = service(a.port), service(a.port, domain="two.test")
    client = UpstreamClient(settings)
    first = channels(client, settings, one, two)
    changed = service(a.port, a.port + 1, domain="two.test")
    second = channels(client, settings, one, changed)
    assert second["svc.test"].adapter is first["svc.test"].adapter
    assert second["two.test"].adapter is not first["two.test"].adapter
    channels(client, settings, one)
    assert list(client.session.adapters) == ["http://svc.test/"]
    client.close()


def test_send_returns_one_value_with_the_body_as_it_arrives(backend, settings):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60"), ("X-A", "1"),
                                         ("Connection", "X-A")], b"body!"))
    svc = service(b.port)
    client = UpstreamClient(settings)
    channel = channels(client, settings, svc)["svc.test"]
    exchange = Exchange("rid", "GET", "/proxy/x")
    request = UpstreamRequest("GET", "/x", {"Host": "svc.test"})
    response = client.send(channel, "svc.test", request, exchange)
    assert (response.status, response.reason, response.cache) == (200, "OK", CacheResult.MISS)
    assert not any(k.lower() in ("x-a", "connection") for k, _ in response.headers)
    assert b"".join(response.body) == b"body!"
    response.body.close()
    assert response.body.complete
    assert [(a.outcome, a.status) for a in exchange.attempts] == [("response", 200)]
    again = client.send(channel, "svc.test", request, Exchange("rid2", "GET", "/proxy/x"))
    assert (again.cache, b"".join(again.body)) == (CacheResult.HIT, b"body!")
    assert b.count == 1
    client.close()


def test_the_cache_key_includes_the_host_as_forwarded(backend, settings):
    """A host that echoes Host builds a different page per Host value: never shared."""
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")],
                                   seen.header("Host").encode()))
    svc = service(b.port)
    client = UpstreamClient(settings)
    channel = channels(client, settings, svc)["svc.test"]

    def get(host):
        request = UpstreamRequest("GET", "/x", {"Host": host})
        response = client.send(channel, host.lower(), request, Exchange("r", "GET", "/"))
        body = b"".join(response.body)
        response.body.close()
        return response.cache, body

    assert get("svc.test") == (CacheResult.MISS, b"svc.test")
    assert get("svc.test:8080") == (CacheResult.MISS, b"svc.test:8080")
    assert get("svc.test") == (CacheResult.HIT, b"svc.test")
    assert b.count == 2
    client.close()


def test_a_host_written_as_an_address_is_connected_without_a_name_lookup(backend,
                                                                         monkeypatch):
    """Under gevent every ``getaddrinfo`` waits for a thread of the hub's pool; a burst of
    new connections queued there for seconds (docs/performance.md). A name is still
    looked up (once for the connections opening together, below)."""
    from wsgiproxy.upstream.transport import UpstreamConnectionPool

    looked_up = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    b = backend()
    for host in ("127.0.0.1", "localhost"):
        pool = UpstreamConnectionPool(host, b.port, maxsize=1)
        response = pool.urlopen("GET", "/x", headers={"Host": "svc.test"})
        assert response.status == 200
        pool.close()
    assert looked_up == ["localhost"]


def test_connections_opened_at_once_to_a_name_share_one_lookup(backend, monkeypatch):
    """Ten connections opening together to ``localhost`` ask the resolver once; the
    answer is used until it expires, then asked for again."""
    from wsgiproxy.upstream.transport import UpstreamConnectionPool

    looked_up = []
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        looked_up.append(host)
        time.sleep(0.2)  # a slow resolver: every connection opening now has to wait
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    b = backend()
    pool = UpstreamConnectionPool("localhost", b.port, maxsize=10, block=False)
    barrier = threading.Barrier(10)

    def one(_):
        barrier.wait()
        response = pool.urlopen("GET", "/x", headers={"Host": "svc.test"},
                                preload_content=False, release_conn=False)
        response.read()
        return response  # released only once all ten are open: ten connections

    with concurrent.futures.ThreadPoolExecutor(10) as workers:
        responses = list(workers.map(one, range(10)))
    assert [r.status for r in responses] == [200] * 10
    assert pool.num_connections == 10
    assert looked_up == ["localhost"]
    for r in responses:
        r.release_conn()
    pool.addresses._expires = 0.0  # the answer has expired: the next connection asks again
    for conn in list(pool.pool.queue):  # and every idle connection has been closed
        if conn is not None:
            conn.close()
    assert pool.urlopen("GET", "/x", headers={"Host": "svc.test"}).status == 200
    assert looked_up == ["localhost", "localhost"]


def test_a_name_that_cannot_be_looked_up_is_a_connection_failure(monkeypatch):
    from urllib3.exceptions import MaxRetryError, NameResolutionError

    from wsgiproxy.upstream.failures import Outcome, classify
    from wsgiproxy.upstream.transport import UpstreamConnectionPool

    def failing(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    pool = UpstreamConnectionPool("backend.invalid", 80)
    with pytest.raises(MaxRetryError) as caught:
        pool.urlopen("GET", "/x", retries=0)
    assert isinstance(caught.value.reason, NameResolutionError)
    assert classify(caught.value) == Outcome.REFUSED  # not sent: the next host may take it


@pytest.mark.parametrize("server", SERVERS)
def test_a_host_written_as_a_name_is_reached_under_both_servers(backend, start_proxy, server):
    """``localhost`` may resolve to ``::1`` first, where nothing listens: the next address
    of the answer is tried within the same attempt, so the client sees one clean 200."""
    b = backend()
    p = start_proxy({"named.test": [("localhost", b.port)]}, server=server)
    r = get(p, host="named.test", headers={"X-Request-ID": f"named-{server}"})
    assert (r.status_code, b.count) == (200, 1)
    assert p.access(f"named-{server}")["upstream_attempts"] == [
        f"localhost:{b.port} response 200"]
