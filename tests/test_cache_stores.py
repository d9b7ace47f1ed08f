"""The cache backends on their own: bounds, expiry, encoding, Redis breaker."""

from __future__ import annotations

import time

import pytest

from support.net import reserve_port
from wsgiproxy.cache import Entry, MemoryStore, RedisStore, VaryIndex, from_wire


def entry(body: bytes = b"x") -> Entry:
    return Entry(200, "OK", [("Content-Type", "text/plain"), ("Set-X", "1"), ("Set-X", "2")],
                 body, response_time=time.time(), initial_age=3.0, lifetime=60.0,
                 vary={"accept": "a"}, revalidate=False)


def test_memory_cache_is_bounded_in_entries_lru_first():
    clock = [0.0]
    cache = MemoryStore(max_entries=3, max_bytes=10**9, ttl=60, clock=lambda: clock[0])
    for key in "abc":
        cache.set(key, entry())
    cache.get("a")  # a is now the most recently used
    cache.set("d", entry())
    assert [k for k in "abcd" if cache.get(k) is not None] == ["a", "c", "d"]
    assert len(cache) == 3


def test_memory_cache_is_bounded_in_bytes():
    cache = MemoryStore(max_entries=1000, max_bytes=10_000, ttl=60)
    for i in range(50):
        cache.set(str(i), entry(b"y" * 1000))
    assert sum(1 for i in range(50) if cache.get(str(i)) is not None) <= 10
    assert cache.get("49") is not None


def test_memory_cache_expires_entries():
    clock = [0.0]
    cache = MemoryStore(max_entries=10, max_bytes=10**9, ttl=60, clock=lambda: clock[0])
    cache.set("short", entry(), expires=5)
    cache.set("capped", entry(), expires=3600)  # the TTL caps it at 60
    clock[0] = 5.01
    assert cache.get("short") is None
    assert cache.get("capped") is not None
    clock[0] = 60.01
    assert cache.get("capped") is None


def test_memory_cache_ignores_an_entry_larger_than_itself():
    cache = MemoryStore(max_entries=10, max_bytes=1000, ttl=60)
    cache.set("big", entry(b"z" * 5000))
    assert cache.get("big") is None


def test_entries_survive_the_wire():
    e = entry(b"\x00\xffbody")
    assert from_wire(e.to_wire()) == e
    assert from_wire(VaryIndex(("accept", "cookie")).to_wire()) == VaryIndex(("accept", "cookie"))
    assert from_wire(b"not msgpack at all \xc1") is None


def test_age_grows_with_residence():
    e = entry()
    assert e.age(e.response_time + 10) == pytest.approx(13.0)


def test_redis_cache_breaks_instead_of_failing():
    errors = []
    cache = RedisStore.from_url(f"redis://127.0.0.1:{reserve_port()}/0", ttl=60,
                                on_error=errors.append)
    cache._retry_seconds = 60
    started = time.monotonic()
    assert cache.get("k") is None
    assert time.monotonic() - started < 0.5  # one refused connect, no retries
    cache.set("k", entry())
    cache.delete("k")
    assert errors == ["get"]  # then the breaker is open: no further attempts for a while
