"""The shared cache around a service's adapter: what the upstream client does with a
request before, instead of, and after sending it (docs/cache.md).

For GET and HEAD, in order: a fresh entry is the answer (``hit``); within
``stale-while-revalidate`` the stale entry is (``stale``) while one background request
refreshes it; otherwise one request per key and worker goes upstream (concurrent ones
wait for it and are answered from what it stored: ``coalesced``), conditionally when
the entry has validators (a 304 refreshes it: ``revalidated``), and its response is
stored as it streams past (``miss``). When every attempt fails, or the host's final
answer is a 500, 502, 503 or 504, a stale entry the response allowed it for is served
instead (``stale``). Any other method goes straight to the host, and when it succeeds
it invalidates what is stored for its URL (RFC 9111 §4.4).

The rules themselves (what is fresh, storable, allowed stale) are the cache package's
:class:`~wsgiproxy.cache.SharedCacheController`; this module only acts on them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin, urlsplit

from ..cache import SAFE_METHODS, SERVED_METHODS, HeaderMap, cache_key
from ..errors import BadGateway, UpstreamTimeout
from ..exchange import CacheResult
from .body import StoredBody
from .messages import UpstreamResponse

if TYPE_CHECKING:
    from ..cache import Answer, Headers, Lookup, SharedCacheController
    from ..cache.coalescing import Coalescer
    from .adapter import ServiceAdapter
    from .messages import HostResponse, UpstreamRequest
    from .transport import AttemptLog

__all__ = ["CacheStep", "answered"]

logger = logging.getLogger(__name__)

#: Final answers after which a stale entry may be served instead (RFC 5861 §4).
ERROR_STATUSES: Final = frozenset({500, 502, 503, 504})


def answered(answer: Answer, cache: str) -> UpstreamResponse:
    return UpstreamResponse(answer.status, answer.reason, answer.headers,
                            StoredBody(answer.body), cache)


class _Quiet:
    """The attempt log of a background refresh: no client request to write to."""

    def attempted(self, host: str, outcome: str, status: int = 0) -> None:
        pass

    def sent(self, at: float) -> None:
        pass

    def answered(self, at: float) -> None:
        pass

    def broke_off(self, outcome: str) -> None:
        pass


class CacheStep:
    """One service's cache, between the upstream client and the service's adapter.

    :param domain: the service's domain, for the URLs a response's ``Location`` names.
    :param controller: the service's view of the shared store (its TTL).
    :param coalescer: this worker's record of fetches in progress.
    """

    def __init__(self, domain: str, controller: SharedCacheController,
                 coalescer: Coalescer) -> None:
        self.domain = domain
        self.controller = controller
        self.coalescer = coalescer

    def send(self, adapter: ServiceAdapter, host: str, request: UpstreamRequest,
             log: AttemptLog) -> UpstreamResponse:
        """``request`` answered from the cache, or through ``adapter`` and into it.

        :param host: the Host the request is forwarded with, normalised (lower case, no
            default port or trailing dot): part of the cache key, so that a response
            built for one Host value is never served to requests with another.
        """
        method = request.method
        if method in SERVED_METHODS:
            return self._served(adapter, cache_key(host, request.target), request,
                                HeaderMap(request.headers, credentials=request.authenticated),
                                log)
        response = adapter.forward(method, request.target, request.headers, request.body,
                                   log)
        if method not in SAFE_METHODS and 200 <= response.status < 400:
            self._invalidate(host, request.target, response)
        return response.for_client()

    def _served(self, adapter: ServiceAdapter, key: str, request: UpstreamRequest,
                headers: Headers, log: AttemptLog) -> UpstreamResponse:
        controller = self.controller
        lookup = controller.lookup(key, headers)
        if lookup.fresh is not None:
            return answered(controller.answer(lookup.fresh, headers), CacheResult.HIT)
        if lookup.serve_stale and lookup.stale is not None:
            self._refresh_behind(adapter, key, request, headers, lookup)
            return answered(controller.answer(lookup.stale, headers), CacheResult.STALE)
        lead = None
        if request.method == "GET" and request.storable and self.coalescer.coalesces(key):
            lead = self.coalescer.lead(key)
            # Another request is fetching this URL: wait for it, and use what it stored.
            # If it stored nothing this request can use, or took too long: go ourselves.
            if lead is None and self.coalescer.follow(key):
                lookup = controller.lookup(key, headers)
                if lookup.fresh is not None:
                    return answered(controller.answer(lookup.fresh, headers),
                                    CacheResult.COALESCED)
        try:
            return self._fetch(adapter, key, request, headers, lookup, log, lead)
        except (BadGateway, UpstreamTimeout) as error:
            if lookup.stale_on_error and lookup.stale is not None:
                logger.warning("%s: %s; serving the stale stored response", key,
                               error.message)
                return answered(controller.answer(lookup.stale, headers), CacheResult.STALE)
            raise

    def _fetch(self, adapter: ServiceAdapter, key: str, request: UpstreamRequest,
               headers: Headers, lookup: Lookup, log: AttemptLog,
               lead: threading.Event | None) -> UpstreamResponse:
        """One request upstream (conditional if the entry has validators); store what may
        be stored. ``lead`` is released when the body has ended or was cut short, or at
        once if nothing will be stored."""
        controller, coalescer = self.controller, self.coalescer

        def release() -> None:
            if lead is not None:
                coalescer.release(key, lead)

        sent_at = time.time()
        conditional = lookup.stale is not None and bool(lookup.validators)
        send_headers = {**request.headers, **lookup.validators} if conditional \
            else request.headers
        try:
            response = adapter.forward(request.method, request.target, send_headers,
                                       request.body, log)
        except BaseException:
            release()
            raise
        try:
            if response.status == 304 and conditional and lookup.stale is not None:
                response.body.drain()
                entry = controller.refresh(key, lookup.stale, headers, response.headers,
                                           sent_at)
                release()
                return answered(controller.answer(entry, headers), CacheResult.REVALIDATED)
            if response.status in ERROR_STATUSES and lookup.stale_on_error \
                    and lookup.stale is not None:
                response.body.discard()
                release()
                logger.warning("%s: the host answered %d; serving the stale stored response",
                               key, response.status)
                return answered(controller.answer(lookup.stale, headers), CacheResult.STALE)
            if request.method == "GET" and request.storable and controller.storable(
                    "GET", response.status, response, headers):
                coalescer.storable(key)
                response.body.capture_into(controller.capture(
                    key, headers, response.status, response.reason, response.headers,
                    sent_at, on_end=release))
            else:
                if request.method == "GET" and request.storable:
                    coalescer.not_storable(key)
                release()
            return response.for_client(CacheResult.MISS)
        except BaseException:
            response.body.close()  # abandons a capture, and with it the lead
            release()
            raise

    def _invalidate(self, host: str, target: str, response: HostResponse) -> None:
        """RFC 9111 §4.4: an unsafe method that succeeded invalidates its URL, and the
        URLs its ``Location`` and ``Content-Location`` name on the same service."""
        targets = {target}
        for name in ("Location", "Content-Location"):
            value = response.header(name)
            if not value:
                continue
            parts = urlsplit(urljoin(f"http://{self.domain}{target}", value))
            if parts.netloc.lower() in (self.domain, host):
                targets.add(parts.path + (f"?{parts.query}" if parts.query else ""))
        for each in targets:
            self.controller.invalidate(cache_key(host, each))
            if host != self.domain:
                self.controller.invalidate(cache_key(self.domain, each))

    def _refresh_behind(self, adapter: ServiceAdapter, key: str, request: UpstreamRequest,
                        headers: Headers, lookup: Lookup) -> None:
        """Refresh a stale entry in the background (stale-while-revalidate), once per key
        and worker at a time. A refresh that fails leaves the stale entry in place; it is
        bounded by the service's timeouts and attempts, like any request."""
        lead = self.coalescer.lead(key)
        if lead is None:
            return  # a refresh or fetch of this URL is already under way

        def refresh() -> None:
            try:
                response = self._fetch(adapter, key, request, headers, lookup, _Quiet(), lead)
                for _ in response.body:  # the capture stores it when the body has ended
                    pass
                response.body.close()
            except Exception as error:
                logger.info("%s: background refresh failed (%s); the stale entry stays",
                            key, error)
            finally:
                self.coalescer.release(key, lead)

        threading.Thread(target=refresh, name="wsgiproxy-refresh", daemon=True).start()
