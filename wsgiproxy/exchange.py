"""What happened to one client request on its way through the proxy.

The handler creates an :class:`Exchange` per request and hands it, as an argument, to
the upstream client, which records each attempt on it (host, outcome, status) and when
the request left and was answered. The access log and the metrics read it when the
response has finished. It is owned by the greenlet serving the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Attempt", "CacheResult", "Exchange", "Outcome"]


class Outcome:
    """Labels of ``proxy_upstream_attempts_total{outcome}``: a small, fixed set."""

    RESPONSE: Final = "response"  # the host answered (any status but those below)
    RETRYABLE_STATUS: Final = "retryable_status"  # 502/503/504 from the host
    REFUSED: Final = "refused"  # connection refused: the request never left
    CONNECT_TIMEOUT: Final = "connect_timeout"  # likewise never sent
    TLS_ERROR: Final = "tls_error"  # TLS handshake or certificate check failed: never sent
    READ_TIMEOUT: Final = "read_timeout"
    RESET: Final = "reset"  # connection broken after the request was sent
    INVALID_RESPONSE: Final = "invalid_response"  # not HTTP, or not parseable


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
    outcome: str
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

    def broke_off(self) -> None:
        """The last attempt's host sent a response head, then failed before its body."""
        if self.attempts:
            self.attempts[-1].outcome = Outcome.RESET

    @property
    def upstream_host(self) -> str:
        """The host of the last attempt (the one that answered, if any did)."""
        return self.attempts[-1].host if self.attempts else ""
