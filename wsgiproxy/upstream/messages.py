"""The values that cross the upstream client's layers: an :class:`UpstreamRequest` for a
service, a :class:`HostResponse` from the adapter to the cache step, an
:class:`UpstreamResponse` back to the handler, which sees nothing else of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..exchange import CacheResult
from ..headers import client_headers

if TYPE_CHECKING:
    from .body import Body, ResponseBody
    from .upgraded import UpgradedConnection

__all__ = ["HostResponse", "UpstreamRequest", "UpstreamResponse"]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request as it goes to a service's host."""

    method: str
    target: str  # the raw target, sent byte-for-byte
    headers: dict[str, str]  # every header the host gets, Host first
    body: Any = None  # bytes, a read-once stream (wsgiproxy.bodies), or None
    upgrade: str = ""  # "websocket": a handshake (the cache is not asked)
    #: False: the response may be answered from the cache but must not be stored
    #: (the host saw a Host or forwarding claims the cache key does not carry).
    storable: bool = True
    #: A filter established who the client is (docs/filters.md): the cache stores the
    #: response only as it would for a request with credentials.
    authenticated: bool = False


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


@dataclass(slots=True)
class HostResponse:
    """A host's answer as the adapter returns it: plain values, and a body that owns
    the connection (:class:`~wsgiproxy.upstream.body.ResponseBody`)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]  # as the host sent them, hop-by-hop ones included
    body: ResponseBody
    chunked: bool = False  # framed with chunked coding (its Content-Length means nothing)
    _fields: dict[str, str] | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """A header's value (repeated ones joined with ", "), names in any case."""
        fields = self._fields
        if fields is None:
            fields = {}
            for key, value in self.headers:
                key = key.lower()
                fields[key] = f"{fields[key]}, {value}" if key in fields else value
            self._fields = fields
        return fields.get(name.lower())

    def get(self, name: str, default: str | None = None, /) -> str | None:
        value = self.header(name)
        return default if value is None else value

    def __contains__(self, name: object, /) -> bool:
        return isinstance(name, str) and self.header(name) is not None

    def for_client(self, cache: str = CacheResult.NONE) -> UpstreamResponse:
        """The client's response: end-to-end headers, the body as it comes. A header
        value the client must not get makes it a 502, and the connection is closed."""
        try:
            headers = client_headers(self.headers, connection=self.header("Connection"),
                                     keep_length=not self.chunked)
        except Exception:
            self.body.close()
            raise
        return UpstreamResponse(self.status, self.reason, headers, self.body, cache)
