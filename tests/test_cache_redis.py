"""docs/cache.md with CACHE_URL=redis://: one cache for every worker and replica, and a proxy
that keeps serving (uncached) while Redis is down. Uses the Redis server on
127.0.0.1:6379; skipped, with the reason, where none answers."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import redis

from support.backends import Reply
from support.client import session
from support.net import accepts, reserve_port, wait_until

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not _redis_up(), reason="no Redis server answers on 127.0.0.1:6379"),
]


@pytest.fixture
def domain():
    return f"r{uuid.uuid4().hex[:12]}.test"  # keys of this test only


def cacheable(seen):
    return Reply(200, [("Cache-Control", "max-age=60")], seen.target.encode())


def get(p, domain, path="/proxy/x"):
    with session() as s:
        return s.get(p.url(path), headers={"Host": domain})


def test_two_proxies_share_one_entry(backend, proxy, domain):
    b = backend(cacheable)
    first = proxy({domain: [b.port]}, env={"CACHE_URL": REDIS_URL})
    second = proxy({domain: [b.port]}, env={"CACHE_URL": REDIS_URL})
    assert get(first, domain).headers["X-Cache"] == "MISS"
    r = get(second, domain)
    assert (r.headers["X-Cache"], r.content) == ("HIT", b"/x")
    assert b.count == 1


def test_gunicorn_workers_share_one_entry(backend, proxy, domain):
    b = backend(cacheable)
    p = proxy({domain: [b.port]}, server="gunicorn", workers=2, env={"CACHE_URL": REDIS_URL})
    results = [get(p, domain).headers["X-Cache"] for _ in range(20)]
    assert results == ["MISS"] + ["HIT"] * 19
    assert b.count == 1


def test_entries_expire_in_redis_after_the_ttl(backend, proxy, domain):
    b = backend(cacheable)
    p = proxy({domain: [b.port]}, env={"CACHE_URL": REDIS_URL, "HTTP_CACHE_TTL_SECONDS": "7"})
    get(p, domain)
    keys = redis.Redis.from_url(REDIS_URL).keys(f"wsgiproxy:http://{domain}/*")
    assert len(keys) == 1
    ttl_ms = redis.Redis.from_url(REDIS_URL).pttl(keys[0])
    assert 0 < ttl_ms <= 7000


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_redis_down_serves_uncached_then_resumes(backend, proxy, domain, tmp_path):
    b = backend(cacheable)
    port = reserve_port()
    p = proxy({domain: [b.port]}, env={"CACHE_URL": f"redis://127.0.0.1:{port}/0"})
    for _ in range(5):
        r = get(p, domain)
        assert (r.status_code, r.headers["X-Cache"]) == (200, "MISS")
    assert b.count == 5
    assert p.log.count("redis cache unavailable") == 1  # logged once, not per request
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: accepts(port), 10, message="redis-server to start")
        wait_until(lambda: get(p, domain).headers["X-Cache"] == "HIT", 10, 0.1,
                   "caching to resume")
    finally:
        server.terminate()
        server.wait(10)

