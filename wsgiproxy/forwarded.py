"""Who sent a request, and which forwarding headers to believe (docs/strangers.md).

A client can write anything into ``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP`` and
the rest; a host that believes them can be told any address, scheme or URL. So the
proxy believes them only from a peer in TRUSTED_PROXIES (the load balancer in front):

* from any other peer, every such claim is removed (``Forwarded``, ``X-Forwarded-*``,
  ``X-Original-*``, ``X-Real-IP``, ``*Client-IP``, ``X-Rewrite-URL``, method overrides:
  :func:`is_forwarding_claim`), and ``X-Forwarded-For``, ``-Host`` and ``-Proto`` are
  set from what the proxy saw;
* from a trusted peer, ``X-Forwarded-For`` is appended to and the others are kept.

The *client address*, used by the access log (and every rule that keys on a client),
is the rightmost address of the ``X-Forwarded-For`` chain plus the peer that is not a
trusted proxy: the last hop nobody trusted could have forged the rest. From an untrusted
peer that is the peer itself.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .settings import Network

__all__ = ["UNTRUSTED_HEADERS", "Trust", "canonical_address", "is_forwarding_claim"]

#: Request headers (lower case) that claim something about earlier hops: the client's
#: address, the original host, scheme, URL or method, as proxies, CDNs and frameworks
#: name them. Besides these, any name matching :func:`is_forwarding_claim`'s patterns.
UNTRUSTED_HEADERS: Final = frozenset({
    "x-real-ip", "x-rewrite-url", "x-host", "x-url-scheme", "front-end-https",
    "x-cluster-client-ip", "cf-connecting-ip", "fastly-client-ip", "x-envoy-external-address",
    "x-proxyuser-ip", "x-originating-ip", "x-remote-ip", "x-remote-addr",
    "x-http-method-override", "x-http-method", "x-method-override",
})
_CLAIM_PREFIXES: Final = ("x-forwarded", "forwarded", "x-original-", "x-original")


def is_forwarding_claim(name: str) -> bool:
    """Whether a request header (lower case) claims something about earlier hops."""
    return name in UNTRUSTED_HEADERS or name.startswith(_CLAIM_PREFIXES) \
        or name.endswith("client-ip")


def canonical_address(address: str) -> str:
    """``address`` as rules compare it: an IPv4-mapped IPv6 address (``::ffff:10.0.0.5``,
    what a dual-stack socket reports for an IPv4 peer) as the IPv4 one; a port that a
    proxy appended (``10.0.0.5:4711``, ``[2001:db8::1]:4711``) dropped. Anything else
    (not an address at all) is returned as it is, for rules to refuse."""
    if address.startswith("[") and "]" in address:
        address = address[1:address.index("]")]
    elif address.count(":") == 1:  # v4:port (an IPv6 address has two colons or more)
        address = address.split(":", 1)[0]
    if address[:7].lower() == "::ffff:" and "." in address:
        try:
            mapped = ipaddress.IPv6Address(address).ipv4_mapped
        except ValueError:
            return address
        if mapped is not None:
            return str(mapped)
    return address


class Trust:
    """TRUSTED_PROXIES, and what follows from it for one request.

    :param networks: the trusted proxies' addresses and CIDR blocks.
    """

    __slots__ = ("_cache", "_networks")

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (an IP address, as a peer or in a chain) is trusted."""
        if not self._networks:
            return False
        known = self._cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(canonical_address(address.strip()))
            except ValueError:
                known = False
            else:
                known = any(ip in network for network in self._networks)
            if len(self._cache) < 4096:  # peers are few; a chain's entries need not be
                self._cache[address] = known
        return known

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client address: ``peer``, or from a trusted peer the rightmost
        untrusted address of ``X-Forwarded-For`` (the leftmost if all are trusted); in
        its :func:`canonical_address` form."""
        if not forwarded_for or not self.trusts(peer):
            return canonical_address(peer)
        chain = [part.strip() for part in forwarded_for.split(",") if part.strip()]
        for address in reversed(chain):
            if not self.trusts(address):
                # a trusted proxy appends addresses; the slice bounds junk
                return canonical_address(address[:64])
        return canonical_address(chain[0][:64] if chain else peer)
