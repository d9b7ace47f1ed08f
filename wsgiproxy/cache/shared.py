"""One process's handle on the shared cache: the store every service's entries live in,
and the record of fetches in progress that coalescing waits on (docs/cache.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .coalescing import Coalescer
from .policy import SharedCacheController
from .stores import make_store

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..settings import Settings
    from .stores import Store

__all__ = ["SharedCache"]


class SharedCache:
    """The store (made when a service first caches) and the coalescer, for every
    service of every routes load: keys start with the service's Host, so services never
    share entries, and a reload keeps the entries of services that stay.

    :param on_error: told about each failed operation of a Redis store (a metric).
    """

    def __init__(self, settings: Settings,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._on_error = on_error
        self.store: Store | None = None
        self.coalescer = Coalescer(settings.cache_lock_timeout_seconds)

    def controller(self, ttl: float) -> SharedCacheController:
        """A service's view of the store: its entries are kept ``ttl`` seconds at most
        (the store keeps none longer than the longest TTL asked for)."""
        settings = self._settings
        if self.store is None:
            self.store = make_store(settings, ttl, self._on_error)
        self.store.ttl = max(self.store.ttl, ttl)
        return SharedCacheController(self.store, ttl=ttl,
                                     max_object_bytes=settings.cache_max_object_bytes,
                                     serve_stale_on_error=settings.cache_serve_stale_on_error)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
