"""The shared-cache rules on their own, in-process: what may be stored, for how long,
when a stored response is fresh, and what the client gets from it. Fast tables beside
the end-to-end tests of tests/test_cache.py, which prove the same rules over sockets."""

from __future__ import annotations

import email.utils
import time

import pytest

from wsgiproxy.cache import MemoryStore, SharedCacheController, cache_key
from wsgiproxy.cache.policy import HeaderList
from wsgiproxy.errors import NotCached

KEY = cache_key("svc.test", "/x")
NOW = email.utils.formatdate(usegmt=True)


def controller(ttl: float = 60, max_object_bytes: int = 1000) -> SharedCacheController:
    return SharedCacheController(MemoryStore(100, 10**6, ttl), ttl=ttl,
                                 max_object_bytes=max_object_bytes)


def h(*pairs: str) -> HeaderList:
    """Headers from "Name: value" strings."""
    return HeaderList(tuple(p.split(": ", 1)) for p in pairs)  # type: ignore[misc]


@pytest.mark.parametrize(("method", "status", "response", "request_", "storable"), [
    pytest.param("GET", 200, h("Cache-Control: max-age=60"), h(), True, id="max-age"),
    pytest.param("GET", 200, h("Cache-Control: s-maxage=60"), h(), True, id="s-maxage"),
    pytest.param("GET", 200, h(f"Expires: {NOW}", f"Date: {NOW}"), h(), False,
                 id="expires now"),
    pytest.param("GET", 200, h('ETag: "v1"'), h(), True, id="validator only"),
    pytest.param("GET", 200, h(), h(), False, id="nothing to go by"),
    pytest.param("HEAD", 200, h("Cache-Control: max-age=60"), h(), False, id="HEAD"),
    pytest.param("POST", 200, h("Cache-Control: max-age=60"), h(), False, id="POST"),
    pytest.param("GET", 500, h("Cache-Control: max-age=60"), h(), False, id="500"),
    pytest.param("GET", 404, h("Cache-Control: max-age=60"), h(), True, id="404"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60, private"), h(), False,
                 id="private"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60, no-store"), h(), False,
                 id="no-store"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60"), h("Cache-Control: no-store"),
                 False, id="client no-store"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60"), h("Authorization: x"), False,
                 id="authorization"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60, public"), h("Authorization: x"),
                 True, id="authorization, public"),
    pytest.param("GET", 200, h("Cache-Control: s-maxage=60"), h("Authorization: x"), True,
                 id="authorization, s-maxage"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60", "Set-Cookie: a=1"), h(), False,
                 id="set-cookie"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60", "Vary: *"), h(), False,
                 id="vary star"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60", "Content-Length: 1001"), h(),
                 False, id="over CACHE_MAX_OBJECT_BYTES"),
    pytest.param("GET", 200, h("Cache-Control: no-cache"), h(), False,
                 id="no-cache without validator"),
    pytest.param("GET", 200, h("Cache-Control: no-cache", 'ETag: "a"'), h(), True,
                 id="no-cache with validator"),
])
def test_what_may_be_stored(method, status, response, request_, storable):
    assert controller().storable(method, status, response, request_) is storable


@pytest.mark.parametrize(("headers", "lifetime"), [
    pytest.param(["Cache-Control: max-age=30"], 30, id="max-age"),
    pytest.param(["Cache-Control: max-age=30, s-maxage=50"], 50, id="s-maxage wins"),
    pytest.param(["Cache-Control: max-age=3600"], 60, id="capped by the TTL"),
    pytest.param([f"Date: {NOW}", "Expires: " + email.utils.formatdate(time.time() + 20,
                                                                       usegmt=True)],
                 20, id="Expires - Date"),
    pytest.param(["Expires: not a date"], 0, id="invalid Expires: already stale"),
    pytest.param([], 0, id="none"),
])
def test_freshness_lifetime(headers, lifetime):
    pairs = [tuple(x.split(": ", 1)) for x in headers]
    entry = controller().make_entry(200, "OK", pairs, b"body", h(), time.time())
    assert entry.lifetime == pytest.approx(lifetime, abs=1.5)


def stored(ctl: SharedCacheController, *headers: str, age: float = 0) -> None:
    pairs = [tuple(x.split(": ", 1)) for x in headers]
    entry = ctl.make_entry(200, "OK", pairs, b"body", h(), time.time())
    entry.initial_age = age
    ctl.store(KEY, h(), entry)


@pytest.mark.parametrize(("age", "request_", "result"), [
    pytest.param(0, h(), "fresh", id="fresh"),
    pytest.param(20, h(), "stale", id="older than max-age"),
    pytest.param(0, h("Cache-Control: no-cache"), "stale", id="client no-cache"),
    pytest.param(0, h("Pragma: no-cache"), "stale", id="HTTP/1.0 Pragma"),
    pytest.param(5, h("Cache-Control: max-age=2"), "stale", id="client max-age"),
    pytest.param(5, h("Cache-Control: min-fresh=6"), "stale", id="client min-fresh"),
    pytest.param(0, h("Range: bytes=0-1"), "miss", id="range is never served"),
])
def test_when_a_stored_response_is_fresh(age, request_, result):
    ctl = controller()
    stored(ctl, "Cache-Control: max-age=10", 'ETag: "v"', age=age)
    lookup = ctl.lookup(KEY, request_)
    found = "fresh" if lookup.fresh else "stale" if lookup.stale else "miss"
    assert found == result
    if result == "stale":
        assert lookup.validators == {"If-None-Match": '"v"'}


def test_only_if_cached_with_nothing_stored_is_504():
    with pytest.raises(NotCached):
        controller().lookup(KEY, h("Cache-Control: only-if-cached"))


@pytest.mark.parametrize(("request_", "status"), [
    pytest.param(h(), 200, id="unconditional"),
    pytest.param(h('If-None-Match: "v"'), 304, id="etag matches"),
    pytest.param(h('If-None-Match: W/"v"'), 304, id="weak comparison"),
    pytest.param(h('If-None-Match: "other"'), 200, id="etag differs"),
    pytest.param(h(f"If-Modified-Since: {NOW}"), 304, id="not modified since"),
])
def test_the_client_gets_304_when_its_own_conditions_hold(request_, status):
    ctl = controller()
    stored(ctl, "Cache-Control: max-age=10", 'ETag: "v"', f"Last-Modified: {NOW}")
    entry = ctl.lookup(KEY, h()).fresh
    answer = ctl.answer(entry, request_)
    assert answer.status == status
    assert ("Age", "0") in answer.headers


def test_variants_are_kept_apart():
    ctl = controller()
    for lang in ("en", "fr"):
        req = h(f"Accept-Language: {lang}")
        entry = ctl.make_entry(200, "OK", [("Cache-Control", "max-age=60"),
                                           ("Vary", "Accept-Language")], lang.encode(), req,
                               time.time())
        ctl.store(KEY, req, entry)
    assert ctl.lookup(KEY, h("Accept-Language: en")).fresh.body == b"en"
    assert ctl.lookup(KEY, h("Accept-Language: fr")).fresh.body == b"fr"
    assert ctl.lookup(KEY, h("Accept-Language: de")).fresh is None


def test_a_304_refreshes_the_stored_headers_but_not_the_body():
    ctl = controller()
    stored(ctl, "Cache-Control: max-age=10", 'ETag: "v"', "X-Version: 1", age=20)
    stale = ctl.lookup(KEY, h()).stale
    refreshed = ctl.refresh(KEY, stale, h(), [("X-Version", "2"), ("Content-Length", "0"),
                                              ("Cache-Control", "max-age=10")], time.time())
    assert (refreshed.header("X-Version"), refreshed.header("Content-Length")) == ("2", "4")
    assert ctl.lookup(KEY, h()).fresh.body == b"body"


def test_a_capture_stores_only_a_whole_body_within_the_limit():
    ctl = controller(max_object_bytes=10)
    head = [("Cache-Control", "max-age=60"), ("Content-Length", "8")]
    short = ctl.capture(KEY, h(), 200, "OK", head, time.time())
    short.feed(b"1234")
    short.finish()  # 4 of 8 bytes: a body broken off is never stored
    assert ctl.lookup(KEY, h()).fresh is None
    big = ctl.capture(KEY, h(), 200, "OK", [("Cache-Control", "max-age=60")], time.time())
    big.feed(b"12345678901")
    big.finish()
    assert ctl.lookup(KEY, h()).fresh is None
    whole = ctl.capture(KEY, h(), 200, "OK", head, time.time())
    whole.feed(b"1234")
    whole.feed(b"5678")
    whole.finish()
    assert ctl.lookup(KEY, h()).fresh.body == b"12345678"
