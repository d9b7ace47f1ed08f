"""Prometheus metrics of the proxy (docs/metrics.md), and their exposition.

Labels stay bounded: services come from the routes file (requests that match none are
``service="unrouted"``, never the client's Host), hosts from the routes file, methods
from a fixed list (anything else is ``OTHER``), outcomes and cache results from fixed
sets. No raw path ever becomes a label.

Under gunicorn every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen when prometheus_client is first imported,
which is why ``gunicorn.conf.py`` sets the variable before anything imports it),
and the single metrics server in the master sums them (:func:`exposition`).

Usage::

    metrics = Metrics(routes.services, CollectorRegistry())
    app = ProxyApp(settings, routes, upstream, metrics)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from .logs import UNROUTED

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from .exchange import Exchange
    from .routes_file import Backend, Service

__all__ = ["BUCKETS", "METHODS", "HealthMetrics", "HostMetrics", "Metrics", "ProcessesCollector",
           "ReloadMetrics", "exposition"]

#: Seconds: sub-millisecond cache hits up to a minute-long stream.
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                            "TRACE", "CONNECT"})
CACHE_RESULTS: Final = ("hit", "revalidated", "miss", "stale", "coalesced")


class Metrics:
    """Every metric the proxy exports, registered once on ``registry``.

    :param services: from the routes file; their hosts' ``up`` gauges start at 1.
    :param registry: the default registry in production; tests pass a fresh one.
    """

    def __init__(self, services: Iterable[Service] = (),
                 registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ["service"], buckets=BUCKETS, registry=registry)

        self.requests = counter("proxy_requests", "Requests answered, by service, method "
                                "and status code.", ["service", "method", "code"])
        self.duration = histogram("proxy_request_duration_seconds",
                                  "Request received to response finished.")
        self.request_processing = histogram(
            "proxy_request_processing_seconds",
            "Request received to request forwarded to a host (the proxy's own work on "
            "the way in, including body upload and failed attempts).")
        self.response_processing = histogram(
            "proxy_response_processing_seconds",
            "Host's response head received to response finished (the way out, "
            "including streaming the body to the client).")
        self.attempts = counter("proxy_upstream_attempts", "Attempts to send a request to "
                                "a host, by how they ended.", ["service", "host", "outcome"])
        self.cache = counter("proxy_cache_requests", "Cache lookups by result (hit, "
                             "revalidated, miss, stale, coalesced).", ["service", "result"])
        self.cache_errors = counter("proxy_cache_errors", "Failed operations of the "
                                    "shared (Redis) cache; decode: an entry that is not "
                                    "one the proxy wrote, served as a miss.", ["operation"])
        self.client_timeouts = counter(
            "proxy_client_timeouts", "Client connections closed because the client was "
            "too slow: its header section (phase=header), a pause in its body "
            "(phase=body), or it stopped reading its response (phase=response).",
            ["phase"])
        self.filter_errors = counter(
            "proxy_filter_errors", "Filter hooks that raised (answered 500 in a request or "
            "response hook; logged only in on_complete), by service and filter.",
            ["service", "filter"])
        self.host_up = Gauge("proxy_upstream_host_up", "1 while a host is in rotation, 0 "
                             "while it is out: ejected (refused connections, answered "
                             "errors in a row) or failing its health checks (the lowest "
                             "over live workers).", ["service", "host"], registry=registry,
                             multiprocess_mode="livemin")
        self.ejections = counter(
            "proxy_upstream_ejections", "Hosts taken out of rotation, by reason: refused "
            "(a connection, per worker), consecutive_5xx (per worker), health_check (once, "
            "by the prober).", ["service", "host", "reason"])
        self.all_hosts_down = counter(
            "proxy_upstream_all_hosts_down", "Requests sent to a service's hosts although "
            "every one was out of rotation.", ["service"])
        self.retry_budget_exhausted = counter(
            "proxy_retry_budget_exhausted", "Retries not made because the service's retry "
            "budget was spent.", ["service"])
        #: What the upstream client tells about hosts (docs/health.md).
        self.host_state = HostMetrics(self)
        self.in_flight = Gauge("proxy_requests_in_flight", "Requests being served.",
                               registry=registry, multiprocess_mode="livesum")
        self.tunnels = Gauge("proxy_tunnels_active", "Upgraded connections (WebSocket) "
                             "being relayed.", ["service"], registry=registry,
                             multiprocess_mode="livesum")
        self._children: dict[tuple[Any, ...], Any] = {}
        self.track(services)
        for operation in ("get", "set", "delete", "decode"):
            self.cache_errors.labels(operation)
        for phase in ("header", "body", "response"):
            self.client_timeouts.labels(phase)

    def track(self, services: Iterable[Service]) -> None:
        """Start the series of these services (at start-up and for a reload's new ones):
        their hosts are up until one refuses, their cache results start at 0."""
        for service in services:
            for host in service.hosts:
                if (id(self.host_up), service.name, str(host)) not in self._children:
                    self._child(self.host_up, service.name, str(host)).set(1)
                for reason in ("refused", "consecutive_5xx"):
                    self._child(self.ejections, service.name, str(host), reason)
            for result in CACHE_RESULTS:
                self._child(self.cache, service.name, result)
            self._child(self.tunnels, service.name)
            self._child(self.all_hosts_down, service.name)
            self._child(self.retry_budget_exhausted, service.name)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised without a lock (no switch can happen)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, exchange: Exchange, finished_at: float) -> None:
        """Record one finished request."""
        self.in_flight.dec()
        service = exchange.service or UNROUTED
        method = exchange.method if exchange.method in METHODS else "OTHER"
        self._child(self.requests, service, method, str(exchange.status)).inc()
        self._child(self.duration, service).observe(finished_at - exchange.received_at)
        if exchange.forwarded_at:
            self._child(self.request_processing, service).observe(
                exchange.forwarded_at - exchange.received_at)
        if exchange.answered_at:
            self._child(self.response_processing, service).observe(
                finished_at - exchange.answered_at)
        for attempt in exchange.attempts:
            self._child(self.attempts, service, attempt.host, attempt.outcome).inc()
        if exchange.cache:
            self._child(self.cache, service, exchange.cache).inc()

    def tunnel_opened(self, service: str) -> None:
        self._child(self.tunnels, service).inc()

    def tunnel_closed(self, service: str) -> None:
        self._child(self.tunnels, service).dec()

    def cache_error(self, operation: str) -> None:
        self._child(self.cache_errors, operation).inc()

    def client_timeout(self, phase: str) -> None:
        self._child(self.client_timeouts, phase).inc()

    def filter_error(self, service: str, name: str) -> None:
        self._child(self.filter_errors, service, name).inc()

    def track_filters(self, placed: Iterable[tuple[str, str]]) -> None:
        """Start the error series of each (service, filter) a routes load runs."""
        for service, name in placed:
            self._child(self.filter_errors, service, name)


class HostMetrics:
    """The hosts' standing as the upstream client reports it (a
    :class:`~wsgiproxy.upstream.client.HostEvents`): ``proxy_upstream_host_up``, ejections,
    requests sent while every host was out, retries the budget refused."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def __call__(self, service: str, host: Backend, up: bool) -> None:
        m = self._m
        m._child(m.host_up, service, str(host)).set(1 if up else 0)

    def ejected(self, service: str, host: Backend, reason: str) -> None:
        m = self._m
        m._child(m.ejections, service, str(host), reason).inc()

    def all_hosts_down(self, service: str) -> None:
        m = self._m
        m._child(m.all_hosts_down, service).inc()

    def retry_budget_exhausted(self, service: str) -> None:
        m = self._m
        m._child(m.retry_budget_exhausted, service).inc()


class HealthMetrics:
    """``proxy_health_checks_total``, and the ejections the active checks make: counted
    once per proxy instance, by the process that probes (under gunicorn the master).

    :param registry: None in gunicorn's master: the workers it forks register their own
        ``proxy_upstream_ejections`` in the registry they inherit, and in multiprocess
        mode the master's values reach the files whatever the registry.
    :param ejections: the ``proxy_upstream_ejections`` counter when this process has one
        already (``python -m wsgiproxy``: the app's); None makes one here.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY,
                 ejections: Counter | None = None) -> None:
        self.checks = Counter("proxy_health_checks", "Active health probes of hosts, by "
                              "result (pass, status, refused, connect_timeout, tls_error, "
                              "read_timeout, reset, invalid_response).",
                              ["service", "host", "result"], registry=registry)
        self.ejections = ejections if ejections is not None else Counter(
            "proxy_upstream_ejections", "Hosts taken out of rotation, by reason.",
            ["service", "host", "reason"], registry=registry)

    def start(self, service: str, host: str) -> None:
        """A host is probed from now on: its series start at 0."""
        for result in ("pass", "status"):
            self.checks.labels(service, host, result)
        self.ejections.labels(service, host, "health_check")

    def checked(self, service: str, host: str, result: str) -> None:
        self.checks.labels(service, host, result).inc()

    def ejected(self, service: str, host: str) -> None:
        self.ejections.labels(service, host, "health_check").inc()


class ReloadMetrics:
    """``proxy_config_*``: reloads of the routes file, as Prometheus exports its own.

    Under gunicorn the master counts them (it decides every reload for all workers).
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reloads = Counter("proxy_config_reloads", "Reloads of the routes file, by "
                               "result (success, failure).", ["result"], registry=registry)
        self.last_successful = Gauge(
            "proxy_config_last_reload_successful", "1 if the last reload of the routes "
            "file succeeded, 0 if it was refused.", registry=registry,
            multiprocess_mode="max")
        self.last_success = Gauge(
            "proxy_config_last_reload_success_timestamp_seconds", "When the routes file "
            "was last loaded successfully (start-up counts).", registry=registry,
            multiprocess_mode="max")
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.last_successful.set(1)
        self.last_success.set_to_current_time()

    def succeeded(self) -> None:
        self.reloads.labels("success").inc()
        self.last_successful.set(1)
        self.last_success.set_to_current_time()

    def failed(self) -> None:
        self.reloads.labels("failure").inc()
        self.last_successful.set(0)


class ProcessesCollector:
    """``process_*`` of several processes (gunicorn's master and workers), each series
    labelled with ``pid`` and ``role``.

    prometheus-client's ``ProcessCollector`` reports the one process that serves the
    scrape; in multiprocess mode it is not used at all. This runs it for each process
    the master names and labels what it returns.

    :param processes: returns (pid, role) pairs, called at each scrape.
    """

    def __init__(self, processes: Callable[[], Iterable[tuple[int, str]]]) -> None:
        self._processes = processes

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid, role in self._processes():
            collector = ProcessCollector(pid=_constant(pid), registry=None)
            for family in collector.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name,
                                                            family.documentation,
                                                            family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name,
                                      {**sample.labels, "pid": str(pid), "role": role},
                                      sample.value)
        yield from families.values()


def _constant(value: int) -> Callable[[], int]:
    return lambda: value


def exposition(registry: CollectorRegistry = REGISTRY,
               processes: Callable[[], Iterable[tuple[int, str]]] | None = None) -> bytes:
    """The text format of every metric: summed over gunicorn's workers when
    PROMETHEUS_MULTIPROC_DIR is set (with ``process_*`` of each process ``processes``
    names), ``registry``'s otherwise."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        if processes is not None:
            registry.register(ProcessesCollector(processes))
    return generate_latest(registry)
