"""Request coalescing (SPEC §15): concurrent misses for one key, in one worker, send one
request upstream; the others wait for it (up to CACHE_LOCK_TIMEOUT_SECONDS) and are
answered from what it stored. Like nginx's ``proxy_cache_lock`` or Varnish's waiting
list, per process: each gunicorn worker leads its own.

No lock is needed: under gevent nothing switches between the look and the claim in
:meth:`Coalescer.lead`, and ``threading.Event`` is gevent's once the worker is patched.
"""

from __future__ import annotations

import threading

__all__ = ["Coalescer"]


class Coalescer:
    """Who is fetching which key now, and a way to wait for them.

    :param timeout: the longest a request waits for another's fetch.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._fetching: dict[str, threading.Event] = {}

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
