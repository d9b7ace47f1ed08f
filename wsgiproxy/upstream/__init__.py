"""Talking to the services' hosts: the only package that imports requests and urllib3.

* :mod:`.client` — :class:`UpstreamClient`: the session, the cache step, the one value
  handed back (:class:`UpstreamResponse`);
* :mod:`.adapter` — one requests adapter per service: host pools, failover, errors;
* :mod:`.retry` — the retry policy every loop asks;
* :mod:`.transport` — the urllib3 pool and connection (interim responses, raw targets,
  the attempt log);
* :mod:`.body` — response bodies as iterables with ``close()``.
"""

from __future__ import annotations

from .body import Body, ResponseBody, StoredBody
from .client import UpstreamClient, UpstreamRequest, UpstreamResponse
from .retry import RetryPolicy

__all__ = ["Body", "ResponseBody", "RetryPolicy", "StoredBody", "UpstreamClient",
           "UpstreamRequest", "UpstreamResponse"]
