"""The upstream client: a request for a service in, one :class:`UpstreamResponse` out.

It owns the one pooled ``requests.Session``, on which each service's
:class:`~wsgiproxy.upstream.adapter.ServiceAdapter` is mounted at ``http://<domain>/``,
and the shared cache (:class:`~wsgiproxy.cache.SharedCacheController` over one store).
For each request it asks the cache first, sends what the cache cannot answer through
the service's adapter (found once per routes load with ``session.get_adapter``), and
tells the cache what came back. The cache sits here, above the adapter, because what it
does depends on the outcome across hosts, not of one attempt.

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
import time
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import requests
from requests.structures import CaseInsensitiveDict
from urllib3.util import Timeout

from ..balancer import RoundRobin
from ..cache import (
    INVALIDATING_METHODS,
    SERVED_METHODS,
    SharedCacheController,
    cache_key,
    make_store,
)
from ..errors import NotFound, ProxyError
from ..exchange import CacheResult
from ..headers import client_headers
from ..policy import resolve_policy
from .adapter import ServiceAdapter
from .body import ResponseBody, StoredBody
from .retry import RetryPolicy
from .upgraded import UpgradedConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cachecontrol.cache import BaseCache

    from ..cache import Answer, BodyCapture, Headers, Lookup
    from ..policy import ServicePolicy
    from ..routes_file import Backend, Service
    from ..settings import Settings
    from .adapter import Forwarded
    from .body import Body
    from .transport import AttemptLog

__all__ = ["UpstreamClient", "UpstreamRequest", "UpstreamResponse"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class _Channel:
    """How one service is reached: its adapter, and its cache (None: not cached)."""

    adapter: ServiceAdapter
    cache: SharedCacheController | None


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request as it goes to a service's host."""

    method: str
    target: str  # the raw target, sent byte-for-byte
    headers: dict[str, str]  # every header the host gets, Host first
    body: Any = None  # bytes, a read-once stream (wsgiproxy.bodies), or None
    upgrade: str = ""  # "websocket": a handshake (the cache is not asked)


@dataclass(slots=True)
class UpstreamResponse:
    """What the client gets: end-to-end headers only, and the body as it arrives."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Body
    cache: str = CacheResult.NONE  # how the cache answered (wsgiproxy.exchange.CacheResult)
    #: After a 101 to an upgrade: the host's connection, to relay bytes on.
    upgraded: UpgradedConnection | None = None


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

    def _cache(self, policy: ServicePolicy) -> SharedCacheController | None:
        """The service's view of the shared store, with its TTL; None if it is not cached."""
        ttl = policy.cache_ttl_seconds
        if ttl <= 0:
            return None
        if self.store is None:
            self.store = make_store(self._settings, ttl, self._cache_errors)
        self.store.ttl = max(self.store.ttl, ttl)  # type: ignore[attr-defined]
        return SharedCacheController(self.store, ttl=ttl,
                                     max_object_bytes=self._settings.cache_max_object_bytes)

    # -- requests --------------------------------------------------------------------
    def send(self, service: Service, request: UpstreamRequest,
             log: AttemptLog) -> UpstreamResponse:
        """The service's answer to ``request``, from the cache or from a host.

        Raises the :class:`~wsgiproxy.errors.ProxyError` of the failure when no host
        gave an answer.
        """
        channel = self._channels.get(service.domain)
        if channel is None:
            raise NotFound(f"service {service.name!r} was removed from the routes")
        adapter, cache = channel.adapter, channel.cache
        method = request.method
        if request.upgrade:
            return self._upgrade(adapter, request, log)
        if cache is None or method not in SERVED_METHODS:
            response = self._response(method, adapter.forward(
                method, request.target, request.headers, request.body, log))
            if cache is not None and method in INVALIDATING_METHODS \
                    and 200 <= response.status < 400:
                cache.invalidate(cache_key(service.domain, request.target))
            return response
        key = cache_key(service.domain, request.target)
        headers: Headers = CaseInsensitiveDict(request.headers)
        lookup = cache.lookup(key, headers)
        if lookup.fresh is not None:
            return _answered(cache.answer(lookup.fresh, headers), CacheResult.HIT)
        return self._fetch(cache, adapter, key, request, headers, lookup, log)

    def _fetch(self, cache: SharedCacheController, adapter: ServiceAdapter, key: str,
               request: UpstreamRequest, headers: Headers, lookup: Lookup,
               log: AttemptLog) -> UpstreamResponse:
        """A GET or HEAD the cache could not answer: revalidate what it holds, or fetch,
        and keep what may be kept."""
        sent_at = time.time()
        send_headers = {**request.headers, **lookup.validators} if lookup.stale \
            else request.headers
        forwarded = adapter.forward(request.method, request.target, send_headers,
                                    request.body, log)
        raw = forwarded.response
        if raw.status == 304 and lookup.stale is not None:
            not_modified = list(raw.headers.items())
            raw.drain_conn()
            raw.release_conn()
            entry = cache.refresh(key, lookup.stale, headers, not_modified, sent_at)
            return _answered(cache.answer(entry, headers), CacheResult.REVALIDATED)
        capture = None
        if request.method == "GET" and cache.storable("GET", raw.status, raw.headers, headers):
            capture = cache.capture(key, headers, raw.status, raw.reason or "",
                                    list(raw.headers.items()), sent_at)
        return self._response(request.method, forwarded, capture, CacheResult.MISS)

    def _upgrade(self, adapter: ServiceAdapter, request: UpstreamRequest,
                 log: AttemptLog) -> UpstreamResponse:
        """A handshake: the host's 101 comes back with its connection, and the
        ``Connection``/``Upgrade`` fields (hop-by-hop, so dropped otherwise) with it;
        any other answer is an ordinary response."""
        forwarded = adapter.forward(request.method, request.target, request.headers,
                                    request.body, log, upgrade=True)
        raw = forwarded.response
        if raw.status != 101:
            return self._response(request.method, forwarded)
        headers = client_headers(raw.headers.items(), connection=None, keep_length=False)
        headers += [("Connection", "Upgrade"),
                    ("Upgrade", raw.headers.get("Upgrade") or request.upgrade)]
        return UpstreamResponse(101, raw.reason or "Switching Protocols", headers,
                                StoredBody(b""), upgraded=UpgradedConnection(raw))

    @staticmethod
    def _response(method: str, forwarded: Forwarded, capture: BodyCapture | None = None,
                  cache: str = CacheResult.NONE) -> UpstreamResponse:
        raw = forwarded.response
        try:
            headers = client_headers(raw.headers.items(),
                                     connection=raw.headers.get("Connection"),
                                     keep_length=not raw.chunked)
        except ProxyError:
            raw.close()
            raw.release_conn()
            raise
        body = ResponseBody(raw, forwarded.first, capture, ended=method == "HEAD")
        return UpstreamResponse(raw.status, raw.reason or "", headers, body, cache)

    def close(self) -> None:
        self.session.close()


def _answered(answer: Answer, cache: str) -> UpstreamResponse:
    return UpstreamResponse(answer.status, answer.reason, answer.headers,
                            StoredBody(answer.body), cache)
