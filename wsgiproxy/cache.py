"""Where cached responses live: bounded process memory, or Redis shared by every replica.

Both are CacheControl ``BaseCache`` backends (``get``/``set``/``delete``). What they hold
is an :class:`Entry` (a stored response with the times RFC 9111 needs to compute its age)
or, at a URL whose responses ``Vary``, a :class:`VaryIndex` naming the request headers
that pick the variant. The memory backend keeps the objects themselves, so a hit costs
no decoding; the Redis backend encodes them with msgpack.

* :class:`MemoryCache` is cachetools' ``TLRUCache``: least-recently-used eviction, an
  expiry per entry, bounded by CACHE_MAX_ENTRIES and by CACHE_MAX_BYTES.
* :class:`RedisCache` is CacheControl's, with entries expiring in Redis (SETEX) and a
  breaker: when Redis errors or is slower than its timeout, the proxy serves uncached
  for a few seconds, counts the error, logs once per interval, then tries again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import cachetools
import msgpack
import redis
from cachecontrol.cache import BaseCache
from cachecontrol.caches.redis_cache import RedisCache as CacheControlRedisCache
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from .settings import Settings

__all__ = ["Entry", "MemoryCache", "RedisCache", "Store", "Stored", "VaryIndex", "make_cache"]

logger = logging.getLogger(__name__)

#: Bytes an entry costs beyond its body and headers (objects, dict slots): an estimate
#: that keeps CACHE_MAX_BYTES honest for small responses.
ENTRY_OVERHEAD_BYTES: Final = 600
REDIS_TIMEOUT_SECONDS: Final = 0.25
REDIS_RETRY_SECONDS: Final = 2.0


@dataclass(slots=True)
class Entry:
    """A stored response (RFC 9111 §3) and what is needed to compute its age (§4.2.3)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]  # as the host sent them, minus Age and hop-by-hop
    body: bytes
    response_time: float  # wall clock when it was received
    initial_age: float  # corrected_initial_age of §4.2.3
    lifetime: float  # freshness lifetime, s-maxage > max-age > Expires, capped by the TTL
    vary: dict[str, str] = field(default_factory=dict)  # request values it was stored for
    revalidate: bool = False  # response said no-cache: never served without validation

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def size(self) -> int:
        return (len(self.body) + sum(len(k) + len(v) for k, v in self.headers)
                + ENTRY_OVERHEAD_BYTES)

    def to_wire(self) -> bytes:
        data: bytes = msgpack.packb([1, self.status, self.reason, self.headers, self.body,
                                     self.response_time, self.initial_age, self.lifetime,
                                     self.vary, self.revalidate], use_bin_type=True)
        return data


@dataclass(slots=True, frozen=True)
class VaryIndex:
    """Stored at a URL whose response varies: the request headers that pick a variant."""

    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return ENTRY_OVERHEAD_BYTES + sum(len(n) for n in self.names)

    def to_wire(self) -> bytes:
        data: bytes = msgpack.packb([2, list(self.names)], use_bin_type=True)
        return data


Stored = Entry | VaryIndex


class Store(Protocol):
    """What the cache policy needs of a backend: both classes here, typed honestly
    (CacheControl's ``BaseCache`` says ``bytes``; these hold :data:`Stored` objects)."""

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any, expires: Any = None) -> None: ...

    def delete(self, key: str) -> None: ...


def from_wire(data: bytes) -> Stored | None:
    """Decode what :meth:`Entry.to_wire` or :meth:`VaryIndex.to_wire` wrote; None if not."""
    try:
        item = msgpack.unpackb(data, raw=False)
        if item[0] == 1:
            return Entry(item[1], item[2], [tuple(h) for h in item[3]], item[4], *item[5:10])
        if item[0] == 2:
            return VaryIndex(tuple(item[1]))
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        pass
    logger.warning("ignoring a cache entry that cannot be decoded")
    return None


class _Bounded(cachetools.TLRUCache):  # type: ignore[type-arg]
    """A ``TLRUCache`` bounded by bytes (``maxsize``) and by a number of entries."""

    def __init__(self, max_entries: int, max_bytes: int, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=max_bytes, ttu=lambda _k, v, _now: v[0], timer=timer,
                         getsizeof=lambda v: v[1].size)
        self.max_entries = max_entries

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.max_entries:
            self.popitem()  # least recently used first


class MemoryCache(BaseCache):
    """Per-process cache: LRU, an expiry per entry, bounded in entries and in bytes.

    :param ttl: longest life of any entry (HTTP_CACHE_TTL_SECONDS).

    cachetools is not thread-safe; a lock costs little and keeps it correct under threads
    as well as greenlets (under gevent no switch can happen inside these calls anyway).
    """

    def __init__(self, max_entries: int, max_bytes: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._data = _Bounded(max_entries, max_bytes, clock)
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._data.get(key)
        return item[1] if item is not None else None

    def set(self, key: str, value: Any, expires: int | datetime | None = None) -> None:
        seconds = min(self._ttl, float(expires)) if isinstance(expires, (int, float)) \
            else self._ttl
        if seconds <= 0:
            return
        with self._lock:
            try:
                self._data[key] = (self._clock() + seconds, value)
            except ValueError:  # larger than the whole cache
                self._data.pop(key, None)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._data.expire()
            return len(self._data)


class RedisCache(CacheControlRedisCache):
    """CacheControl's Redis backend, shared by all workers and replicas, never in the way.

    :param on_error: called with the operation name on every Redis error (a metric).

    Keys are prefixed ``wsgiproxy:``; entries expire in Redis after at most ``ttl``.
    """

    PREFIX: Final = "wsgiproxy:"

    def __init__(self, conn: redis.Redis, ttl: float,
                 on_error: Callable[[str], None] | None = None,
                 retry_seconds: float = REDIS_RETRY_SECONDS) -> None:
        super().__init__(conn)
        self._ttl = ttl
        self._on_error = on_error
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._errors_since_log = 0
        self._last_log = 0.0

    @classmethod
    def from_url(cls, url: str, ttl: float,
                 on_error: Callable[[str], None] | None = None) -> RedisCache:
        # redis-py retries a failed command 3 times with backoff by default: with Redis
        # down, every request would wait on it. The breaker here decides instead.
        conn = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                    socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=30)
        return cls(conn, ttl, on_error)

    def _available(self) -> bool:
        return self._down_until <= time.monotonic()

    def _failed(self, operation: str, error: Exception) -> None:
        now = time.monotonic()
        self._down_until = now + self._retry_seconds
        self._errors_since_log += 1
        if self._on_error:
            self._on_error(operation)
        if now - self._last_log >= 60 or self._last_log == 0:
            logger.warning("redis cache unavailable (%s: %s); serving uncached, retrying "
                           "every %gs (%d errors since the last report)", operation, error,
                           self._retry_seconds, self._errors_since_log)
            self._last_log, self._errors_since_log = now, 0

    def get(self, key: str) -> Any:
        if not self._available():
            return None
        try:
            data = self.conn.get(self.PREFIX + key)
        except redis.RedisError as error:
            self._failed("get", error)
            return None
        return from_wire(data) if isinstance(data, bytes) else None

    def set(self, key: str, value: Any, expires: int | datetime | None = None) -> None:
        if not self._available():
            return
        seconds = min(self._ttl, float(expires)) if isinstance(expires, (int, float)) \
            else self._ttl
        if seconds <= 0:
            return
        try:
            self.conn.set(self.PREFIX + key, value.to_wire(), px=math.ceil(seconds * 1000))
        except redis.RedisError as error:
            self._failed("set", error)

    def delete(self, key: str) -> None:
        if not self._available():
            return
        try:
            self.conn.delete(self.PREFIX + key)
        except redis.RedisError as error:
            self._failed("delete", error)

    def close(self) -> None:
        self.conn.close()


def make_cache(settings: Settings,
               on_error: Callable[[str], None] | None = None) -> BaseCache | None:
    """The backend CACHE_URL asks for; None when HTTP_CACHE_TTL_SECONDS is 0."""
    ttl = settings.http_cache_ttl_seconds
    if ttl <= 0:
        return None
    if settings.cache_url:
        return RedisCache.from_url(settings.cache_url, ttl, on_error)
    return MemoryCache(settings.cache_max_entries, settings.cache_max_bytes, ttl)
