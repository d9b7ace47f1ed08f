"""Talking to the services' hosts: the only package that imports requests and urllib3.

* :mod:`.client` — :class:`UpstreamClient`: the session, the adapters, invalidation;
* :mod:`.messages` — the values in and out (:class:`UpstreamRequest`, :class:`UpstreamResponse`);
* :mod:`.caching` — the shared cache around an adapter: fresh, stale, coalesced, stored;
* :mod:`.adapter` — one requests adapter per service: host pools, failover, errors;
* :mod:`.retry` — the retry policy every loop asks;
* :mod:`.transport` — the urllib3 pool and connection (interim responses, raw targets,
  the attempt log);
* :mod:`.body` — response bodies as iterables with ``close()``;
* :mod:`.upgraded` — a host's connection after its 101 (WebSocket).
"""

from __future__ import annotations

from .body import Body, ResponseBody, StoredBody
from .client import UpstreamClient
from .messages import UpstreamRequest, UpstreamResponse
from .retry import RetryPolicy

__all__ = ["Body", "ResponseBody", "RetryPolicy", "StoredBody", "UpstreamClient",
           "UpstreamRequest", "UpstreamResponse"]
