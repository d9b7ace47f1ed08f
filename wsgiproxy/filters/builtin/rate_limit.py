"""``rate_limit``: at most N requests per second, minute or hour per key, with bursts.

::

    - use: rate_limit
      config: {limit: 100/second, burst: 20, key: client}   # or header:X-Api-Key, service

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one
timestamp per key): a key may send ``burst`` requests at once (default N), then one
every period/N. Over the limit is 429 JSON with ``Retry-After`` (when the next request
will pass) and the IETF draft's ``RateLimit-Policy`` (``q`` requests per ``w``
seconds, the configured rate) and ``RateLimit`` (``r`` requests the key may send now,
``t`` seconds until its whole burst is back); responses let through carry them too.

Counts live in Redis when RATE_LIMIT_URL (or a ``redis://`` CACHE_URL) is set: one
atomic script per request, with Redis's own clock, so every worker and replica shares
them. Otherwise each process counts alone. If Redis fails the request passes (fail
open), ``proxy_rate_limit_errors_total`` counts it, one warning a minute is logged,
and Redis is not asked again for a second.

A hostile client: with ``key: client`` it cannot spread itself over many keys (the
address is the peer's, or what a trusted proxy said); with ``header:NAME`` it can, by
sending new values, so key on a header a filter earlier in the chain has checked
(``api_key``, ``forward_auth``'s copied header). In memory the keys are bounded
(least recently used go first); in Redis each expires once its bucket is full again.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import posixpath
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import unquote

import cachetools
import redis
from prometheus_client import Counter

from wsgiproxy.filters import Answer, Context, Filter, InvalidConfig, Request, Response

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["GCRA", "MemoryCounts", "RateLimit", "RedisCounts", "Verdict"]

logger = logging.getLogger(__name__)

LIMITED: Final = Counter("proxy_rate_limited", "Requests answered 429 by a rate_limit "
                         "filter, by service.", ["service"])
ERRORS: Final = Counter("proxy_rate_limit_errors", "Requests a rate_limit filter let "
                        "through uncounted because its Redis failed (fail open).")

_PERIODS: Final = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_LIMIT: Final = re.compile(r"\s*(\d+)\s*/\s*(second|minute|hour)\s*")
#: Keys one process keeps in memory; beyond, the least recently used are forgotten.
MAX_MEMORY_KEYS: Final = 100_000
#: After Redis failed, how long requests pass without asking it.
REDIS_BACKOFF_SECONDS: Final = 1.0
#: How long a request waits on Redis: a slow Redis must not become a slow proxy.
REDIS_TIMEOUT_SECONDS: Final = 0.25
#: Connections to Redis per filter and worker.
REDIS_CONNECTIONS: Final = 32

# One round trip: read the key's theoretical arrival time (TAT), decide, store it back
# with an expiry, on Redis's clock so that replicas with skewed clocks agree.
_GCRA_SCRIPT: Final = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, string.format('%d', tat - tolerance - now), string.format('%d', tat - now)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000))
return {1, '0', string.format('%d', new_tat - now)}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One request's count: let through or not, and when."""

    allowed: bool
    retry_after: float  # seconds until one more would be let through
    reset: float  # seconds until the bucket is full again


class GCRA:
    """The arithmetic: ``burst`` at once, then one per ``period / limit`` seconds.

    Times are in microseconds, as integers, in both stores."""

    __slots__ = ("burst", "interval", "limit", "period", "tolerance")

    def __init__(self, limit: int, period: float, burst: int) -> None:
        self.limit, self.period, self.burst = limit, period, burst
        self.interval = round(period / limit * 1_000_000)
        self.tolerance = self.interval * (burst - 1)

    def decide(self, tat: int | None, now: int) -> tuple[Verdict, int | None]:
        """The verdict, and the key's new TAT (None: unchanged)."""
        tat = now if tat is None or tat < now else tat
        if now < tat - self.tolerance:
            return Verdict(False, (tat - self.tolerance - now) / 1e6, (tat - now) / 1e6), None
        new_tat = tat + self.interval
        return Verdict(True, 0.0, (new_tat - now) / 1e6), new_tat

    def remaining(self, reset: float) -> int:
        """Requests a key may still send at once, given its bucket's reset time."""
        return max(0, self.burst - math.ceil(reset * 1e6 / self.interval - 1e-9))


class MemoryCounts:
    """Per-process counts: a bounded LRU of TATs (cachetools), one lock for the
    read-decide-write (no switch can happen inside it, but threads may serve too)."""

    def __init__(self, gcra: GCRA) -> None:
        self._gcra = gcra
        self._tats: cachetools.LRUCache[str, int] = cachetools.LRUCache(MAX_MEMORY_KEYS)
        self._lock = threading.Lock()

    def hit(self, key: str) -> Verdict:
        now = time.monotonic_ns() // 1000
        with self._lock:
            verdict, new_tat = self._gcra.decide(self._tats.get(key), now)
            if new_tat is not None:
                self._tats[key] = new_tat
        return verdict


class RedisCounts:
    """Counts shared by every worker and replica: one atomic script per request."""

    def __init__(self, gcra: GCRA, url: str) -> None:
        self._gcra = gcra
        # Bounded: a flood waits (up to the timeout) for one of these connections, and
        # then passes uncounted, rather than opening thousands of connections to Redis.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS, health_check_interval=30)
        self._client = redis.Redis(connection_pool=pool)
        self._script = self._client.register_script(_GCRA_SCRIPT)

    def hit(self, key: str) -> Verdict:
        allowed, retry_after, reset = self._script(
            keys=[key], args=[self._gcra.interval, self._gcra.tolerance])
        return Verdict(bool(int(allowed)), float(retry_after) / 1e6, float(reset) / 1e6)

    def close(self) -> None:
        self._client.close()


def _normalized(path: str) -> str:
    """The path as most hosts resolve it (percent-escapes decoded, ``//`` and dot
    segments collapsed), so that ``/%6cogin`` or ``/x/../login`` count as ``/login``.
    Decoding more than a host would can only count more requests, never fewer."""
    decoded = re.sub("/{2,}", "/", unquote(path, errors="replace"))
    resolved = posixpath.normpath(decoded)
    return resolved + "/" if decoded.endswith("/") and resolved != "/" else resolved


def _client_key(client: str) -> str:
    """An IPv6 client counts by its /64: one subscriber usually holds a whole /64, and
    would otherwise get a new count with every address in it."""
    if ":" not in client:
        return client
    try:
        return str(ipaddress.IPv6Network(f"{client}/64", strict=False).network_address)
    except ValueError:
        return client


def _parse_limit(raw: str) -> tuple[int, float]:
    match = _LIMIT.fullmatch(raw)
    if not match or int(match[1]) == 0:
        raise InvalidConfig(f"must be N/second, N/minute or N/hour with N >= 1, not {raw!r}",
                            field="limit")
    limit, period = int(match[1]), _PERIODS[match[2]]
    if limit / period > 1_000_000:  # the counts are kept in whole microseconds
        raise InvalidConfig(f"{raw!r} is more than 1000000/second", field="limit")
    return limit, period


def counts_url(context: Context) -> str:
    """Where the counts live: RATE_LIMIT_URL, else a Redis CACHE_URL, else "" (memory)."""
    url = context.setting("RATE_LIMIT_URL").strip()
    if url:
        return url
    cache = context.setting("CACHE_URL").strip()
    return cache if cache.startswith(("redis://", "rediss://", "unix://")) else ""


class RateLimit(Filter):
    """429 for a key over its limit (docs/rate-limits.md)."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["limit"],
        "additionalProperties": False,
        "x-message": "must be a mapping with limit (and optionally burst, key, methods, "
                     "path_prefix)",
        "properties": {
            "limit": {"type": "string", "pattern": r"^\s*\d+\s*/\s*(second|minute|hour)\s*$",
                      "x-message": "must be N/second, N/minute or N/hour"},
            "burst": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                      "x-message": "must be a whole number from 1 to 1000000"},
            "key": {"type": "string", "pattern": "^(client|service|header:[A-Za-z0-9-]+)$",
                    "x-message": "must be client, service or header:NAME"},
            "methods": {"type": "array", "minItems": 1,
                        "items": {"type": "string", "pattern": "^[A-Z]+$"},
                        "x-message": "must be a list of methods in capitals (GET, POST)"},
            "path_prefix": {"type": "string", "pattern": "^/",
                            "x-message": "must start with /"},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: Context) -> None:
        super().__init__(config, context)
        limit, period = _parse_limit(config["limit"])
        self.gcra = GCRA(limit, period, int(config.get("burst", limit)))
        key = config.get("key", "client")
        self.key_kind, _, self.key_header = key.partition(":")
        methods = set(config.get("methods", ()))
        if "GET" in methods:
            methods.add("HEAD")  # the same resource, the same work for the host
        self.methods = frozenset(methods) or None
        self.path_prefix: str = config.get("path_prefix", "/")
        self.url = counts_url(context)
        self.scope = context.service or "*"  # proxy-level limits span every service
        if context.service is not None:
            LIMITED.labels(context.service)  # the series starts at 0, for rate() to see
        digest = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:12]
        self._prefix = f"wsgiproxy:ratelimit:{self.scope}:{digest}:"
        # The draft's quota is the rate as configured; a burst beyond it has no field.
        self._name = f'"{key}"'
        self.policy = f"{self._name};q={limit};w={round(period)}"
        self._counts: MemoryCounts | RedisCounts | None = None  # opened on first use
        self._failed_until = 0.0
        self._warned_at = -math.inf

    def _store(self) -> MemoryCounts | RedisCounts:
        if self._counts is None:
            self._counts = RedisCounts(self.gcra, self.url) if self.url else \
                MemoryCounts(self.gcra)
        return self._counts

    def key_of(self, request: Request) -> str | None:
        """The bucket this request counts against; None: not limited."""
        if self.methods is not None and request.method not in self.methods:
            return None
        if self.path_prefix != "/" and not _normalized(request.path).startswith(
                self.path_prefix):
            return None
        if self.key_kind == "client":  # an address the proxy established: short, plain
            return self._prefix + _client_key(request.client)
        if self.key_kind == "service":
            return self._prefix + request.service
        # Hashed: a header's value is the client's, of any length and content.
        value = request.headers.get(self.key_header) or ""
        return self._prefix + "h:" + hashlib.sha256(value.encode("utf-8", "replace")
                                                    ).hexdigest()[:32]

    def on_request(self, request: Request) -> Answer | None:
        key = self.key_of(request)
        if key is None:
            return None
        verdict = self._hit(key)
        if verdict is None:
            return None  # failed open
        request.state["rate_limit"] = verdict
        if verdict.allowed:
            return None
        LIMITED.labels(request.service).inc()
        retry = max(1, math.ceil(verdict.retry_after))
        return Answer.error(429, "too many requests", headers=[
            ("Retry-After", str(retry)), *self._fields(verdict)])

    def on_response(self, request: Request, response: Response) -> None:
        verdict = request.state.get("rate_limit")
        if verdict is not None and response.source != "filter":
            for name, value in self._fields(verdict):
                response.headers.add(name, value)  # a second limit adds its own

    def _fields(self, verdict: Verdict) -> list[tuple[str, str]]:
        # r: requests the key may send now; t: seconds until its whole burst is back.
        remaining = self.gcra.remaining(verdict.reset) if verdict.allowed else 0
        reset = math.ceil(verdict.reset)
        return [("RateLimit-Policy", self.policy),
                ("RateLimit", f"{self._name};r={remaining};t={reset}")]

    def _hit(self, key: str) -> Verdict | None:
        now = time.monotonic()
        if now < self._failed_until:
            ERRORS.inc()
            return None
        try:
            return self._store().hit(key)
        except (redis.RedisError, OSError) as exc:
            ERRORS.inc()
            self._failed_until = now + REDIS_BACKOFF_SECONDS
            if now - self._warned_at >= 60:
                self._warned_at = now
                logger.warning("rate_limit (%s): Redis failed (%s); letting requests "
                               "through uncounted (logged once a minute)", self.scope, exc)
            return None

    def describe(self) -> str:
        g = self.gcra
        unit = {1.0: "second", 60.0: "minute", 3600.0: "hour"}[g.period]
        what = f"{g.limit}/{unit} per {self.config.get('key', 'client')}, burst {g.burst}"
        if self.url:
            return f"{what}; counted in Redis, shared by every worker and replica"
        workers = self.context.setting("WEB_CONCURRENCY").strip() or str(os.cpu_count() or 1)
        n = int(workers) if workers.isdigit() else 1
        return (f"{what}; counted in memory per process: with {n} gunicorn worker"
                f"{'s' if n != 1 else ''} a key gets up to {g.limit * n}/{unit} and "
                f"{g.burst * n} at once (set RATE_LIMIT_URL to share the counts)")

    def close(self) -> None:
        if isinstance(self._counts, RedisCounts):
            self._counts.close()
