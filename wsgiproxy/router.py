"""Which service a request is for, and what target to send it.

Only targets under ``/proxy/`` are proxied; the prefix ``/proxy`` is cut and the rest of
the raw target (path and query) is forwarded byte-for-byte: no decoding, re-encoding or
normalising, so ``%2F`` stays ``%2F`` and ``/proxy/../x`` arrives as ``/../x``.

The service comes from the ``Host`` header, compared case-insensitively without a
``:port`` or trailing dot. An absolute-form target (``GET http://a.example/proxy/x``)
names the host itself; RFC 9112 §3.2.2 says to use it instead of ``Host``. Either way
only services from the routes file can match, so such a target is no way out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .errors import BadRequest, NotFound
from .routes_file import Service, normalize_domain

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["PROXY_PREFIX", "RouteMatch", "Router", "split_host"]

logger = logging.getLogger(__name__)

PROXY_PREFIX: Final = "/proxy/"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A resolved request: the service, the target to send and the Host to send it with."""

    service: Service
    target: str
    host: str


def split_host(host: str) -> str:
    """The host part of a ``Host`` value: no port, no brackets, no trailing dot, lower case."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    name, _, _ = host.partition(":")
    return normalize_domain(name)


def _split_absolute(raw_target: str) -> tuple[str, str]:
    """``scheme://authority/path?q`` → (authority, ``/path?q``)."""
    scheme, sep, rest = raw_target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest(f"unsupported request target {raw_target[:100]!r}")
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]  # userinfo is never a host (RFC 9110 §4.2.4)
    if not authority:
        raise BadRequest("absolute-form request target without a host")
    return authority, slash + path if slash else "/"


class Router:
    """Maps a request's Host and target to a :class:`RouteMatch`.

    :param services: the routes file's services; their domains are already normalised.

    Usage::

        router = Router(routes.services)
        match = router.resolve("my-service.my-company.com:8080", "/proxy/api?x=1")
        match.service.name, match.target  # ('my-service', '/api?x=1')
    """

    def __init__(self, services: Iterable[Service]) -> None:
        self._by_domain: dict[str, Service] = {s.domain: s for s in services}

    def service_for(self, host: str) -> Service | None:
        """The service whose domain is ``host`` (a raw Host value), if any."""
        return self._by_domain.get(split_host(host))

    def resolve(self, host: str | None, raw_target: str) -> RouteMatch:
        """Route one request, raising :class:`NotFound` or :class:`BadRequest`."""
        if not raw_target.startswith("/"):
            if raw_target == "*":
                raise NotFound("no such path: only /proxy/ paths are proxied")
            host, raw_target = _split_absolute(raw_target)
        if not raw_target.startswith(PROXY_PREFIX):
            raise NotFound("no such path: only /proxy/ paths are proxied")
        if not host:
            raise BadRequest("missing Host header")
        service = self.service_for(host)
        if service is None:
            logger.debug("no service for Host %r", host)
            raise NotFound(f"no service for host {split_host(host)!r}")
        target = raw_target[len(PROXY_PREFIX) - 1:]
        return RouteMatch(service=service, target=target, host=host)
