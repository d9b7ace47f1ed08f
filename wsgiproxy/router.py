"""Reading what a request says about where it goes: its Host and its target
(docs/routing.md, docs/strangers.md).

* :func:`parse_host` accepts a ``Host`` value only as ``uri-host [ ":" port ]``
  (RFC 9110 §7.2): a registered name, an IPv4 address or a bracketed IPv6 literal, an
  optional trailing dot, and a port of 1-5 digits. Anything else (``app.test:@evil``,
  ``[app.test]:x``, ``app.test:80:80``, spaces, userinfo) is 400 before routing: a
  host that builds links from Host would otherwise put the stranger's text in them,
  and a cache would serve that to everyone.
* :func:`split_target` reads the host and the path from the raw target. An
  absolute-form target (``GET http://a.example/proxy/x``) names the host itself; RFC
  9112 §3.2.2 says to use it instead of ``Host``. Either way only services from the
  routes file can match, so such a target is no way out.
* :func:`strip_prefix` cuts a service's path prefix (``proxy.path_prefix``, ``/proxy/``
  unless the routes file says otherwise; ``/`` cuts nothing) off the path and keeps the
  rest byte-for-byte: no decoding, re-encoding or normalising, so ``%2F`` stays ``%2F``
  and ``/proxy/../x`` arrives as ``/../x``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from .errors import BadRequest, NotFound
from .routes_file import normalize_domain

__all__ = ["PROXY_PREFIX", "ParsedHost", "parse_host", "split_target", "strip_prefix"]

#: The path prefix when the routes file names none: the proxy shares a site's paths
#: with whatever else serves them, and only this subtree is forwarded (docs/routing.md).
PROXY_PREFIX: Final = "/proxy/"

# A registered name as DNS writes it (letters, digits, '-', '_', dots between labels),
# with an optional trailing dot; an IPv4 address is one too.
_NAME: Final = re.compile(r"(?=.{1,254}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
                          r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?")
_PORT: Final = re.compile(r"[0-9]{1,5}")
#: The port a client's Host may name without changing what it means.
DEFAULT_PORT: Final = "80"


@dataclass(frozen=True, slots=True)
class ParsedHost:
    """A valid Host value, and the forms the proxy uses."""

    raw: str  # as the client sent it: forwarded as it is
    name: str  # lower case, no trailing dot; an IPv6 literal without brackets
    port: str  # "" when none was given

    @property
    def normalized(self) -> str:
        """Lower case, no trailing dot, no default port: the cache key's host."""
        name = f"[{self.name}]" if ":" in self.name else self.name
        return f"{name}:{self.port}" if self.port and self.port != DEFAULT_PORT else name


def parse_host(value: str) -> ParsedHost:
    """The parts of a ``Host`` value, or :class:`BadRequest` if it is not one."""
    if value.startswith("["):
        end = value.find("]")
        literal, rest = value[1:end], value[end + 1:]
        try:
            if end < 0 or not isinstance(ipaddress.ip_address(literal), ipaddress.IPv6Address):
                raise ValueError(literal)
        except ValueError:
            raise BadRequest(f"invalid Host header {value[:100]!r}") from None
        name = literal.lower()
    else:
        host, colon, port = value.partition(":")
        if not _NAME.fullmatch(host):
            raise BadRequest(f"invalid Host header {value[:100]!r}")
        name, rest = normalize_domain(host), colon + port
    if rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:])):
        raise BadRequest(f"invalid Host header {value[:100]!r}")
    return ParsedHost(value, name, rest[1:])


def _split_absolute(raw_target: str) -> tuple[str, str]:
    """``scheme://authority/path?q`` → (authority, ``/path?q``)."""
    scheme, sep, rest = raw_target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest(f"unsupported request target {raw_target[:100]!r}")
    authority, slash, path = rest.partition("/")
    if "@" in authority:  # userinfo is never a host (RFC 9110 §4.2.4)
        raise BadRequest("userinfo in the request target's authority")
    if not authority:
        raise BadRequest("absolute-form request target without a host")
    return authority, slash + path if slash else "/"


def split_target(host: str | None, raw_target: str) -> tuple[ParsedHost, str]:
    """The request's host and its path (with the query), or :class:`NotFound` /
    :class:`BadRequest`."""
    if not raw_target.startswith("/"):
        if raw_target == "*":
            raise NotFound("no such path: '*' is not proxied")
        host, raw_target = _split_absolute(raw_target)
    if not host:
        raise BadRequest("missing Host header")
    return parse_host(host), raw_target


def strip_prefix(path: str, prefix: str = PROXY_PREFIX) -> str:
    """The target to forward: ``path`` without ``prefix`` but its last ``/``, or
    :class:`NotFound` when the path is not under it. The prefix is compared as written
    (case-sensitive, no decoding): ``/PROXY/x`` and ``/%70roxy/x`` are not under it."""
    if not path.startswith(prefix):
        raise NotFound(f"no such path: only {prefix} paths are proxied")
    return path[len(prefix) - 1:]
