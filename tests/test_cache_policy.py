"""The shared-cache rules on their own, in-process: what may be stored, for how long,
when a stored response is fresh, and what the client gets from it. Fast tables beside
the end-to-end tests of tests/test_cache.py, which prove the same rules over sockets."""

from __future__ import annotations

import email.utils
import time

import pytest

from wsgiproxy.cache import MemoryStore, SharedCacheController, cache_key
from wsgiproxy.cache.policy import HeaderList, HeaderMap
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
    pytest.param("GET", 500, h("Cache-Control: max-age=60"), h(), True,
                 id="500 with explicit freshness"),
    pytest.param("GET", 500, h('ETag: "e"'), h(), False, id="500 with a validator only"),
    pytest.param("GET", 299, h("Cache-Control: max-age=60"), h(), True, id="unknown 2xx"),
    pytest.param("GET", 206, h("Cache-Control: max-age=60"), h(), False, id="206"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60"), h("Range: bytes=0-1"), False,
                 id="answer to a range request"),
    pytest.param("GET", 200, h("Cache-Control: max-age=60, no-store, must-understand"), h(),
                 True, id="no-store, must-understand, understood status"),
    pytest.param("GET", 599, h("Cache-Control: max-age=60, no-store, must-understand"), h(),
                 False, id="no-store, must-understand, unknown status"),
    pytest.param("GET", 200, h("Cache-Control: Max-Age=60"), h(), True,
                 id="directives in any case"),
    pytest.param("GET", 200, h("Cache-Control: No-Store, max-age=60"), h(), False,
                 id="No-Store in any case"),
    pytest.param("GET", 200, h("CDN-Cache-Control: max-age=60", "Cache-Control: no-store"),
                 h(), True, id="CDN-Cache-Control wins"),
    pytest.param("GET", 200, h("CDN-Cache-Control: private", "Cache-Control: max-age=60"),
                 h(), False, id="CDN-Cache-Control private"),
    pytest.param("GET", 200, h("CDN-Cache-Control: max-age=\"60\"",
                               "Cache-Control: no-store"), h(), False,
                 id="an invalid CDN-Cache-Control is ignored"),
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
    pytest.param(0, h("Range: bytes=0-1"), "fresh", id="a range of a fresh whole response"),
    pytest.param(20, h("Range: bytes=0-1"), "miss", id="a range of a stale one: forwarded"),
    pytest.param(0, h("Range: bytes=0-1, 3-4"), "miss", id="several ranges: forwarded"),
    pytest.param(0, h("Range: bytes=9-"), "miss", id="unsatisfiable range: forwarded"),
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
    pytest.param(h("If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT"), 200,
                 id="modified since"),
    pytest.param(h("If-Modified-Since: yesterday"), 200, id="invalid date"),
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


@pytest.mark.parametrize(("range_", "status", "body", "content_range"), [
    ("bytes=0-1", 206, b"bo", "bytes 0-1/4"),
    ("bytes=1-", 206, b"ody", "bytes 1-3/4"),
    ("bytes=-1", 206, b"y", "bytes 3-3/4"),
    ("bytes=2-100", 206, b"dy", "bytes 2-3/4"),
])
def test_a_byte_range_is_cut_from_a_stored_response(range_, status, body, content_range):
    ctl = controller()
    stored(ctl, "Cache-Control: max-age=10")
    entry = ctl.lookup(KEY, h(f"Range: {range_}")).fresh
    answer = ctl.answer(entry, h(f"Range: {range_}"))
    assert (answer.status, answer.body) == (status, body)
    assert ("Content-Range", content_range) in answer.headers
    assert ("Content-Length", str(len(body))) in answer.headers


@pytest.mark.parametrize(("value", "expired"), [
    ("Tue, 19 Jan 2038 14:14:08 GMT", False),
    ("Thursday, 18-Aug-50 02:01:18 GMT", False),  # RFC 850: 2050
    ("Thu Aug  8 02:01:18 2050", False),  # asctime
    ("THU, 18 AUG 2050 02:01:18 gMT", False),  # names in any case
    ("Thu, 18 Aug 2050 02:01:18 UTC", True),
    ("Thu, 18 Aug 50 02:01:18 GMT", True),
    ("Thu 18 Aug 2050 02:01:18 GMT", True),
    ("Thu, 18  Aug  2050 02:01:18 GMT", True),
    ("Thu, 18-Aug-2050 02:01:18 GMT", True),
    ("Thu, 18 Aug 2050 02.01.18 GMT", True),
    ("Thu, 18 Aug 2050 2:01:18 GMT", True),
    ("0", True),
])
def test_only_a_valid_http_date_in_expires_gives_freshness(value, expired):
    entry = controller().make_entry(200, "OK", [("Expires", value)], b"x", h(), time.time())
    assert (entry.lifetime == 0) is expired


@pytest.mark.parametrize(("age", "fresh"), [
    ("7200, 0", False), ("0, 7200", True), ("abc", True), ("7200", False)])
def test_the_first_value_of_age_counts(age, fresh):
    entry = controller(ttl=10_000).make_entry(
        200, "OK", [("Cache-Control", "max-age=3600"), ("Age", age)], b"x", h(), time.time())
    assert (entry.age(time.time()) < entry.lifetime) is fresh


def test_cdn_cache_control_sets_the_lifetime_and_ignores_expires():
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    entry = controller().make_entry(200, "OK", [("CDN-Cache-Control", "max-age=30"),
                                                ("Cache-Control", "max-age=5"),
                                                ("Expires", past)], b"x", h(), time.time())
    assert entry.lifetime == 30
    assert ("CDN-Cache-Control", "max-age=30") in entry.headers  # passed on unchanged


def test_headers_named_in_connection_are_not_stored():
    entry = controller().make_entry(200, "OK", [("Connection", "a, B"), ("A", "1"),
                                                ("b", "2"), ("C", "3")], b"x", h(), time.time())
    assert [k for k, _ in entry.headers] == ["C", "Content-Length"]


@pytest.mark.parametrize(("cc", "age", "request_", "serve_stale", "on_error"), [
    pytest.param("max-age=1", 5, h(), False, True, id="stale: on error only"),
    pytest.param("max-age=1, stale-while-revalidate=10", 5, h(), True, True,
                 id="within stale-while-revalidate"),
    pytest.param("max-age=1, stale-while-revalidate=2", 5, h(), False, True,
                 id="past stale-while-revalidate"),
    pytest.param("max-age=1, stale-while-revalidate=10", 5, h("Cache-Control: no-cache"),
                 False, True, id="the client wants it revalidated"),
    pytest.param("max-age=1, stale-if-error=10", 5, h(), False, True,
                 id="within stale-if-error"),
    pytest.param("max-age=1, stale-if-error=2", 5, h(), False, False,
                 id="past stale-if-error"),
    pytest.param("max-age=1, must-revalidate", 5, h(), False, False, id="must-revalidate"),
    pytest.param("max-age=1, proxy-revalidate", 5, h(), False, False, id="proxy-revalidate"),
    pytest.param("max-age=1, s-maxage=1", 5, h(), False, False, id="s-maxage"),
    pytest.param("s-maxage=1, stale-while-revalidate=10", 5, h(), True, False,
                 id="s-maxage with stale-while-revalidate"),
])
def test_when_a_stale_response_may_be_served(cc, age, request_, serve_stale, on_error):
    ctl = controller()
    stored(ctl, f"Cache-Control: {cc}", age=age)
    lookup = ctl.lookup(KEY, request_)
    assert lookup.fresh is None
    assert lookup.stale is not None
    assert (lookup.serve_stale, lookup.stale_on_error) == (serve_stale, on_error)


def test_a_stored_error_is_never_served_for_a_new_one():
    ctl = controller()
    pairs = [("Cache-Control", "max-age=1")]
    entry = ctl.make_entry(503, "Service Unavailable", pairs, b"down", h(), time.time())
    entry.initial_age = 5
    ctl.store(KEY, h(), entry)
    assert ctl.lookup(KEY, h()).stale_on_error is False


def test_stale_on_error_can_be_turned_off():
    ctl = SharedCacheController(MemoryStore(100, 10**6, 60), ttl=60, max_object_bytes=1000,
                                serve_stale_on_error=False)
    stored(ctl, "Cache-Control: max-age=1", age=5)
    assert ctl.lookup(KEY, h()).stale_on_error is False


def test_a_request_header_map_answers_names_in_any_case():
    fields = HeaderMap({"Cache-Control": "no-cache", "If-None-Match": '"v"'})
    assert fields.get("cache-control") == "no-cache"
    assert fields.get("IF-NONE-MATCH") == '"v"'
    assert "CACHE-control" in fields
    assert "Pragma" not in fields
    assert fields.get("Pragma") is None
    assert controller().request_directives(fields) == {"no-cache": None}
