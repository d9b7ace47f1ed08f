"""Request coalescing (docs/cache.md): concurrent misses for one key, in one worker, send one
request upstream; the others wait for it (up to CACHE_LOCK_TIMEOUT_SECONDS) and are
answered from what it stored. Like nginx's ``proxy_cache_lock`` or Varnish's waiting
list, per process: each gunicorn worker leads its own.

A URL whose last response could not be stored is not coalesced for a while (Varnish's
"hit-for-miss"): waiting for another request's response only to go upstream anyway
would put one host round trip in front of every request for it, serialising a busy
uncacheable URL. The first storable response for it ends that.

No lock is needed: under gevent nothing switches between the look and the claim in
:meth:`Coalescer.lead`, and ``threading.Event`` is gevent's once the worker is patched.
"""

from __future__ import annotations

import threading
from typing import Final

import cachetools

__all__ = ["PASS_SECONDS", "Coalescer"]

#: How long a URL whose response could not be stored is fetched without coalescing,
#: and how many such URLs a worker remembers (least recently marked forgotten first).
#: Longer than Varnish's 120 s hit-for-miss because a mark here corrects itself: the
#: first storable response for the URL removes it, so a URL that became cacheable loses
#: coalescing for one request, while a busy uncacheable URL that pauses (a batch job,
#: a quiet hour) would otherwise make its next burst queue behind one round trip.
PASS_SECONDS: Final = 3600.0
PASS_URLS: Final = 10_000


class Coalescer:
    """Who is fetching which key now, and a way to wait for them.

    :param timeout: the longest a request waits for another's fetch.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._fetching: dict[str, threading.Event] = {}
        # cachetools' TTLCache: expiry and a bound, so a crawl of uncacheable URLs
        # cannot grow it without end.
        self._uncacheable: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            PASS_URLS, PASS_SECONDS)

    def coalesces(self, key: str) -> bool:
        """Whether a miss for ``key`` should wait for another request's fetch."""
        return self.timeout > 0 and key not in self._uncacheable

    def not_storable(self, key: str) -> None:
        """The response for ``key`` could not be stored: fetch it without waiting."""
        self._uncacheable[key] = True

    def storable(self, key: str) -> None:
        """A response for ``key`` is being stored: coalesce its misses again."""
        self._uncacheable.pop(key, None)

    def lead(self, key: str) -> threading.Event | None:
        """Claim ``key``: an event to :meth:`release` when done, or None when another
        request is already fetching it (then :meth:`follow`)."""
        if key in self._fetching:
            return None
        done = self._fetching[key] = threading.Event()
        return done

    def follow(self, key: str) -> bool:
        """Wait for the request fetching ``key``; True if it finished in time."""
        done = self._fetching.get(key)
        return done is None or done.wait(self.timeout)

    def release(self, key: str, done: threading.Event) -> None:
        """The fetch of ``key`` has ended (stored, not storable, or failed)."""
        if self._fetching.get(key) is done:
            del self._fetching[key]
        done.set()
