"""The upstream client: a request for a service in, one :class:`UpstreamResponse` out.

It owns the one pooled ``requests.Session``, on which each service's
:class:`~wsgiproxy.upstream.adapter.ServiceAdapter` is mounted at ``http://<domain>/``,
and the shared cache. For each routes load it builds a :class:`Channel` per service
(:meth:`UpstreamClient.channel`: its adapter, found with ``session.get_adapter``, and
its cache step), which the route table keeps; a request is then sent on its route's
channel. The cache sits above the adapter because what it does depends on the outcome
across hosts (stale when every attempt failed), not of one attempt.

The session is the registry of adapters and their connection pools; the proxy never
calls ``Session.request``/``send``, which merge environment settings, run hooks,
store cookies and follow redirects, all of which a proxy must skip: bodies are
streamed and never decoded, nothing is followed, nothing is remembered between
clients.

Nothing outside this package imports requests or urllib3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import requests
from urllib3.util import Timeout

from ..balancer import RoundRobin
from ..cache.shared import SharedCache
from ..headers import client_headers
from .adapter import ServiceAdapter
from .body import StoredBody
from .budget import RetryBudget
from .caching import CacheStep
from .messages import UpstreamRequest, UpstreamResponse
from .retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..policy import ServicePolicy
    from ..routes_file import Backend, Service
    from ..settings import Settings
    from .transport import AttemptLog

__all__ = ["Channel", "HostEvents", "UpstreamClient", "UpstreamRequest", "UpstreamResponse"]

logger = logging.getLogger(__name__)


class HostEvents(Protocol):
    """What the upstream client tells about the hosts of each service (the metrics:
    ``create_app`` hands over ``Metrics.host_state``, which is one)."""

    def __call__(self, service: str, host: Backend, up: bool) -> None:
        """``host`` left rotation (``up`` False) or is back in it."""

    def ejected(self, service: str, host: Backend, reason: str) -> None:
        """``host`` was ejected, for a :class:`~wsgiproxy.balancer.Reason`."""

    def all_hosts_down(self, service: str) -> None:
        """A request went to any host because every one was out of rotation."""

    def retry_budget_exhausted(self, service: str) -> None:
        """A retry was not made: the service's retry budget is spent."""


@dataclass(frozen=True, slots=True)
class Channel:
    """How one service is reached: its adapter, and its cache (None: not cached)."""

    adapter: ServiceAdapter
    cache: CacheStep | None


class UpstreamClient:
    """Sends requests to the hosts of routed services, through the shared cache.

    :param settings: cache settings (the store, coalescing).
    :param host_listener: told when a host leaves rotation or comes back, when one is
        ejected, when every host is out, when a retry budget is spent.
    :param cache_errors: told about each failed operation of a Redis cache (a metric).

    Usage::

        upstream = UpstreamClient(settings)
        channel = upstream.channel(service, resolve_policy(service, settings))
        response = upstream.send(channel, host, UpstreamRequest("GET", "/x", headers), log)
        for chunk in response.body: ...
        response.body.close()
    """

    def __init__(self, settings: Settings, *,
                 host_listener: HostEvents | None = None,
                 cache_errors: Callable[[str], None] | None = None) -> None:
        self.session = requests.Session()
        self.session.adapters.clear()  # nothing but the services' domains is reachable
        self._host_listener = host_listener
        self.cache = SharedCache(settings, cache_errors)

    # -- routes ----------------------------------------------------------------------
    def channel(self, service: Service, policy: ServicePolicy) -> Channel:
        """The service's channel: its mounted adapter (kept, with its pools and its
        hosts' ejection state, while the service is unchanged; replaced otherwise) and
        its cache step."""
        prefix = f"http://{service.domain}/"
        current = self.session.adapters.get(prefix)
        if not (isinstance(current, ServiceAdapter) and current.service == service):
            replacement = self._adapter(service, policy)
            if isinstance(current, ServiceAdapter):  # its hosts' standing carries over
                replacement.balancer.adopt(current.balancer)
            self.session.mount(prefix, replacement)
            if current is not None:
                current.close()
        adapter = self.session.get_adapter(prefix)
        assert isinstance(adapter, ServiceAdapter)
        cache = None
        if policy.cache_ttl_seconds > 0:
            cache = CacheStep(service.domain, self.cache.controller(policy.cache_ttl_seconds),
                              self.cache.coalescer)
        return Channel(adapter, cache)

    def retire(self, domains: Iterable[str]) -> None:
        """Unmount and close the adapters of services no route uses any more (a request
        still using one of their connections finishes on it)."""
        keep = {f"http://{d}/" for d in domains}
        for prefix in [p for p in self.session.adapters if p not in keep]:
            self.session.adapters.pop(prefix).close()

    def _adapter(self, service: Service, policy: ServicePolicy) -> ServiceAdapter:
        events, name = self._host_listener, service.name
        balancer = RoundRobin(
            service.hosts, policy.eject_seconds, outlier=policy.outlier, name=name,
            listener=None if events is None else lambda host, up: events(name, host, up),
            on_ejection=None if events is None
            else lambda host, reason: events.ejected(name, host, reason),
            on_all_down=None if events is None else lambda: events.all_hosts_down(name))
        budget = RetryBudget(
            policy.retry_budget_percent, policy.retry_budget_min_per_second,
            on_exhausted=None if events is None
            else lambda: events.retry_budget_exhausted(name))
        if service.tls is not None and not service.tls.verify:
            logger.warning("service %r: the TLS certificates of its hosts are not verified "
                           "(tls.verify: false)", service.name)
        return ServiceAdapter(
            service, balancer,
            RetryPolicy(policy.http_retries, policy.forward_retries, policy.retry_on_status),
            Timeout(connect=policy.connect_timeout_seconds, read=policy.read_timeout_seconds),
            budget=budget)

    # -- requests --------------------------------------------------------------------
    def send(self, channel: Channel, host: str, request: UpstreamRequest,
             log: AttemptLog) -> UpstreamResponse:
        """The service's answer to ``request``, from the cache or from a host.

        :param host: the request's Host, normalised (the cache key's first part).

        Raises the :class:`~wsgiproxy.errors.ProxyError` of the failure when no host
        gave an answer (and no stale entry could be served instead).
        """
        if request.upgrade:
            return self._upgrade(channel.adapter, request, log)
        if channel.cache is not None:
            return channel.cache.send(channel.adapter, host, request, log)
        return channel.adapter.forward(request.method, request.target, request.headers,
                                       request.body, log).for_client()

    @staticmethod
    def _upgrade(adapter: ServiceAdapter, request: UpstreamRequest,
                 log: AttemptLog) -> UpstreamResponse:
        """A handshake: the host's 101 comes back with its connection, and the
        ``Connection``/``Upgrade`` fields (hop-by-hop, so dropped otherwise) with it;
        any other answer is an ordinary response."""
        response = adapter.forward(request.method, request.target, request.headers,
                                   request.body, log, upgrade=True)
        if response.status != 101:
            return response.for_client()
        headers = client_headers(response.headers, connection=None, keep_length=False)
        headers += [("Connection", "Upgrade"),
                    ("Upgrade", response.header("Upgrade") or request.upgrade)]
        return UpstreamResponse(101, response.reason or "Switching Protocols", headers,
                                StoredBody(b""), upgraded=response.body.upgraded())

    def close(self) -> None:
        self.session.close()
        self.cache.close()

