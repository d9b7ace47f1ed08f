"""Where stored responses live: bounded process memory, or Redis shared by every replica.

Both are CacheControl ``BaseCache`` backends (``get``/``set``/``delete``) holding
:data:`~wsgiproxy.cache.entry.Stored` objects.

* :class:`MemoryStore` is cachetools' ``TLRUCache``: least-recently-used eviction, an
  expiry per entry, bounded by CACHE_MAX_ENTRIES and by CACHE_MAX_BYTES.
* :class:`RedisStore` is CacheControl's ``RedisCache``, with entries expiring in Redis
  (``SET ... PX``) and a breaker: when Redis errors or is slower than its timeout, the
  proxy serves uncached for a few seconds, counts the error, logs once per interval,
  then tries again.

Either way no entry is kept longer than the store's ``ttl`` (the longest TTL of any
service: HTTP_CACHE_TTL_SECONDS, or a service's own ``cache.ttl_seconds``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

import cachetools
import redis
from cachecontrol.cache import BaseCache
from cachecontrol.caches.redis_cache import RedisCache
from redis.backoff import NoBackoff
from redis.retry import Retry

from .entry import from_wire

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from ..settings import Settings
    from .entry import Stored

__all__ = ["MemoryStore", "RedisStore", "Store", "make_store"]

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS: Final = 0.25
REDIS_RETRY_SECONDS: Final = 2.0


class Store(Protocol):
    """What the cache policy needs of a backend: both classes here, typed honestly
    (CacheControl's ``BaseCache`` says ``bytes``; these hold :data:`Stored` objects)."""

    def get(self, key: str) -> Stored | None: ...

    def set(self, key: str, value: Stored, expires: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    #: The longest any entry is kept (the longest TTL of any service).
    ttl: float

    def close(self) -> None: ...


def _keep_seconds(ttl: float, expires: int | float | datetime | None) -> float:
    """How long to keep an entry: what the caller asks, never more than the store's TTL."""
    return min(ttl, float(expires)) if isinstance(expires, (int, float)) else ttl


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


class MemoryStore(BaseCache):
    """Per-process store: LRU, an expiry per entry, bounded in entries and in bytes.

    :param ttl: longest life of any entry (HTTP_CACHE_TTL_SECONDS).

    cachetools is not thread-safe; a lock costs little and keeps it correct under threads
    as well as greenlets (under gevent no switch can happen inside these calls anyway).
    """

    def __init__(self, max_entries: int, max_bytes: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._data = _Bounded(max_entries, max_bytes, clock)
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._data.get(key)
        return item[1] if item is not None else None

    def set(self, key: str, value: Any, expires: int | float | datetime | None = None) -> None:
        seconds = _keep_seconds(self.ttl, expires)
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


class RedisStore(RedisCache):
    """CacheControl's Redis backend, shared by all workers and replicas, never in the way.

    :param on_error: called with the operation name on every Redis error (a metric).

    Keys are prefixed ``wsgiproxy:``; entries expire in Redis after at most ``ttl``.
    """

    PREFIX: Final = "wsgiproxy:"

    def __init__(self, conn: redis.Redis, ttl: float,
                 on_error: Callable[[str], None] | None = None,
                 retry_seconds: float = REDIS_RETRY_SECONDS) -> None:
        super().__init__(conn)
        self.ttl = ttl
        self._on_error = on_error
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._errors_since_log = 0
        self._last_log = 0.0
        self._last_decode_log = -60.0

    @classmethod
    def from_url(cls, url: str, ttl: float,
                 on_error: Callable[[str], None] | None = None) -> RedisStore:
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
        if data is None:
            return None
        entry = from_wire(data) if isinstance(data, bytes) else None
        if entry is None:
            self._undecodable(key)
        return entry

    def _undecodable(self, key: str) -> None:
        """A value the proxy did not write (or an older version did): a miss, counted,
        logged once a minute at most (a stranger who can write to Redis must not be
        able to fill the log either)."""
        if self._on_error:
            self._on_error("decode")
        now = time.monotonic()
        if now - self._last_decode_log >= 60:
            self._last_decode_log = now
            logger.warning("ignoring a cache entry that is not one this proxy wrote (%r); "
                           "serving as a miss", key[:200])

    def set(self, key: str, value: Any, expires: int | float | datetime | None = None) -> None:
        seconds = _keep_seconds(self.ttl, expires)
        if seconds <= 0 or not self._available():
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


def make_store(settings: Settings, ttl: float,
               on_error: Callable[[str], None] | None = None) -> Store:
    """The backend CACHE_URL asks for, keeping entries ``ttl`` seconds at most."""
    if settings.cache_url:
        return RedisStore.from_url(settings.cache_url, ttl, on_error)
    return MemoryStore(settings.cache_max_entries, settings.cache_max_bytes, ttl)
