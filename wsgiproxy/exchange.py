"""What happened to one client request on its way through the proxy.

The handler creates an :class:`Exchange` per request and hands it, as an argument, to
the upstream client, which records each attempt on it (host, outcome, status) and when
the request left and was answered. The access log and the metrics read it when the
response has finished. It is owned by the greenlet serving the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .filters.chain import FilterRun

__all__ = ["Attempt", "CacheResult", "Exchange"]


class CacheResult:
    """How the cache answered: ``proxy_cache_requests_total{result}`` and the access log."""

    NONE: Final = ""  # not consulted (a method the cache does not answer, caching off)
    HIT: Final = "hit"
    MISS: Final = "miss"
    REVALIDATED: Final = "revalidated"  # stale, and the host's 304 made it fresh again
    STALE: Final = "stale"  # served stale: stale-while-revalidate, or every attempt failed
    COALESCED: Final = "coalesced"  # answered from what a concurrent request stored


@dataclass(slots=True)
class Attempt:
    host: str  # "address:port" as in the routes file
    outcome: str  # a wsgiproxy.upstream.failures.Outcome
    status: int = 0


@dataclass(slots=True)
class Exchange:
    """One client request's record; mutable, owned by the greenlet serving it."""

    request_id: str
    method: str
    path: str  # the client's target, as sent
    client: str = ""
    received_at: float = field(default_factory=time.perf_counter)
    service: str = ""  # "" until routed
    target: str = ""  # the raw target forwarded upstream, byte-for-byte
    attempts: list[Attempt] = field(default_factory=list)
    forwarded_at: float = 0.0  # first time the request was handed to a host
    answered_at: float = 0.0  # when the final response's head arrived
    cache: str = CacheResult.NONE
    status: int = 0
    bytes_sent: int = 0  # body bytes to the client (a tunnel: all bytes to the client)
    bytes_received: int = 0  # body bytes from the client (a tunnel: all bytes to the host)
    upgrade: str = ""  # "websocket" for a tunnel
    complete: bool = True  # False when the response was broken off
    filters: FilterRun | None = None  # the route's filters, once they ran

    # -- the attempt log the upstream client writes --------------------------------------
    def attempted(self, host: str, outcome: str, status: int = 0) -> None:
        """One attempt on ``host`` ended with ``outcome``."""
        self.attempts.append(Attempt(host, outcome, status))

    def sent(self, at: float) -> None:
        """A request (head and body) was written to a host; the first one counts."""
        if not self.forwarded_at:
            self.forwarded_at = at

    def answered(self, at: float) -> None:
        """A response head arrived; the last one counts (it is the one served)."""
        self.answered_at = at

    def broke_off(self, outcome: str) -> None:
        """The last attempt's host sent a response head, then failed before its body:
        that attempt ended with ``outcome`` after all."""
        if self.attempts:
            self.attempts[-1].outcome = outcome

    @property
    def upstream_host(self) -> str:
        """The host of the last attempt (the one that answered, if any did)."""
        return self.attempts[-1].host if self.attempts else ""
