"""The shared cache around a service's adapter: what the upstream client does with a
GET or HEAD before, instead of, and after sending it (docs/cache.md).

In order: a fresh entry is the answer (``hit``); within ``stale-while-revalidate`` the
stale entry is (``stale``) while one background request refreshes it; otherwise one
request per key and worker goes upstream (concurrent ones wait for it and are answered
from what it stored: ``coalesced``), conditionally when the entry has validators (a 304
refreshes it: ``revalidated``), and its response is stored as it streams past
(``miss``). When every attempt fails, or the host's final answer is a 500, 502, 503 or
504, a stale entry the response allowed it for is served instead (``stale``).

The rules themselves (what is fresh, storable, allowed stale) are the cache package's
:class:`~wsgiproxy.cache.SharedCacheController`; this module only acts on them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Final

from ..errors import BadGateway, ProxyError, UpstreamTimeout
from ..exchange import CacheResult
from ..headers import client_headers
from .body import ResponseBody, StoredBody
from .messages import UpstreamResponse

if TYPE_CHECKING:
    from ..cache import Answer, BodyCapture, Headers, Lookup, SharedCacheController
    from ..cache.coalescing import Coalescer
    from .adapter import Forwarded, ServiceAdapter
    from .messages import UpstreamRequest
    from .transport import AttemptLog

__all__ = ["CacheStep", "answered", "response_of"]

logger = logging.getLogger(__name__)

#: Final answers after which a stale entry may be served instead (RFC 5861 §4).
ERROR_STATUSES: Final = frozenset({500, 502, 503, 504})


def answered(answer: Answer, cache: str) -> UpstreamResponse:
    return UpstreamResponse(answer.status, answer.reason, answer.headers,
                            StoredBody(answer.body), cache)


def response_of(method: str, forwarded: Forwarded, capture: BodyCapture | None = None,
                cache: str = CacheResult.NONE) -> UpstreamResponse:
    """The client's response from a host's: end-to-end headers, the body as it comes."""
    raw = forwarded.response
    try:
        headers = client_headers(raw.headers.items(), connection=raw.headers.get("Connection"),
                                 keep_length=not raw.chunked)
    except ProxyError:
        raw.close()
        raw.release_conn()
        if capture is not None:
            capture.abandon()
        raise
    body = ResponseBody(raw, forwarded.first, capture, ended=method == "HEAD")
    if capture is not None and method != "HEAD" and raw.length_remaining == 0:
        # The whole body came with the first read: store it now, so that requests
        # waiting for this one are answered at once, not when this client has read it.
        capture.feed(forwarded.first)
        capture.finish()
        body = ResponseBody(raw, forwarded.first)
    return UpstreamResponse(raw.status, raw.reason or "", headers, body, cache)


class _Quiet:
    """The attempt log of a background refresh: no client request to write to."""

    def attempted(self, host: str, outcome: str, status: int = 0) -> None:
        pass

    def sent(self, at: float) -> None:
        pass

    def answered(self, at: float) -> None:
        pass

    def broke_off(self) -> None:
        pass


class CacheStep:
    """One service's cache, between the upstream client and the service's adapter.

    :param controller: the service's view of the shared store (its TTL).
    :param coalescer: this worker's record of fetches in progress.
    """

    def __init__(self, controller: SharedCacheController, coalescer: Coalescer) -> None:
        self.controller = controller
        self.coalescer = coalescer

    def send(self, adapter: ServiceAdapter, key: str, request: UpstreamRequest,
             headers: Headers, log: AttemptLog) -> UpstreamResponse:
        """Answer a GET or HEAD from the cache, or through ``adapter`` and into it."""
        controller = self.controller
        lookup = controller.lookup(key, headers)
        if lookup.fresh is not None:
            return answered(controller.answer(lookup.fresh, headers), CacheResult.HIT)
        if lookup.serve_stale and lookup.stale is not None:
            self._refresh_behind(adapter, key, request, headers, lookup)
            return answered(controller.answer(lookup.stale, headers), CacheResult.STALE)
        lead = None
        if request.method == "GET" and self.coalescer.coalesces(key):
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
        be stored. ``lead`` is released when the body has ended, or at once if nothing
        will be stored."""
        controller, coalescer = self.controller, self.coalescer

        def release() -> None:
            if lead is not None:
                coalescer.release(key, lead)

        sent_at = time.time()
        conditional = lookup.stale is not None and bool(lookup.validators)
        send_headers = {**request.headers, **lookup.validators} if conditional \
            else request.headers
        try:
            forwarded = adapter.forward(request.method, request.target, send_headers,
                                        request.body, log)
        except BaseException:
            release()
            raise
        raw = forwarded.response
        if raw.status == 304 and conditional and lookup.stale is not None:
            not_modified = list(raw.headers.items())
            raw.drain_conn()
            raw.release_conn()
            entry = controller.refresh(key, lookup.stale, headers, not_modified, sent_at)
            release()
            return answered(controller.answer(entry, headers), CacheResult.REVALIDATED)
        if raw.status in ERROR_STATUSES and lookup.stale_on_error and lookup.stale is not None:
            raw.close()
            raw.release_conn()
            release()
            logger.warning("%s: the host answered %d; serving the stale stored response",
                           key, raw.status)
            return answered(controller.answer(lookup.stale, headers), CacheResult.STALE)
        capture = None
        if request.method == "GET" and controller.storable("GET", raw.status, raw.headers,
                                                           headers):
            capture = controller.capture(key, headers, raw.status, raw.reason or "",
                                         list(raw.headers.items()), sent_at, on_end=release)
            coalescer.storable(key)
        else:
            if request.method == "GET":
                coalescer.not_storable(key)
            release()
        return response_of(request.method, forwarded, capture, CacheResult.MISS)

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
