"""The Redis server the cache tests use, on 127.0.0.1:6379, and a skip where none answers."""

from __future__ import annotations

import pytest
import redis

__all__ = ["REDIS_URL", "needs_redis", "redis_up"]

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    """Whether a Redis server answers a PING at :data:`REDIS_URL` (within half a second)."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


#: Skips a test (or, as ``pytestmark``, a module) where no Redis answers; asked once.
needs_redis = pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
