"""Talking to the services' hosts: the only package that imports requests and urllib3.

* :mod:`.client` — :class:`UpstreamClient`: the session, a channel per service;
* :mod:`.messages` — the values in and out (:class:`UpstreamRequest`, the adapter's
  :class:`HostResponse`, :class:`UpstreamResponse`);
* :mod:`.caching` — the shared cache around an adapter: fresh, stale, coalesced,
  stored, invalidated;
* :mod:`.adapter` — one requests adapter per service: host pools, failover;
* :mod:`.failures` — every transport error classified once: outcome, failure, status;
* :mod:`.retry` — the retry policy every loop asks;
* :mod:`.transport` — the urllib3 pool and connection (interim responses, raw targets,
  the attempt log);
* :mod:`.body` — response bodies as iterables with ``close()``;
* :mod:`.upgraded` — a host's connection after its 101 (WebSocket).
"""

from __future__ import annotations

from .body import Body, ResponseBody, StoredBody
from .client import Channel, UpstreamClient
from .messages import HostResponse, UpstreamRequest, UpstreamResponse
from .retry import RetryPolicy

__all__ = ["Body", "Channel", "HostResponse", "ResponseBody", "RetryPolicy", "StoredBody",
           "UpstreamClient", "UpstreamRequest", "UpstreamResponse"]
