"""The rate_limit filter (docs/rate-limits.md): counts in memory and in Redis, keys that
a client cannot forge, fail-open, and the counts kept across a reload."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import pytest
import redis
import requests

from support.backends import HTTPBackend
from support.client import get, session
from support.net import reserve_port, wait_until
from support.proxy import REPO, SERVERS, ProxyProcess
from support.redis_server import REDIS_URL, needs_redis


def limited(domain: str, **config) -> dict:
    return {"filters": [{"use": "rate_limit", "config": config}]}


def statuses(proxy, domain, n, headers=None, client=None) -> list[int]:
    with session() as s:
        return [get(proxy, host=domain, headers=headers, client=client or s).status_code
                for _ in range(n)]


@pytest.fixture
def host():
    with HTTPBackend() as b:
        yield b


@pytest.mark.parametrize("server", SERVERS)
def test_a_burst_is_admitted_then_429_with_a_retry_after_that_is_honoured(
        tmp_path, host, server):
    domain = "burst.test"
    services = {domain: {"hosts": [host.port], **limited(domain, limit="30/minute", burst=5)}}
    with ProxyProcess(tmp_path, services, server=server) as proxy, session() as s:
        first = [get(proxy, host=domain, client=s) for _ in range(7)]
        assert [r.status_code for r in first] == [200] * 5 + [429] * 2
        assert host.count == 5
        refused = first[-1]
        assert refused.json() == {"error": "too many requests"}
        # one more every 2 s: the 6th may go when the first of the five is 2 s old
        assert refused.headers["Retry-After"] == "2"
        assert refused.headers["RateLimit-Policy"] == '"client";q=30;w=60'
        assert refused.headers["RateLimit"] == '"client";r=0;t=10'
        assert first[0].headers["RateLimit"] == '"client";r=4;t=2'
        assert first[4].headers["RateLimit"] == '"client";r=0;t=10'
        time.sleep(int(refused.headers["Retry-After"]))  # what the client is told to do
        assert get(proxy, host=domain, client=s).status_code == 200


@needs_redis
def test_two_replicas_with_one_redis_admit_the_limit_together(tmp_path, host):
    domain = f"shared-{uuid.uuid4().hex[:8]}.test"  # counts of earlier runs do not apply
    services = {domain: {"hosts": [host.port], **limited(domain, limit="50/minute")}}
    env = {"RATE_LIMIT_URL": REDIS_URL}
    one = ProxyProcess(tmp_path / "one", services, server="gunicorn", env=env,
                       extra_args=["--no-control-socket"])
    two = ProxyProcess(tmp_path / "two", services, server="gunicorn", env=env,
                       extra_args=["--no-control-socket"])
    with one, two, session() as a, session() as b:
        got = [get(p, host=domain, client=c).status_code
               for _ in range(40) for p, c in ((one, a), (two, b))]
    admitted = got.count(200)
    # 50 at once, and one more each 1.2 s the test runs: the documented slack.
    assert 50 <= admitted <= 52, got
    assert got.count(429) == len(got) - admitted
    assert host.count == admitted


def test_an_untrusted_peer_cannot_spread_one_client_over_many_keys(tmp_path, host):
    domain = "spread.test"
    services = {domain: {"hosts": [host.port], **limited(domain, limit="3/minute")}}
    with ProxyProcess(tmp_path, services) as proxy:
        got = [get(proxy, host=domain, headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
               for i in range(6)]
    assert got == [200] * 3 + [429] * 3


def test_behind_a_trusted_proxy_each_real_client_has_its_own_key(tmp_path, host):
    domain = "trusted.test"
    services = {domain: {"hosts": [host.port], **limited(domain, limit="2/minute")}}
    with ProxyProcess(tmp_path, services, env={"TRUSTED_PROXIES": "127.0.0.1"}) as proxy:
        alice = statuses(proxy, domain, 3, headers={"X-Forwarded-For": "198.51.100.1"})
        bob = statuses(proxy, domain, 3, headers={"X-Forwarded-For": "198.51.100.2"})
    assert alice == bob == [200, 200, 429]


def test_keys_per_header_and_per_service(tmp_path, host):
    by_header, by_service = "header.test", "service.test"
    services = {
        by_header: {"hosts": [host.port],
                    **limited(by_header, limit="2/minute", key="header:X-Api-Key")},
        by_service: {"hosts": [host.port], **limited(by_service, limit="2/minute",
                                                     key="service")},
    }
    with ProxyProcess(tmp_path, services, env={"TRUSTED_PROXIES": "127.0.0.1"}) as proxy:
        assert statuses(proxy, by_header, 3, headers={"X-Api-Key": "a"}) == [200, 200, 429]
        assert statuses(proxy, by_header, 3, headers={"X-Api-Key": "b"}) == [200, 200, 429]
        shared = [get(proxy, host=by_service,
                      headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                  for i in range(3)]
        assert shared == [200, 200, 429]
        metrics = requests.get(proxy.metrics_url(), timeout=5).text
    assert 'proxy_rate_limited_total{service="header-test"} 2.0' in metrics
    assert 'proxy_rate_limited_total{service="service-test"} 1.0' in metrics


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_with_redis_stopped_requests_pass_counted_with_one_warning_a_minute(tmp_path, host):
    port = reserve_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--bind", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), 10, 0.05, "the test's redis-server")
        domain = "failopen.test"
        services = {domain: {"hosts": [host.port], **limited(domain, limit="2/minute")}}
        with ProxyProcess(tmp_path, services, env={"RATE_LIMIT_URL": url}) as proxy:
            assert statuses(proxy, domain, 3) == [200, 200, 429]  # counted in Redis
            redis_proc.terminate()
            redis_proc.wait(10)
            mark = proxy.log_mark()
            deadline = time.monotonic() + 2.5  # more than one backoff period
            passed = []
            while time.monotonic() < deadline:
                passed += statuses(proxy, domain, 5)
            assert set(passed) == {200}  # fail open
            errors = _metric(proxy, "proxy_rate_limit_errors_total")
            assert errors >= len(passed)
            log = proxy.log_since(mark)
            assert log.count("Redis failed") == 1, log
            assert "letting requests through uncounted" in log
    finally:
        redis_proc.kill()
        redis_proc.wait(5)


def test_a_reload_with_an_unchanged_limit_keeps_the_counts(tmp_path, host):
    domain, other = "kept.test", "other.test"
    services = {domain: {"hosts": [host.port], **limited(domain, limit="3/minute")}}
    with ProxyProcess(tmp_path, services) as proxy:
        assert statuses(proxy, domain, 4) == [200, 200, 200, 429]
        proxy.write_routes({**services, other: [host.port]})
        proxy.reload()
        wait_until(lambda: get(proxy, host=other).status_code == 200, 10, 0.05,
                   "the reloaded routes")
        assert statuses(proxy, domain, 1) == [429]


def test_check_config_says_what_the_limit_is_with_several_workers_and_no_redis(tmp_path):
    routes = tmp_path / "routes.yaml"
    from support.proxy import routes_yaml
    routes.write_text(routes_yaml(8080, {"api.test": {"hosts": [9], **limited(
        "api.test", limit="10/second", burst=20)}}))
    done = subprocess.run([sys.executable, "-m", "wsgiproxy", "--check-config"], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "CONFIGURATION_FILENAME": str(routes),
                               "WEB_CONCURRENCY": "4"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ok: 1 service",
        "service api-test: rate_limit: 10/second per client, burst 20; counted in memory "
        "per process: with 4 gunicorn workers a key gets up to 40/second and 80 at once "
        "(set RATE_LIMIT_URL to share the counts)"]


def _pings(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=0.2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _metric(proxy, name: str) -> float:
    text = requests.get(proxy.metrics_url(), timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))
