"""docs/cache.md over real sockets: stale responses served when every attempt fails and
within stale-while-revalidate, never where forbidden; concurrent misses coalesced;
CDN-Cache-Control over Cache-Control; invalidation by any unsafe method; invalid
Expires. Backends count what reaches them."""

from __future__ import annotations

import concurrent.futures
import email.utils
import threading
import time

import pytest
import requests

from support.backends import Reply
from support.client import get, session
from support.metrics import scrape, value
from support.net import wait_until
from support.proxy import SERVERS
from support.redis_server import REDIS_URL, needs_redis

DOMAIN = "stale.test"


class Switchable:
    """A backend that answers ``cc`` until told to fail (with a status, or by hanging)."""

    def __init__(self, cc: str = "max-age=1", delay: float = 0.0, close: bool = False) -> None:
        self.cc, self.delay = cc, delay
        self.close = close  # no keep-alive: once the host is stopped, nothing reaches it
        self.failing: int | None = None
        self.version = 0
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, seen):
        with self.lock:
            self.count += 1
            self.version += 1
            version = self.version
        if self.delay:
            time.sleep(self.delay)  # the host's own think time
        if self.failing is not None:
            return Reply(self.failing, [], b"host error")
        headers = [("Cache-Control", self.cc), ("Date", email.utils.formatdate(usegmt=True))]
        if self.close:
            headers.append(("Connection", "close"))
        return Reply(200, headers, f"version {version}".encode())


def stale_after(p, path="/proxy/x"):
    """Store the page, and wait (polling, the host untouched) until it is stale: a
    request that accepts only the cache's answer then gets 504."""
    first = get(p, path, host=DOMAIN)
    assert first.headers["X-Cache"] == "MISS"
    wait_until(lambda: get(p, path, host=DOMAIN,
                           headers={"Cache-Control": "only-if-cached"}).status_code == 504,
               10, 0.05, "the stored response to go stale")
    return first


@pytest.mark.parametrize("server", SERVERS)
def test_stale_is_served_when_the_host_answers_503(backend, start_proxy, server):
    host = Switchable()
    p = start_proxy({DOMAIN: [backend(host).port]}, server=server, env={"MAX_HTTP_RETRIES": "0"})
    first = stale_after(p)
    host.failing = 503
    r = get(p, host=DOMAIN)
    assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "STALE", first.content)
    assert int(r.headers["Age"]) >= 1


@pytest.mark.parametrize("server", SERVERS)
def test_stale_is_served_when_no_host_can_be_reached(backend, start_proxy, server):
    host = Switchable(close=True)
    b = backend(host)
    p = start_proxy({DOMAIN: [b.port]}, server=server)
    first = stale_after(p)
    b.stop()  # the only host is gone: connections are refused
    r = get(p, host=DOMAIN)
    assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "STALE", first.content)


@pytest.mark.parametrize("server", SERVERS)
def test_stale_is_served_when_the_host_times_out(backend, start_proxy, server):
    host = Switchable()
    p = start_proxy({DOMAIN: [backend(host).port]}, server=server,
                    env={"UPSTREAM_READ_TIMEOUT_SECONDS": "0.3", "MAX_HTTP_RETRIES": "0"})
    first = stale_after(p)
    host.delay = 2
    r = get(p, host=DOMAIN)
    assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "STALE", first.content)
    host.delay = 0


@pytest.mark.parametrize("cc", ["max-age=1, must-revalidate", "max-age=1, proxy-revalidate",
                                "max-age=1, s-maxage=1", "max-age=1, no-cache"])
def test_stale_is_never_served_where_the_response_forbids_it(backend, start_proxy, cc):
    host = Switchable(cc)
    p = start_proxy({DOMAIN: [backend(host).port]}, env={"MAX_HTTP_RETRIES": "0"})
    stale_after(p)
    host.failing = 503
    r = get(p, host=DOMAIN)
    assert (r.status_code, r.content) == (503, b"host error")
    assert r.headers["X-Cache"] == "MISS"


def test_stale_if_error_bounds_how_stale(backend, start_proxy):
    host = Switchable("max-age=1, stale-if-error=0")
    p = start_proxy({DOMAIN: [backend(host).port]}, env={"MAX_HTTP_RETRIES": "0"})
    stale_after(p)  # stale at all: past a stale-if-error of 0
    host.failing = 503
    assert get(p, host=DOMAIN).status_code == 503


def test_stale_on_error_can_be_turned_off(backend, start_proxy):
    host = Switchable()
    p = start_proxy({DOMAIN: [backend(host).port]},
                    env={"MAX_HTTP_RETRIES": "0", "CACHE_SERVE_STALE_ON_ERROR": "off"})
    stale_after(p)
    host.failing = 503
    assert get(p, host=DOMAIN).status_code == 503


@pytest.mark.parametrize("server", SERVERS)
def test_stale_while_revalidate_answers_at_once_then_refreshes(backend, start_proxy, server):
    host = Switchable("max-age=1, stale-while-revalidate=30", delay=0)
    p = start_proxy({DOMAIN: [backend(host).port]}, server=server)
    first = stale_after(p)
    host.delay = 1.0  # a slow refresh must not delay the stale answer
    host.cc = "max-age=60"  # and what it stores stays fresh
    started = time.monotonic()
    r = get(p, host=DOMAIN, headers={"X-Request-ID": "swr"})
    took = time.monotonic() - started
    assert (r.headers["X-Cache"], r.content) == ("STALE", first.content)
    assert took < 0.5
    wait_until(lambda: get(p, host=DOMAIN).content == b"version 2", 5, 0.05,
               "the background refresh")
    assert host.count == 2  # one refresh, however many requests asked meanwhile
    metrics = requests.get(p.metrics_url()).text
    assert 'proxy_cache_requests_total{result="stale",service="stale-test"}' in metrics


@pytest.mark.parametrize("server", SERVERS)
def test_concurrent_misses_reach_the_host_once(backend, start_proxy, server):
    host = Switchable("max-age=60", delay=0.2)
    p = start_proxy({DOMAIN: [backend(host).port]}, server=server,
                    env={"WORKER_CONNECTIONS": "200"})
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: get(p, "/proxy/cold", host=DOMAIN), range(50)))
    assert {a.status_code for a in answers} == {200}
    assert {a.content for a in answers} == {b"version 1"}
    assert host.count == 1
    results = [a.headers["X-Cache"] for a in answers]
    assert results.count("MISS") == 1

    def answered_from_the_store():
        s = scrape(p)
        return {r: value(s, "proxy_cache_requests_total", result=r, service="stale-test")
                for r in ("coalesced", "hit")}

    # Counted when each response has ended, which may be just after the client read it. A
    # request that a loaded machine sends after the store is a plain hit, not a waiter.
    counts = wait_until(lambda: (c := answered_from_the_store())["coalesced"] + c["hit"] == 49
                        and c, 10, 0.05, "all 49 answers from the store to be counted")
    assert counts["coalesced"] >= 1


def test_a_waiter_goes_itself_when_the_response_cannot_be_stored(backend, start_proxy):
    host = Switchable("no-store", delay=0.2)
    p = start_proxy({DOMAIN: [backend(host).port]})
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: get(p, "/proxy/private", host=DOMAIN), range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert host.count == 5


@pytest.mark.parametrize("server", SERVERS)
def test_a_url_that_could_not_be_stored_is_not_coalesced_again(backend, start_proxy, server):
    """After one no-store answer, concurrent requests for the URL go to the host together
    instead of queueing behind each other (Varnish's hit-for-miss). The host answers
    only once it holds all of them at once: coalesced, they could never be."""
    together = threading.Barrier(5, timeout=3)
    first = threading.Event()

    def host(seen):
        if first.is_set():
            together.wait()  # BrokenBarrierError (a 500) if they do not arrive together
        first.set()
        return Reply(200, [("Cache-Control", "no-store")], b"fresh every time")

    p = start_proxy({DOMAIN: [backend(host).port]}, server=server,
                    env={"MAX_HTTP_RETRIES": "0"})  # one worker: it saw the first answer
    assert get(p, "/proxy/busy", host=DOMAIN).headers["X-Cache"] == "MISS"
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: get(p, "/proxy/busy", host=DOMAIN), range(5)))
    assert [(a.status_code, a.content) for a in answers] == [(200, b"fresh every time")] * 5
    assert not together.broken


def test_a_waiter_stops_waiting_after_the_lock_timeout(backend, start_proxy):
    host = Switchable("max-age=60", delay=1.5)
    p = start_proxy({DOMAIN: [backend(host).port]}, env={"CACHE_LOCK_TIMEOUT_SECONDS": "0.2"})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        leader = pool.submit(get, p, "/proxy/slow", host=DOMAIN)
        wait_until(lambda: host.count == 1, 5, 0.01, "the first request at the host")
        started = time.monotonic()
        follower = pool.submit(get, p, "/proxy/slow", host=DOMAIN)
        follower.result()
        assert time.monotonic() - started < 3  # waited 0.2 s, then went itself (1.5 s)
        leader.result()
    assert host.count == 2


def test_cdn_cache_control_wins_over_cache_control(backend, start_proxy):
    b = backend(lambda seen: Reply(200, [("CDN-Cache-Control", "max-age=60"),
                                         ("Cache-Control", "no-store")], b"cdn"))
    p = start_proxy({DOMAIN: [b.port]})
    assert [get(p, host=DOMAIN).headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert get(p, host=DOMAIN).headers["CDN-Cache-Control"] == "max-age=60"  # passed on
    assert b.count == 1


@pytest.mark.parametrize("method", ["M-SEARCH", "PURGE", "POST"])
def test_any_unsafe_method_invalidates(backend, start_proxy, method):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")], b"c"))
    p = start_proxy({DOMAIN: [b.port]})
    with session(DOMAIN) as s:
        s.get(p.url("/proxy/doc"))
        assert s.get(p.url("/proxy/doc")).headers["X-Cache"] == "HIT"
        assert s.request(method, p.url("/proxy/doc")).status_code == 200
        assert s.get(p.url("/proxy/doc")).headers["X-Cache"] == "MISS"


def test_location_of_a_post_is_invalidated_too(backend, start_proxy):
    def respond(seen):
        if seen.method == "POST":
            return Reply(201, [("Location", "/items/7")], b"")
        return Reply(200, [("Cache-Control", "max-age=60")], seen.target.encode())

    p = start_proxy({DOMAIN: [backend(respond).port]})
    with session(DOMAIN) as s:
        s.get(p.url("/proxy/items/7"))
        assert s.get(p.url("/proxy/items/7")).headers["X-Cache"] == "HIT"
        assert s.post(p.url("/proxy/items"), data=b"x").status_code == 201
        assert s.get(p.url("/proxy/items/7")).headers["X-Cache"] == "MISS"


@pytest.mark.parametrize("expires", ["Thu, 18 Aug 2050 02:01:18 UTC",
                                     "Thu, 18 Aug 50 02:01:18 GMT", "0"])
def test_an_invalid_expires_is_already_expired(backend, start_proxy, expires):
    b = backend(lambda seen: Reply(200, [("Expires", expires)], b"e"))
    p = start_proxy({DOMAIN: [b.port]})
    assert [get(p, host=DOMAIN).headers["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]


# -- with Redis ----------------------------------------------------------------------------
@pytest.mark.redis
@needs_redis
def test_stale_serving_and_coalescing_work_with_redis(backend, start_proxy):
    import uuid

    host = Switchable("max-age=1", delay=0.2)
    domain = f"r{uuid.uuid4().hex[:10]}.test"
    p = start_proxy({domain: [backend(host).port]}, server="gunicorn", workers=2,
                    env={"CACHE_URL": REDIS_URL, "MAX_HTTP_RETRIES": "0"})

    def fetch(_=None):
        return requests.get(p.url("/proxy/r"), headers={"Host": domain}, timeout=20)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(fetch, range(20)))
    assert {a.status_code for a in answers} == {200}
    assert host.count <= 2  # one per worker at most
    wait_until(lambda: requests.get(p.url("/proxy/r"), timeout=5, headers={
        "Host": domain, "Cache-Control": "only-if-cached"}).status_code == 504, 10, 0.05,
        "the entry to go stale")
    host.failing, host.delay = 503, 0
    r = fetch()
    assert (r.status_code, r.headers["X-Cache"]) == (200, "STALE")
