"""The routes in use, as one immutable value per routes load (docs/routing.md,
docs/reload.md).

For each service a :class:`Route` holds everything that applies to its requests,
resolved once when the routes file is loaded: the service, its effective policy (its
own settings over the global ones) and its channel (the adapter that reaches its
hosts, and its view of the shared cache). A reload builds a new :class:`RouteTable`
and the app swaps it in with one assignment: a request reads the table once, so it is
served start to finish by the table it started with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from .errors import NotFound
from .filters.chain import Chain, ChainBuilder
from .policy import ServicePolicy, resolve_policy
from .router import ParsedHost, split_target, strip_prefix

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from .routes_file import Routes, Service
    from .settings import Settings
    from .upstream import Channel

__all__ = ["Channels", "Route", "RouteMatch", "RouteTable"]

logger = logging.getLogger(__name__)


class Channels(Protocol):
    """What builds a service's channel (:class:`~wsgiproxy.upstream.UpstreamClient`)."""

    def channel(self, service: Service, policy: ServicePolicy) -> Channel: ...

    def retire(self, domains: list[str]) -> None: ...


#: The chain of a route built without filters (tests' tables).
NO_FILTERS: Final = Chain("", ())


@dataclass(frozen=True, slots=True)
class Route:
    """One service, and everything that applies to its requests."""

    service: Service
    policy: ServicePolicy
    channel: Channel
    filters: Chain = NO_FILTERS  # proxy-level filters, then the service's


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A routed request: its route, the target to forward, and its Host."""

    route: Route
    target: str  # the raw target after the prefix, forwarded byte-for-byte
    host: ParsedHost  # forwarded as the client sent it; normalised in the cache key


class RouteTable:
    """Maps a request's Host and target to a :class:`RouteMatch`.

    :param routes: by normalised domain.

    Usage::

        table = RouteTable.build(routes, settings, upstream)
        match = table.resolve("my-service.my-company.com:8080", "/proxy/api?x=1")
        match.route.service.name, match.target  # ('my-service', '/api?x=1')
    """

    __slots__ = ("_by_domain",)

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._by_domain = dict(routes)

    @classmethod
    def build(cls, routes: Routes, settings: Settings, channels: Channels,
              chains: ChainBuilder | None = None) -> RouteTable:
        """The table for a routes load. Services that did not change keep their
        adapters (connections, ejected hosts); adapters of removed services are closed.
        Filters that did not change keep their instances (``chains`` remembers them)."""
        chains = ChainBuilder() if chains is None else chains
        chains.begin()
        table = {}
        for service in routes.services:
            policy = resolve_policy(service, settings)
            table[service.domain] = Route(
                service, policy, channels.channel(service, policy),
                chains.chain(service.name, routes.filters, service.filters))
        channels.retire(list(table))
        chains.commit()
        return cls(table)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._by_domain.values())

    def __len__(self) -> int:
        return len(self._by_domain)

    def resolve(self, host: str | None, raw_target: str) -> RouteMatch:
        """Route one request, raising :class:`NotFound` or :class:`BadRequest`."""
        parsed, path = split_target(host, raw_target)
        route = self._by_domain.get(parsed.name)
        if route is None:
            logger.debug("no service for Host %r", parsed.raw)
            raise NotFound(f"no service for host {parsed.name!r}")
        # The service's own prefix (docs/routing.md): known only once Host has picked it.
        return RouteMatch(route, strip_prefix(path, route.service.path_prefix), parsed)
