"""docs/health.md through a running proxy: active checks, outlier ejection, every host
down, retries.on_status and the retry budget, against real backends that can be
switched between healthy, 503 and hanging."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support.backends import Reply, Seen
from support.client import get, session
from support.net import wait_until

DOMAIN = "health.test"
GUNICORN = ["--no-control-socket"]


class Switch:
    """A backend's behaviour, switched by the test: what /healthz and what every other
    path answer (``ok``, a status such as ``503``, or ``hang``), and how often each was
    asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = "ok"
        self.data = "ok"
        self.probes = 0
        self.requests = 0
        self._lock = threading.Lock()
        self.released = threading.Event()  # ends every hang (at teardown)

    def __call__(self, seen: Seen) -> Reply:
        probe = seen.target == "/healthz"
        with self._lock:
            if probe:
                self.probes += 1
            else:
                self.requests += 1
        mode = self.health if probe else self.data
        if mode == "hang":
            self.released.wait(5)
            mode = "ok"
        status = 200 if mode == "ok" else int(mode)
        return Reply(status, [("X-Backend", self.name)], self.name.encode())


@pytest.fixture
def switched(backend):
    """Factory: ``switched(name)`` starts a backend answering as its :class:`Switch` says."""
    made: list[Switch] = []

    def start(name: str):
        switch = Switch(name)
        made.append(switch)
        b = backend(switch)
        b.switch = switch
        return b

    yield start
    for switch in made:
        switch.released.set()


def samples(p, name: str) -> dict[tuple, float]:
    """Every sample of ``name`` on the proxy's /metrics, by its label values."""
    text = requests.get(p.metrics_url(), timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(p, name: str, **labels: str) -> float:
    return samples(p, name).get(tuple(sorted(labels.items())), 0.0)


def backends_answering(p, n: int = 12) -> Counter:
    """Which backends answer ``n`` requests in a row, each on a new connection (so that
    under gunicorn they are spread over the workers)."""
    return Counter(get(p, host=DOMAIN, timeout=5).headers.get("X-Backend") for _ in range(n))


def check(**over) -> dict:
    return {"path": "/healthz", "interval_seconds": 0.2, "timeout_seconds": 0.3,
            "healthy_threshold": 2, "unhealthy_threshold": 2, **over}


def host(b) -> str:
    return f"127.0.0.1:{b.port}"


# -- active checks ------------------------------------------------------------------------
@pytest.mark.parametrize(("server", "workers", "lag", "failure"), [
    pytest.param("pywsgi", 1, 0.5, "503", id="pywsgi, 503"),
    pytest.param("pywsgi", 1, 0.5, "hang", id="pywsgi, hanging"),
    # Workers read the master's verdicts once a second.
    pytest.param("gunicorn", 2, 1.6, "503", id="gunicorn, 2 workers, 503"),
])
def test_a_failing_host_leaves_rotation_and_comes_back(switched, start_proxy, server,
                                                       workers, lag, failure):
    a, b = switched("a"), switched("b")
    p = start_proxy({DOMAIN: {"hosts": [a.port, b.port], "health_check": check()}},
                    server=server, workers=workers, extra_args=GUNICORN)
    assert set(backends_answering(p, 6)) == {"a", "b"}
    a.switch.health = failure
    failed_at = time.monotonic()
    # unhealthy_threshold x (interval + the timeout a hanging probe waits out)
    within = 2 * (0.2 + 0.3) + lag + 0.5
    wait_until(lambda: backends_answering(p, 12) == {"b": 12}, within, 0.02,
               "a out of rotation")
    assert time.monotonic() - failed_at <= within
    assert backends_answering(p, 20) == {"b": 20}
    assert value(p, "proxy_upstream_host_up", service="health-test", host=host(a)) == 0
    result = "status" if failure == "503" else "read_timeout"
    assert value(p, "proxy_health_checks_total", service="health-test", host=host(a),
                 result=result) >= 2
    assert value(p, "proxy_upstream_ejections_total", service="health-test", host=host(a),
                 reason="health_check") == 1  # once, by the one prober
    a.switch.health = "ok"
    a.switch.released.set()
    wait_until(lambda: set(backends_answering(p, 6)) == {"a", "b"}, 2 * 0.2 + lag + 1.0,
               0.02, "a back in rotation after healthy_threshold passes")
    wait_until(lambda: value(p, "proxy_upstream_host_up", service="health-test",
                             host=host(a)) == 1, lag + 0.5, 0.05, "up in every worker")


@pytest.mark.parametrize(("server", "workers"), [
    pytest.param("pywsgi", 1, id="pywsgi"),
    pytest.param("gunicorn", 2, id="gunicorn, 2 workers"),
])
def test_a_host_sees_one_probe_per_interval_whatever_the_workers(switched, start_proxy,
                                                                 server, workers):
    a = switched("a")
    p = start_proxy({DOMAIN: {"hosts": [a.port], "health_check": check(
        interval_seconds=0.25)}}, server=server, workers=workers, extra_args=GUNICORN)
    wait_until(lambda: a.switch.probes >= 1, 5, 0.01, "a first probe")
    start, started = a.switch.probes, time.monotonic()
    wait_until(lambda: time.monotonic() - started >= 1.5, 3, 0.05)  # six intervals
    probes = a.switch.probes - start
    assert 4 <= probes <= 7, probes  # one per 0.25 s (plus the time a probe takes)
    assert value(p, "proxy_health_checks_total", service="health-test", host=host(a),
                 result="pass") >= probes


def test_reload_keeps_the_verdicts_of_unchanged_hosts(switched, start_proxy):
    a, b, c = switched("a"), switched("b"), switched("c")
    a.switch.health = "503"
    services = {DOMAIN: {"hosts": [a.port, b.port], "health_check": check(
        interval_seconds=5, unhealthy_threshold=1)}}
    p = start_proxy(services, server="gunicorn", extra_args=GUNICORN)
    wait_until(lambda: backends_answering(p, 12) == {"b": 12}, 4, 0.05, "a out")
    before = a.switch.requests
    services[DOMAIN]["hosts"].append(c.port)  # the service changes; a's verdict stays
    p.write_routes(services)
    p.reload()
    wait_until(lambda: set(backends_answering(p, 6)) == {"b", "c"}, 6, 0.05, "c in")
    backends_answering(p, 12)
    assert a.switch.requests == before  # its next probe is 5 s away: the verdict stayed


# -- outlier ejection ---------------------------------------------------------------------
def test_a_host_answering_errors_is_ejected_and_comes_back(switched, start_proxy):
    a, b, c = switched("a"), switched("b"), switched("c")
    a.switch.data = "500"
    p = start_proxy({DOMAIN: {"hosts": [a.port, b.port, c.port], "outlier": {
        "consecutive_5xx": 3, "base_ejection_seconds": 2}}})
    with session(DOMAIN) as s:
        statuses = Counter(s.get(p.url("/proxy/x")).status_code for _ in range(30))
    assert a.switch.requests == 3  # then ejected for 2 s
    assert statuses == {500: 3, 200: 27}
    assert value(p, "proxy_upstream_ejections_total", service="health-test", host=host(a),
                 reason="consecutive_5xx") == 1
    assert value(p, "proxy_upstream_host_up", service="health-test", host=host(a)) == 0
    wait_until(lambda: "a" in backends_answering(p, 3), 5, 0.05, "a back after 2 s")
    with session(DOMAIN) as s:
        for _ in range(12):
            s.get(p.url("/proxy/x"))
    assert a.switch.requests == 6  # three more errors: ejected again, for twice as long
    assert "ejected for 4s after 3 errors in a row (ejection 2)" in p.log
    assert value(p, "proxy_upstream_ejections_total", service="health-test", host=host(a),
                 reason="consecutive_5xx") == 2


def test_never_more_than_max_ejection_percent_are_ejected(switched, start_proxy):
    hosts = [switched(name) for name in "abcd"]
    for h in hosts[:3]:
        h.switch.data = "503"
    p = start_proxy({DOMAIN: {"hosts": [h.port for h in hosts], "retries": {"http": 0},
                              "outlier": {"consecutive_5xx": 2, "base_ejection_seconds": 30,
                                          "max_ejection_percent": 50}}})
    with session(DOMAIN) as s:
        for _ in range(40):
            s.get(p.url("/proxy/x"))
    ejected = samples(p, "proxy_upstream_ejections_total")
    assert sum(ejected.values()) == 2  # 50 % of 4, though three hosts keep failing
    up = samples(p, "proxy_upstream_host_up")
    assert sorted(up.values()) == [0, 0, 1, 1]


def test_every_host_down_traffic_goes_to_all_and_is_counted(switched, start_proxy):
    a, b = switched("a"), switched("b")
    a.switch.health = b.switch.health = "503"
    p = start_proxy({DOMAIN: {"hosts": [a.port, b.port],
                              "health_check": check(unhealthy_threshold=1)}})
    wait_until(lambda: not any(samples(p, "proxy_upstream_host_up").values()), 3, 0.05,
               "both out")
    assert backends_answering(p, 10) == {"a": 5, "b": 5}
    assert value(p, "proxy_upstream_all_hosts_down_total", service="health-test") == 10
    assert "every host is down or ejected" in p.log


# -- retries.on_status, POST, the budget --------------------------------------------------
def flaky(status: int, failures: int):
    """Answers ``status`` to the first ``failures`` requests, then 200."""
    count = [0]

    def respond(seen: Seen) -> Reply:
        count[0] += 1
        if count[0] <= failures:
            return Reply(status, [], b"no")
        return Reply(200, [], b"fine")
    return respond


@pytest.mark.parametrize(("on_status", "status", "expected", "attempts"), [
    pytest.param([503], 503, 200, ["retryable_status 503", "response 200"],
                 id="503 is retried"),
    pytest.param([503], 500, 500, ["response 500"], id="500 is not"),
    pytest.param([500], 500, 200, ["retryable_status 500", "response 200"],
                 id="unless listed"),
])
def test_on_status_chooses_what_is_retried(backend, start_proxy, on_status, status, expected,
                                           attempts):
    b = backend(flaky(status, 1))
    p = start_proxy({DOMAIN: {"hosts": [b.port], "retries": {"on_status": on_status}}})
    with session(DOMAIN) as s:
        r = s.get(p.url("/proxy/x"), headers={"X-Request-ID": f"on-{status}"})
    assert (r.status_code, b.count) == (expected, len(attempts))
    logged = [a.split(" ", 1)[1] for a in p.access(f"on-{status}")["upstream_attempts"]]
    assert logged == attempts  # the access log and the attempts metric say which were retried


def test_on_status_never_retries_a_post(backend, start_proxy):
    b = backend(flaky(503, 1))
    p = start_proxy({DOMAIN: {"hosts": [b.port], "retries": {"on_status": [503]}}})
    with session(DOMAIN) as s:
        r = s.post(p.url("/proxy/x"), data=b"once")
    assert (r.status_code, b.count) == (503, 1)


def test_the_budget_keeps_a_failing_host_near_its_own_load(switched, start_proxy):
    """Every default (http 2, forward 2, budget 20 % + 10/s): without the budget the
    host would get 3 requests for each client request."""
    a = switched("a")
    a.switch.data = "503"
    p = start_proxy({DOMAIN: [a.port]})
    n = 300
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool, session(DOMAIN) as s:
        statuses = Counter(pool.map(lambda _: s.get(p.url("/proxy/x")).status_code,
                                    range(n)))
    elapsed = time.monotonic() - started
    assert statuses == {503: n}
    floor = 10 * (int(elapsed) + 1)  # min_retries_per_second, each second begun
    print(f"budget: {n} client requests, {a.switch.requests} at the host, {elapsed:.2f} s")
    assert a.switch.requests <= n * 1.2 + floor + 1
    assert value(p, "proxy_retry_budget_exhausted_total", service="health-test") > 0
