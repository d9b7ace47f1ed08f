"""The shared HTTP cache: its rules (:mod:`.policy`), what it stores (:mod:`.entry`) and
where (:mod:`.stores`). Nothing here talks to a host: the upstream client asks the
controller what to do and does it."""

from __future__ import annotations

from .entry import Entry, VaryIndex, from_wire
from .policy import (
    SAFE_METHODS,
    SERVED_METHODS,
    Answer,
    BodyCapture,
    HeaderMap,
    Headers,
    Lookup,
    SharedCacheController,
    cache_key,
)
from .stores import MemoryStore, RedisStore, Store, make_store

__all__ = [
    "SAFE_METHODS",
    "SERVED_METHODS",
    "Answer",
    "BodyCapture",
    "Entry",
    "HeaderMap",
    "Headers",
    "Lookup",
    "MemoryStore",
    "RedisStore",
    "SharedCacheController",
    "Store",
    "VaryIndex",
    "cache_key",
    "from_wire",
    "make_store",
]
