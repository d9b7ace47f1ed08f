"""What happened to one client request on its way through the proxy.

An :class:`Exchange` is created per request by the handler and made current with
:data:`current_exchange` for the duration of the upstream call. The layers below
requests (the urllib3 pool and connection in :mod:`wsgiproxy.transport`) cannot be
handed extra arguments through ``HTTPAdapter.send``, so they find it there: a
``ContextVar`` is per greenlet under gevent (greenlet >= 1.0 gives each greenlet its own
context), so concurrent requests never see each other's record.

The record feeds the access log and the metrics: which hosts were tried and how each
attempt ended, when the request was forwarded, when the host answered, how it ended.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .routes import Backend

__all__ = ["Attempt", "Exchange", "Outcome", "current_exchange"]


class Outcome:
    """Labels of ``proxy_upstream_attempts_total{outcome}``: a small, fixed set."""

    RESPONSE: Final = "response"  # the host answered (any status but those below)
    RETRYABLE_STATUS: Final = "retryable_status"  # 502/503/504 from the host
    REFUSED: Final = "refused"  # connection refused: the request never left
    CONNECT_TIMEOUT: Final = "connect_timeout"  # likewise never sent
    READ_TIMEOUT: Final = "read_timeout"
    RESET: Final = "reset"  # connection broken after the request was sent
    INVALID_RESPONSE: Final = "invalid_response"  # not HTTP, or not parseable


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
    backend: Backend | None = None  # the host picked for the attempt in progress
    forwarded_at: float = 0.0  # first time the request was handed to a host
    answered_at: float = 0.0  # when the final response's head arrived
    cache: str = ""  # "hit", "revalidated", "miss", or "" when not consulted
    cache_lookup: Any = None  # the cache's Lookup, handed on to the adapter on a miss
    status: int = 0
    bytes_sent: int = 0
    complete: bool = True  # False when the response was broken off

    def record(self, outcome: str, status: int = 0) -> None:
        """Note one attempt on the host picked last."""
        self.attempts.append(Attempt(str(self.backend), outcome, status))

    @property
    def upstream_host(self) -> str:
        """The host of the last attempt (the one that answered, if any did)."""
        return self.attempts[-1].host if self.attempts else ""


#: The exchange of the request the current greenlet is forwarding.
current_exchange: ContextVar[Exchange | None] = ContextVar("current_exchange", default=None)
