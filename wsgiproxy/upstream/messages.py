"""The values the upstream client takes and returns: an :class:`UpstreamRequest` for a
service, an :class:`UpstreamResponse` back. The handler sees nothing else of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exchange import CacheResult

if TYPE_CHECKING:
    from .body import Body
    from .upgraded import UpgradedConnection

__all__ = ["UpstreamRequest", "UpstreamResponse"]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request as it goes to a service's host."""

    method: str
    target: str  # the raw target, sent byte-for-byte
    headers: dict[str, str]  # every header the host gets, Host first
    body: Any = None  # bytes, a read-once stream (wsgiproxy.bodies), or None
    upgrade: str = ""  # "websocket": a handshake (the cache is not asked)


@dataclass(slots=True)
class UpstreamResponse:
    """What the client gets: end-to-end headers only, and the body as it arrives."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Body
    cache: str = CacheResult.NONE  # how the cache answered (wsgiproxy.exchange.CacheResult)
    #: After a 101 to an upgrade: the host's connection, to relay bytes on.
    upgraded: UpgradedConnection | None = None
