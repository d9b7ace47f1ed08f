"""docs/health.md as tables, without a proxy: outlier ejection in the balancer, the
retry budget, retries.on_status, the routes-file keys and their defaults, the verdicts
file, and one probe against real (plain and TLS) backends."""

from __future__ import annotations

import ssl
from collections import Counter

import decouple
import pytest
import trustme
from urllib3.exceptions import MaxRetryError, ProtocolError

from support.backends import Reply
from wsgiproxy.balancer import MAX_EJECTION_SECONDS, Reason, RoundRobin
from wsgiproxy.errors import ConfigError
from wsgiproxy.health.probe import Result, probe, tls_context
from wsgiproxy.health.state import HealthFile, HostHealth
from wsgiproxy.policy import HealthCheckPolicy, OutlierPolicy, resolve_policy
from wsgiproxy.routes_file import TLS, Backend, parse_routes
from wsgiproxy.settings import load_settings
from wsgiproxy.upstream.budget import WINDOW_SECONDS, RetryBudget
from wsgiproxy.upstream.retry import RetryPolicy

HOSTS = tuple(Backend("127.0.0.1", p) for p in (1, 2, 3, 4))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(hosts=HOSTS, consecutive=3, base=10.0, percent=50.0, **kw):
    clock = Clock()
    events: list[tuple] = []
    rr = RoundRobin(hosts, 10, clock=clock, outlier=OutlierPolicy(consecutive, base, percent),
                    listener=lambda h, up: events.append((h.port, up)),
                    on_ejection=lambda h, reason: events.append((h.port, reason)), **kw)
    return rr, clock, events


def fail(rr, host, times):
    for _ in range(times):
        rr.answered(host, True)


# -- outlier ejection ---------------------------------------------------------------------
def test_consecutive_errors_eject_and_a_success_resets_the_count():
    rr, _, events = balancer()
    fail(rr, HOSTS[0], 2)
    rr.answered(HOSTS[0], False)
    fail(rr, HOSTS[0], 2)
    assert HOSTS[0] in {rr.pick() for _ in range(8)}  # never 3 in a row
    rr.answered(HOSTS[0], True)
    assert HOSTS[0] not in {rr.pick() for _ in range(8)}
    assert events == [(1, Reason.CONSECUTIVE_5XX), (1, False)]


def test_the_ejection_grows_with_each_one_up_to_300_s_and_is_forgotten():
    rr, clock, _ = balancer(base=100.0)
    lengths = []
    for _ in range(5):
        fail(rr, HOSTS[0], 3)
        start = clock.now
        while HOSTS[0] not in {rr.pick() for _ in range(4)}:
            clock.now += 1
        lengths.append(round(clock.now - start))
    assert lengths == [100, 200, 300, 300, 300]
    clock.now += MAX_EJECTION_SECONDS + 1  # served five minutes since: a first offence
    fail(rr, HOSTS[0], 3)
    clock.now += 100.5
    assert HOSTS[0] in {rr.pick() for _ in range(4)}


@pytest.mark.parametrize(("hosts", "percent", "most"), [
    pytest.param(4, 50, 2, id="50 % of 4"),
    pytest.param(3, 50, 1, id="50 % of 3"),
    pytest.param(4, 10, 0, id="10 % of 4"),
    pytest.param(2, 100, 1, id="100 % of 2 still leaves one"),
    pytest.param(1, 100, 0, id="a single host is never ejected"),
])
def test_never_more_than_max_ejection_percent(hosts, percent, most):
    rr, _, events = balancer(HOSTS[:hosts], percent=percent)
    for host in HOSTS[:hosts]:
        fail(rr, host, 3)
    assert Counter(e[1] for e in events)[Reason.CONSECUTIVE_5XX] == most
    assert len({rr.pick() for _ in range(8)}) == hosts - most


def test_a_passed_probe_ends_an_ejection_and_a_failed_check_takes_a_host_out():
    rr, clock, events = balancer()
    fail(rr, HOSTS[0], 3)
    rr.checked(HOSTS[0], True, passed_at=clock.now - 1)  # a pass from before: no
    assert HOSTS[0] not in {rr.pick() for _ in range(6)}
    rr.checked(HOSTS[0], True, passed_at=clock.now + 0.5)
    assert HOSTS[0] in {rr.pick() for _ in range(4)}
    rr.checked(HOSTS[1], False, passed_at=0.0)
    assert HOSTS[1] not in {rr.pick() for _ in range(6)}
    assert events[-3:] == [(1, False), (1, True), (2, False)]


def test_every_host_out_sends_to_all_and_says_so():
    down = []
    rr, _, _ = balancer(HOSTS[:2], on_all_down=lambda: down.append(1))
    rr.checked(HOSTS[0], False, 0.0)
    rr.checked(HOSTS[1], False, 0.0)
    assert Counter(rr.pick() for _ in range(10)) == {HOSTS[0]: 5, HOSTS[1]: 5}
    assert len(down) == 10


def test_adopt_keeps_the_standing_of_the_hosts_both_have():
    old, _, _ = balancer(HOSTS[:2])
    old.checked(HOSTS[0], False, 0.0)
    new, _, _ = balancer((HOSTS[0], HOSTS[2]))
    new.adopt(old)
    assert HOSTS[0] not in {new.pick() for _ in range(6)}


# -- the retry budget ---------------------------------------------------------------------
def test_the_budget_allows_its_percentage_of_the_requests():
    clock, spent = Clock(), []
    budget = RetryBudget(20, 0, on_exhausted=lambda: spent.append(1), clock=clock)
    granted = 0
    for _ in range(100):
        budget.request()
        granted += budget.withdraw()
    assert granted == 20
    assert len(spent) == 80


def test_the_floor_allows_retries_each_second_and_the_window_moves_on():
    clock = Clock()
    budget = RetryBudget(20, 3, clock=clock)
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]
    clock.now += 1
    assert budget.withdraw()
    for _ in range(50):
        budget.request()
    clock.now += WINDOW_SECONDS + 1  # those requests are forgotten
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]


RESET = ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))


def test_same_host_retries_are_drawn_from_the_budget():
    spent = RetryPolicy(2, 0).same_host(RetryBudget(0, 0))
    with pytest.raises(MaxRetryError):
        spent.increment("GET", "/x", error=RESET)
    budget = RetryBudget(100, 0)
    budget.request()
    retry = RetryPolicy(2, 0).same_host(budget)
    retry = retry.increment("GET", "/x", error=RESET)
    assert retry.budget is budget  # carried from one Retry to the next


@pytest.mark.parametrize(("method", "status", "retried"), [
    pytest.param("GET", 503, True, id="GET 503"),
    pytest.param("GET", 500, False, id="GET 500 (not in on_status)"),
    pytest.param("POST", 503, False, id="POST 503"),
    pytest.param("PUT", 503, True, id="PUT 503"),
])
def test_on_status_decides_which_statuses_are_retried(method, status, retried):
    retry = RetryPolicy(2, 2, frozenset({503})).same_host()
    assert retry.is_retry(method, status) is retried


def test_a_next_host_after_a_sent_request_needs_the_budget():
    policy, budget = RetryPolicy(2, 2), RetryBudget(0, 0)
    ask = dict(method="GET", resendable=True, hosts_tried=1, hosts=3, attempts=1)
    assert policy.next_host(failure="after_head", budget=budget, **ask) is False
    assert policy.next_host(failure="not_sent", budget=budget, **ask) is True  # free


# -- the routes file and the defaults -----------------------------------------------------
def routes(**service):
    return {"proxy": {"listen": {"address": "127.0.0.1", "port": 8080}, "services": [
        {"name": "s", "domain": "s.test", "hosts": [{"address": "127.0.0.1", "port": 9}],
         **service}]}}


@pytest.mark.parametrize(("service", "message"), [
    pytest.param({"health_check": {"path": "healthz"}}, "proxy.services[0].health_check.path: "
                 "must be a path starting with '/', such as /healthz", id="path"),
    pytest.param({"health_check": {"interval_seconds": 0}}, "proxy.services[0].health_check."
                 "interval_seconds: must be a number of seconds > 0", id="interval"),
    pytest.param({"health_check": {"unhealthy_threshold": 0}}, "proxy.services[0]."
                 "health_check.unhealthy_threshold: must be a whole number >= 1 (probes "
                 "failed in a row)", id="threshold"),
    pytest.param({"health_check": {"expect_status": [200, 700]}}, "proxy.services[0]."
                 "health_check.expect_status[1]: must be an HTTP status code from 100 to 599",
                 id="expect_status"),
    pytest.param({"health_check": {"expect_status": []}}, "proxy.services[0].health_check."
                 "expect_status: must be a list of at least one HTTP status code", id="no status"),
    pytest.param({"health_check": {"intervall_seconds": 1}}, "proxy.services[0].health_check."
                 "intervall_seconds: unknown key (did you mean 'interval_seconds'?",
                 id="misspelled"),
    pytest.param({"outlier": {"max_ejection_percent": 150}}, "proxy.services[0].outlier."
                 "max_ejection_percent: must be a percentage from 0 to 100", id="percent"),
    pytest.param({"outlier": {"consecutive_5xx": -1}}, "proxy.services[0].outlier."
                 "consecutive_5xx: must be a whole number >= 0", id="consecutive"),
    pytest.param({"retries": {"on_status": 503}}, "proxy.services[0].retries.on_status: must "
                 "be a list of HTTP status codes", id="on_status"),
    pytest.param({"retries": {"budget_pct": 5}}, "proxy.services[0].retries.budget_pct: "
                 "unknown key (did you mean 'budget_percent'?", id="budget misspelled"),
    pytest.param({"retries": {"min_retries_per_second": -1}}, "proxy.services[0].retries."
                 "min_retries_per_second: must be a number >= 0", id="floor"),
])
def test_bad_keys_are_one_line_naming_the_field(service, message):
    with pytest.raises(ConfigError) as caught:
        parse_routes(routes(**service), "r.yaml")
    assert str(caught.value).startswith(f"r.yaml: {message}")
    assert "\n" not in str(caught.value)


class _Source(decouple.Config):
    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(decouple.RepositoryEmpty())
        self.values = values

    def get(self, option, default=decouple.undefined, cast=decouple.undefined):
        return self.values.get(option, default)


def test_every_key_defaults_to_its_setting():
    settings = load_settings(_Source({"HEALTH_CHECK_INTERVAL_SECONDS": "7",
                                      "RETRY_ON_STATUS": "503", "OUTLIER_CONSECUTIVE_5XX": "0"}))
    service = parse_routes(routes(health_check=True, retries={"budget_percent": 5})).services[0]
    policy = resolve_policy(service, settings)
    assert policy.health_check == HealthCheckPolicy("/healthz", 7, 1, 2, 3, frozenset({200}))
    assert policy.outlier == OutlierPolicy(0, 30, 50)
    assert (policy.retry_on_status, policy.retry_budget_percent,
            policy.retry_budget_min_per_second) == (frozenset({503}), 5, 10)
    unprobed = parse_routes(routes()).services[0]
    assert resolve_policy(unprobed, settings).health_check is None


@pytest.mark.parametrize(("name", "raw"), [
    pytest.param("RETRY_ON_STATUS", "503,abc", id="status"),
    pytest.param("RETRY_BUDGET_PERCENT", "120", id="percent"),
    pytest.param("HEALTH_CHECK_PATH", "healthz", id="path"),
    pytest.param("HEALTH_CHECK_HEALTHY_THRESHOLD", "0", id="threshold"),
    pytest.param("HEALTH_CHECK_EXPECT_STATUS", "", id="no expected status"),
])
def test_bad_settings_stop_start_up_naming_the_setting(name, raw):
    with pytest.raises(ConfigError, match=f"^{name}: "):
        load_settings(_Source({name: raw}))


# -- the verdicts file and one probe ------------------------------------------------------
def test_the_verdicts_file_is_read_once_per_change(tmp_path):
    written = HealthFile(tmp_path / "health.json")
    reader = HealthFile(tmp_path / "health.json")
    assert reader.read_if_changed() is False  # no file yet
    written.write({("s", "127.0.0.1:9"): HostHealth(False, 12.5)})
    assert reader.read_if_changed() is True
    assert reader.read_if_changed() is False
    assert reader.state == {("s", "127.0.0.1:9"): HostHealth(False, 12.5)}


CHECK = HealthCheckPolicy("/healthz", 1, 0.3, 2, 2, frozenset({200}))


@pytest.mark.parametrize(("status", "result"), [(200, Result.PASS), (503, Result.STATUS)])
def test_a_probe_asks_the_path_with_the_services_domain(backend, status, result):
    b = backend(lambda seen: Reply(status, [], b""))
    assert probe(Backend("127.0.0.1", b.port), "s.test", CHECK, None, "s.test") == result
    assert (b.seen[0].target, b.seen[0].header("Host")) == ("/healthz", "s.test")


def test_a_probe_of_a_closed_port_is_refused():
    from support.net import reserve_port

    assert probe(Backend("127.0.0.1", reserve_port()), "s.test", CHECK, None, "s") == \
        Result.REFUSED


def test_a_probe_uses_the_services_tls_settings(backend, tmp_path):
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("pay.internal").configure_cert(context)
    b = backend(lambda seen: Reply(200, [], b""), tls=context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    host = Backend("127.0.0.1", b.port)
    good = tls_context(TLS(ca_file=str(tmp_path / "ca.pem"), server_name="pay.internal"))
    assert probe(host, "pay.test", CHECK, good, "pay.internal") == Result.PASS
    assert b.seen[0].server_name == "pay.internal"
    assert probe(host, "pay.test", CHECK, good, "pay.test") == Result.TLS_ERROR  # wrong name
    unverified = tls_context(TLS(verify=False))
    assert probe(host, "pay.test", CHECK, unverified, "pay.test") == Result.PASS
