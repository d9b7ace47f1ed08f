"""docs/cache.md with CACHE_URL=redis://: one cache for every worker and replica, and a proxy
that keeps serving (uncached) while Redis is down. Uses the Redis server on
127.0.0.1:6379; skipped, with the reason, where none answers."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import redis

from support.backends import cacheable
from support.client import get
from support.net import reserve_port, wait_port, wait_until
from support.redis_server import REDIS_URL, needs_redis

pytestmark = [pytest.mark.redis, needs_redis]


@pytest.fixture
def domain():
    return f"r{uuid.uuid4().hex[:12]}.test"  # keys of this test only


def test_two_proxies_share_one_entry(backend, start_proxy, domain):
    b = backend(cacheable)
    first = start_proxy({domain: [b.port]}, env={"CACHE_URL": REDIS_URL})
    second = start_proxy({domain: [b.port]}, env={"CACHE_URL": REDIS_URL})
    assert get(first, host=domain).headers["X-Cache"] == "MISS"
    r = get(second, host=domain)
    assert (r.headers["X-Cache"], r.content) == ("HIT", b"/x")
    assert b.count == 1


def test_gunicorn_workers_share_one_entry(backend, start_proxy, domain):
    b = backend(cacheable)
    p = start_proxy({domain: [b.port]}, server="gunicorn", workers=2, env={"CACHE_URL": REDIS_URL})
    results = [get(p, host=domain).headers["X-Cache"] for _ in range(20)]
    assert results == ["MISS"] + ["HIT"] * 19
    assert b.count == 1


def test_entries_expire_in_redis_after_the_ttl(backend, start_proxy, domain):
    b = backend(cacheable)
    p = start_proxy({domain: [b.port]}, env={"CACHE_URL": REDIS_URL, "HTTP_CACHE_TTL_SECONDS": "7"})
    get(p, host=domain)
    keys = redis.Redis.from_url(REDIS_URL).keys(f"wsgiproxy:http://{domain}/*")
    assert len(keys) == 1
    ttl_ms = redis.Redis.from_url(REDIS_URL).pttl(keys[0])
    assert 0 < ttl_ms <= 7000


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_redis_down_serves_uncached_then_resumes(backend, start_proxy, domain, tmp_path):
    b = backend(cacheable)
    port = reserve_port()
    p = start_proxy({domain: [b.port]}, env={"CACHE_URL": f"redis://127.0.0.1:{port}/0"})
    for _ in range(5):
        r = get(p, host=domain)
        assert (r.status_code, r.headers["X-Cache"]) == (200, "MISS")
    assert b.count == 5
    assert p.log.count("redis cache unavailable") == 1  # logged once, not per request
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 10)
        wait_until(lambda: get(p, host=domain).headers["X-Cache"] == "HIT", 10, 0.1,
                   "caching to resume")
    finally:
        server.terminate()
        server.wait(10)

