"""docs/cache.md: an RFC 9111 shared cache. Each test proves a hit by the backend *not* being
asked: the backend counts requests per path and echoes its count in the body.

The backend's answer is described in the query string (``?h=Name:value&status=200``),
so every test has its own path and its own response rules.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from support import client
from support.backends import HTTPBackend, Reply, Seen
from support.client import session
from support.net import raw_exchange, wait_until
from support.proxy import SERVERS, ProxyProcess, proxy_in_front

if TYPE_CHECKING:
    import requests

DOMAIN = "cache.test"


class Described:
    """A backend whose response is described by the request's query string."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        parts = urlsplit(seen.target)
        with self.lock:
            self.counts[parts.path] += 1
            n = self.counts[parts.path]
        query = parse_qsl(parts.query, keep_blank_values=True)
        headers = [tuple(v.split(":", 1)) for k, v in query if k == "h"]
        status = int(dict(query).get("status", 200))
        size = int(dict(query).get("size", 0))
        etag = next((v for k, v in headers if k.lower() == "etag"), None)
        modified = next((v for k, v in headers if k.lower() == "last-modified"), None)
        if (etag and seen.header("If-None-Match") == etag) or \
                (modified and seen.header("If-Modified-Since") == modified):
            return Reply(304, headers, b"")
        varied = "|".join(f"{v.strip()}={seen.header(v.strip())}" for k, val in headers
                          if k.lower() == "vary" for v in val.split(","))
        body = f"{parts.path} #{n} {varied}".encode() + b"x" * size
        if not any(k.lower() == "date" for k, _ in headers):
            headers.append(("Date", email.utils.formatdate(usegmt=True)))  # as real servers
        if seen.method not in ("GET", "HEAD"):
            status = int(dict(query).get("unsafe_status", status))
        return Reply(status, headers, body)


def url(path: str, *headers: str, status: int = 200, size: int = 0,
        unsafe_status: int = 0) -> str:
    query = "&".join(f"h={quote(h)}" for h in headers)
    extra = (f"&status={status}" if status != 200 else "") + (f"&size={size}" if size else "") \
        + (f"&unsafe_status={unsafe_status}" if unsafe_status else "")
    return f"/proxy{path}?{query}{extra}"


@pytest.fixture(scope="module")
def described():
    return Described()


@pytest.fixture(scope="module", params=SERVERS)
def shared(request, described, tmp_path_factory):
    with proxy_in_front(tmp_path_factory.mktemp(request.param), DOMAIN, described,
                        server=request.param, env={"CACHE_MAX_OBJECT_BYTES": "10000"}) as p:
        yield p


@pytest.fixture
def get(shared):
    s = session()

    def do(target: str, method: str = "GET", **headers) -> requests.Response:
        return client.get(shared, target, method=method, host=DOMAIN, client=s,
                          data=headers.pop("data", None),
                          headers={k.replace("_", "-"): v for k, v in headers.items()})
    yield do
    s.close()


@pytest.fixture
def path(request, shared):
    """A path of this test's own (per server and case: the backends' counters are shared)."""
    return f"/{shared.server}/{request.node.name.split('[')[0]}-{abs(hash(request.node.name))}"


def hits(described, path) -> int:
    return described.counts[path]


# -- freshness -----------------------------------------------------------------------
def test_max_age_response_is_served_from_cache(get, described, path):
    target = url(path, "Cache-Control:max-age=60")
    first, second = get(target), get(target)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert hits(described, path) == 1
    assert int(second.headers["Age"]) >= 0
    assert "Age" not in first.headers


def test_an_answer_from_one_host_serves_requests_for_the_others(shared, get, path):
    target = url(path, "Cache-Control:max-age=60")
    before = [b.count for b in shared.backends]
    for _ in range(6):
        assert get(target).status_code == 200
    assert sum(b.count for b in shared.backends) - sum(before) == 1


@pytest.mark.parametrize(("cc", "cached"), [
    ("max-age=0, s-maxage=60", True),
    ("max-age=60, s-maxage=0", False),
    ("s-maxage=60", True),
])
def test_s_maxage_wins_over_max_age(get, described, path, cc, cached):
    p = path
    target = url(p, f"Cache-Control:{cc}")
    get(target)
    assert (get(target).headers["X-Cache"] == "HIT") is cached
    assert hits(described, p) == (1 if cached else 2)


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.mark.parametrize(("expires", "cached"), [
    pytest.param(_http_date(3600), True, id="future"),
    pytest.param(_http_date(-3600), False, id="past"),
    pytest.param("0", False, id="invalid means expired"),
    pytest.param("next tuesday", False, id="garbage means expired"),
])
def test_expires(get, described, path, expires, cached):
    p = path
    target = url(p, f"Expires:{expires}")
    assert get(target).status_code == 200
    assert (get(target).headers["X-Cache"] == "HIT") is cached


def test_unparsable_date_is_survived(get, described, path):
    target = url(path, "Date:not a date at all", "Cache-Control:max-age=60")
    first, second = get(target), get(target)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["X-Cache"] == "HIT"


def test_age_from_the_host_counts(get, described, path):
    young = url(f"{path}-young", "Cache-Control:max-age=60", "Age:10")
    old = url(f"{path}-old", "Cache-Control:max-age=60", "Age:100")
    get(young)
    hit = get(young)
    assert hit.headers["X-Cache"] == "HIT"
    assert int(hit.headers["Age"]) >= 10
    get(old)
    assert get(old).headers["X-Cache"] == "MISS"  # already older than its lifetime


def test_cached_answer_keeps_the_stored_date(get, path):
    # The host's Date is 10 s old (still fresh): a hit re-dated "now" would differ from it
    # without waiting for the clock to pass a second boundary, and its Age counts from it.
    date = _http_date(-10)
    target = url(path, "Cache-Control:max-age=60", f"Date:{date}")
    first = get(target)
    second = get(target)
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Date"] == first.headers["Date"] == date
    assert int(second.headers["Age"]) >= 10


# -- what is never stored -------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    pytest.param(("Cache-Control:no-store, max-age=60",), id="no-store"),
    pytest.param(("Cache-Control:private, max-age=60",), id="private"),
    pytest.param(('Cache-Control:private="X-User", max-age=60',), id="private with fields"),
    pytest.param(("Cache-Control:max-age=60", "Set-Cookie:session=1"), id="set-cookie"),
    pytest.param(("Cache-Control:max-age=60", "Vary:*"), id="vary star"),
    pytest.param((), id="no freshness, no validator"),
])
def test_never_stored(get, described, path, headers):
    p = path
    target = url(p, *headers)
    get(target)
    assert get(target).headers["X-Cache"] == "MISS"
    assert hits(described, p) == 2


@pytest.mark.parametrize(("cc", "stored"), [
    ("max-age=60", False),
    ("public, max-age=60", True),
    ("s-maxage=60", True),
    ("must-revalidate, max-age=60", True),
])
def test_requests_with_authorization(get, described, path, cc, stored):
    p = path
    target = url(p, f"Cache-Control:{cc}")
    get(target, Authorization="Bearer alice")
    other = get(target, Authorization="Bearer bob")
    assert (other.headers["X-Cache"] == "HIT") is stored
    assert hits(described, p) == (1 if stored else 2)


def test_large_responses_stream_through_unstored(get, described, path):
    target = url(path, "Cache-Control:max-age=60", size=20000)  # over CACHE_MAX_OBJECT_BYTES
    assert len(get(target).content) > 20000
    assert get(target).headers["X-Cache"] == "MISS"
    assert hits(described, path) == 2


def test_a_chunked_response_is_stored_with_its_length(shared, described, path):
    chunked = HTTPBackend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")],
                                              [b"part1,", b"part2"])).start()
    try:
        p = ProxyProcess(shared.workdir / "chunked", {DOMAIN: [chunked.port]},
                         server=shared.server).start()
        with session() as s:
            first = s.get(p.url("/proxy/c"), headers={"Host": DOMAIN})
            second = s.get(p.url("/proxy/c"), headers={"Host": DOMAIN})
        p.stop()
    finally:
        chunked.stop()
    assert first.content == second.content == b"part1,part2"
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Content-Length"] == "11"
    assert chunked.count == 1


# -- the client's say ---------------------------------------------------------------
@pytest.mark.parametrize("header", [{"Cache_Control": "no-cache"},
                                   {"Cache_Control": "max-age=0"},
                                   {"Pragma": "no-cache"}])
def test_client_can_insist_on_fresh(get, described, path, header):
    p = path
    target = url(p, "Cache-Control:max-age=60")
    get(target)
    assert get(target, **header).headers["X-Cache"] == "MISS"
    assert hits(described, p) == 2
    assert get(target).headers["X-Cache"] == "HIT"  # and the fresh answer was stored


def test_client_no_store_is_not_stored(get, described, path):
    target = url(path, "Cache-Control:max-age=60")
    get(target, Cache_Control="no-store")
    assert get(target).headers["X-Cache"] == "MISS"


def test_client_max_age_limits_the_age_it_accepts(get, described, path):
    target = url(path, "Cache-Control:max-age=60", "Age:30")
    get(target)
    assert get(target, Cache_Control="max-age=10").headers["X-Cache"] == "MISS"


def test_only_if_cached_without_an_entry_is_504(get, path):
    r = get(url(path, "Cache-Control:max-age=60"), Cache_Control="only-if-cached")
    assert r.status_code == 504
    assert "error" in r.json()


def test_client_conditional_on_a_fresh_hit_gets_304(get, described, path):
    target = url(path, "Cache-Control:max-age=60", 'ETag:"v1"')
    get(target)
    r = get(target, If_None_Match='"v1"')
    assert (r.status_code, r.content, r.headers["X-Cache"]) == (304, b"", "HIT")
    assert get(target, If_None_Match='"v0"').status_code == 200
    assert hits(described, path) == 1


# -- revalidation ---------------------------------------------------------------------
@pytest.mark.parametrize("validator", ['ETag:"abc"', f"Last-Modified:{_http_date(-86400)}"])
def test_stale_entry_is_revalidated_and_304_refreshes_it(shared, get, described, path,
                                                        validator):
    p = path
    target = url(p, "Cache-Control:max-age=0", validator)
    first = get(target)
    second = get(target)  # stale at once: revalidated, 304, full body from the cache
    assert (second.status_code, second.content) == (200, first.content)
    assert second.headers["X-Cache"] == "HIT"
    seen = [s for b in shared.backends for s in b.seen if s.target == target[len("/proxy"):]]
    assert len(seen) == 2  # (across three backends: not in time order)
    condition = "If-None-Match" if validator.startswith("ETag") else "If-Modified-Since"
    assert sorted(s.has(condition) for s in seen) == [False, True]


def test_a_304_that_extends_freshness_makes_later_requests_hits():
    etag = '"e1"'

    def respond(seen):
        if seen.header("If-None-Match") == etag:
            return Reply(304, [("ETag", etag), ("Cache-Control", "max-age=60")], b"")
        return Reply(200, [("ETag", etag), ("Cache-Control", "max-age=0")], b"v1")

    # A dedicated backend: the 304 carries new freshness.
    b = HTTPBackend(respond).start()
    with ProxyProcess(_workdir(), {DOMAIN: [b.port]}) as p, session() as s:
        h = {"Host": DOMAIN}
        assert s.get(p.url("/proxy/r"), headers=h).content == b"v1"
        assert s.get(p.url("/proxy/r"), headers=h).headers["X-Cache"] == "HIT"  # revalidated
        third = s.get(p.url("/proxy/r"), headers=h)
    b.stop()
    assert (third.headers["X-Cache"], third.content) == ("HIT", b"v1")
    assert b.count == 2  # the third was fresh after the 304: no request at all


def _workdir():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="cache-"))


def test_no_cache_response_is_stored_but_always_revalidated(shared, get, described, path):
    target = url(path, "Cache-Control:no-cache", 'ETag:"nc"')
    get(target)
    assert get(target).headers["X-Cache"] == "HIT"
    assert get(target).headers["X-Cache"] == "HIT"
    assert hits(described, path) == 3  # every use was validated


# -- vary, invalidation, HEAD -------------------------------------------------------------
def test_vary_keeps_variants_apart(get, described, path):
    target = url(path, "Cache-Control:max-age=60", "Vary:Accept-Language")
    en = get(target, Accept_Language="en")
    fr = get(target, Accept_Language="fr")
    assert b"Accept-Language=en" in en.content
    assert b"Accept-Language=fr" in fr.content
    en2, fr2 = get(target, Accept_Language="en"), get(target, Accept_Language="fr")
    assert (en2.content, fr2.content) == (en.content, fr.content)  # never mixed
    assert en2.headers["X-Cache"] == fr2.headers["X-Cache"] == "HIT"  # both kept
    assert hits(described, path) == 2


@pytest.mark.parametrize(("method", "status", "invalidates"), [
    ("POST", 200, True), ("PUT", 204, True), ("PATCH", 200, True), ("DELETE", 200, True),
    ("POST", 500, False),
])
def test_unsafe_methods_invalidate(get, described, path, method, status, invalidates):
    p = path
    target = url(p, "Cache-Control:max-age=60", unsafe_status=status)
    get(target)
    assert get(target, method=method, data=b"x").status_code == status
    assert (get(target).headers["X-Cache"] == "MISS") is invalidates


def test_head_is_served_from_a_stored_get_and_never_stored(shared, get, described, path):
    target = url(path, "Cache-Control:max-age=60")
    head_first = get(target, method="HEAD")
    assert head_first.headers["X-Cache"] == "MISS"
    assert get(target).headers["X-Cache"] == "MISS"  # the HEAD stored nothing
    [head] = raw_exchange(shared.port, f"HEAD {target} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n"
                          .encode())
    assert head.header("X-Cache") == "HIT"
    assert head.body == b""
    assert int(head.header("Content-Length")) > 0


def test_repeated_headers_survive_the_cache(shared, path):
    target = url(path, "Cache-Control:max-age=60", "Link:</a>; rel=preload",
                 "Link:</b>; rel=preload")
    req = f"GET {target} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
    [first, second] = raw_exchange(shared.port, req, req)
    assert second.header("X-Cache") == "HIT"
    assert second.all("Link") == first.all("Link") == ["</a>; rel=preload",
                                                       "</b>; rel=preload"]


# -- bounds ---------------------------------------------------------------------------
def test_ttl_caps_every_entry(backend, start_proxy):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=3600")], b"x"))
    p = start_proxy({DOMAIN: [b.port]}, env={"HTTP_CACHE_TTL_SECONDS": "1"})
    with session() as s:
        s.get(p.url("/proxy/t"), headers={"Host": DOMAIN})
        stored = time.monotonic()
        assert s.get(p.url("/proxy/t"), headers={"Host": DOMAIN}).headers["X-Cache"] == "HIT"
        wait_until(lambda: s.get(p.url("/proxy/t"), headers={"Host": DOMAIN})
                   .headers["X-Cache"] == "MISS", 5, 0.05, "the entry to expire")
    assert time.monotonic() - stored >= 1.0


def test_ttl_zero_stores_nothing(backend, start_proxy):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=3600")], b"x"))
    p = start_proxy({DOMAIN: [b.port]}, env={"HTTP_CACHE_TTL_SECONDS": "0"})
    with session() as s:
        for _ in range(3):
            assert s.get(p.url("/proxy/t"), headers={"Host": DOMAIN}).headers["X-Cache"] == \
                "MISS"
    assert b.count == 3


def test_lru_keeps_at_most_cache_max_entries(backend, start_proxy):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=3600")], b"x"))
    p = start_proxy({DOMAIN: [b.port]}, env={"CACHE_MAX_ENTRIES": "5"})
    with session() as s:

        def fetch(i):
            return s.get(p.url(f"/proxy/{i}"), headers={"Host": DOMAIN}).headers["X-Cache"]

        for i in range(6):
            fetch(i)
        assert fetch(5) == "HIT"  # the newest is kept
        assert fetch(0) == "MISS"  # the least recently used went to make room
    assert b.count == 7
