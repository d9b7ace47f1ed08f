"""The upstream client: a request for a service in, one :class:`UpstreamResponse` out.

It owns the one pooled ``requests.Session``, on which each service's
:class:`~wsgiproxy.upstream.adapter.ServiceAdapter` is mounted at ``http://<domain>/``,
and the shared cache (:class:`~wsgiproxy.cache.SharedCacheController` over one store,
driven by :class:`~wsgiproxy.upstream.caching.CacheStep`). For each request it asks the
cache first, sends what the cache cannot answer through the service's adapter (found
once per routes load with ``session.get_adapter``), and tells the cache what came back.
The cache sits above the adapter because what it does depends on the outcome across
hosts (stale when every attempt failed), not of one attempt.

What a proxy does differently from an HTTP client, and the reasons:

* ``trust_env`` off (no ``*_PROXY``/netrc from the environment), a cookie jar that
  stores nothing (``Session.send`` would otherwise keep every upstream ``Set-Cookie``
  and send it with the next client's request), no redirects followed, bodies streamed
  and never decoded.
* The hot path calls the adapter, not ``Session.request``/``send``: those merge
  environment settings, run hooks, parse cookies and resolve redirects, all of which a
  proxy must skip (and the benchmark showed what they cost).

Nothing outside this package imports requests or urllib3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.util import Timeout

from ..balancer import RoundRobin
from ..cache import (
    SAFE_METHODS,
    SERVED_METHODS,
    HeaderMap,
    SharedCacheController,
    cache_key,
    make_store,
)
from ..cache.coalescing import Coalescer
from ..errors import NotFound
from ..headers import client_headers
from ..policy import resolve_policy
from .adapter import ServiceAdapter
from .body import StoredBody
from .caching import CacheStep, response_of
from .messages import UpstreamRequest, UpstreamResponse
from .retry import RetryPolicy
from .upgraded import UpgradedConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cachecontrol.cache import BaseCache

    from ..policy import ServicePolicy
    from ..routes_file import Backend, Service
    from ..settings import Settings
    from .adapter import Forwarded
    from .transport import AttemptLog

__all__ = ["UpstreamClient", "UpstreamRequest", "UpstreamResponse"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Channel:
    """How one service is reached: its adapter, and its cache (None: not cached)."""

    adapter: ServiceAdapter
    cache: CacheStep | None


class UpstreamClient:
    """Sends requests to the hosts of routed services, through the shared cache.

    :param settings: timeouts, retry counts, ejection time, cache settings.
    :param services: from the routes file; :meth:`update` changes them later.
    :param host_listener: told (service, host, up) when a host goes down or comes back.
    :param cache_errors: told about each failed operation of a Redis cache (a metric).

    Usage::

        upstream = UpstreamClient(settings, routes.services)
        response = upstream.send(service, UpstreamRequest("GET", "/x", headers), exchange)
        for chunk in response.body: ...
        response.body.close()
    """

    def __init__(self, settings: Settings, services: Iterable[Service], *,
                 host_listener: Callable[[str, Backend, bool], None] | None = None,
                 cache_errors: Callable[[str], None] | None = None) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session.adapters.clear()  # nothing but the services' domains is reachable
        self._settings = settings
        self._host_listener = host_listener
        self._cache_errors = cache_errors
        #: One store for every service (keys start with the domain), made when a
        #: service first caches.
        self.store: BaseCache | None = None
        #: Fetches in progress in this worker, for every service (keys include the domain).
        self._coalescer = Coalescer(settings.cache_lock_timeout_seconds)
        self._channels: dict[str, _Channel] = {}
        self.update(services)

    # -- routes ----------------------------------------------------------------------
    def update(self, services: Iterable[Service]) -> None:
        """Mount an adapter per service. A service that has not changed keeps its
        adapter (its pools and its hosts' ejection state); a removed one is unmounted and
        closed (a request still using one of its connections finishes on it)."""
        channels: dict[str, _Channel] = {}
        for service in services:
            policy = resolve_policy(service, self._settings)
            prefix = f"http://{service.domain}/"
            current = self.session.adapters.get(prefix)
            if not (isinstance(current, ServiceAdapter) and current.service == service):
                self.session.mount(prefix, self._adapter(service, policy))
                if current is not None:
                    current.close()
            adapter = self.session.get_adapter(prefix)
            assert isinstance(adapter, ServiceAdapter)
            channels[service.domain] = _Channel(adapter, self._cache(policy))
        for prefix in list(self.session.adapters):
            if prefix.removeprefix("http://").rstrip("/") not in channels:
                self.session.adapters.pop(prefix).close()
        self._channels = channels  # one assignment: a request sees the old set or the new

    def _adapter(self, service: Service, policy: ServicePolicy) -> ServiceAdapter:
        listener = self._host_listener

        def host_state(host: Backend, up: bool) -> None:
            if listener is not None:
                listener(service.name, host, up)

        balancer = RoundRobin(service.hosts, policy.eject_seconds, listener=host_state)
        if service.tls is not None and not service.tls.verify:
            logger.warning("service %r: the TLS certificates of its hosts are not verified "
                           "(tls.verify: false)", service.name)
        return ServiceAdapter(
            service, balancer, RetryPolicy(policy.http_retries, policy.forward_retries),
            Timeout(connect=policy.connect_timeout_seconds, read=policy.read_timeout_seconds))

    def _cache(self, policy: ServicePolicy) -> CacheStep | None:
        """The service's view of the shared store, with its TTL; None if it is not cached."""
        ttl = policy.cache_ttl_seconds
        if ttl <= 0:
            return None
        if self.store is None:
            self.store = make_store(self._settings, ttl, self._cache_errors)
        self.store.ttl = max(self.store.ttl, ttl)  # type: ignore[attr-defined]
        controller = SharedCacheController(
            self.store, ttl=ttl, max_object_bytes=self._settings.cache_max_object_bytes,
            serve_stale_on_error=self._settings.cache_serve_stale_on_error)
        return CacheStep(controller, self._coalescer)

    # -- requests --------------------------------------------------------------------
    def send(self, service: Service, request: UpstreamRequest,
             log: AttemptLog) -> UpstreamResponse:
        """The service's answer to ``request``, from the cache or from a host.

        Raises the :class:`~wsgiproxy.errors.ProxyError` of the failure when no host
        gave an answer (and no stale entry could be served instead).
        """
        channel = self._channels.get(service.domain)
        if channel is None:
            raise NotFound(f"service {service.name!r} was removed from the routes")
        adapter, cache, method = channel.adapter, channel.cache, request.method
        if request.upgrade:
            return self._upgrade(adapter, request, log)
        if cache is not None and method in SERVED_METHODS:
            return cache.send(adapter, cache_key(service.domain, request.target), request,
                              HeaderMap(request.headers), log)
        forwarded = adapter.forward(method, request.target, request.headers, request.body,
                                    log)
        if cache is not None and method not in SAFE_METHODS \
                and 200 <= forwarded.response.status < 400:
            self._invalidate(cache, service, request.target, forwarded)
        return response_of(method, forwarded)

    @staticmethod
    def _invalidate(cache: CacheStep, service: Service, target: str,
                    forwarded: Forwarded) -> None:
        """RFC 9111 §4.4: an unsafe method that succeeded invalidates its URL, and the
        URLs its ``Location`` and ``Content-Location`` name on the same service."""
        targets = {target}
        for name in ("Location", "Content-Location"):
            value = forwarded.response.headers.get(name)
            if not value:
                continue
            parts = urlsplit(urljoin(f"http://{service.domain}{target}", value))
            if parts.netloc.lower() == service.domain:
                targets.add(parts.path + (f"?{parts.query}" if parts.query else ""))
        for each in targets:
            cache.controller.invalidate(cache_key(service.domain, each))

    def _upgrade(self, adapter: ServiceAdapter, request: UpstreamRequest,
                 log: AttemptLog) -> UpstreamResponse:
        """A handshake: the host's 101 comes back with its connection, and the
        ``Connection``/``Upgrade`` fields (hop-by-hop, so dropped otherwise) with it;
        any other answer is an ordinary response."""
        forwarded = adapter.forward(request.method, request.target, request.headers,
                                    request.body, log, upgrade=True)
        raw = forwarded.response
        if raw.status != 101:
            return response_of(request.method, forwarded)
        headers = client_headers(raw.headers.items(), connection=None, keep_length=False)
        headers += [("Connection", "Upgrade"),
                    ("Upgrade", raw.headers.get("Upgrade") or request.upgrade)]
        return UpstreamResponse(101, raw.reason or "Switching Protocols", headers,
                                StoredBody(b""), upgraded=UpgradedConnection(raw))

    def close(self) -> None:
        self.session.close()
