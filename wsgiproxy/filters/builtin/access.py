"""``access``: allow or deny by the client's address.

::

    - use: access
      config: {allow: [10.0.0.0/8, "2001:db8::/32"], deny: [10.6.6.0/24]}

The address is the one the proxy established for the client: the peer's, or the
``X-Forwarded-For`` entry a trusted proxy added (TRUSTED_PROXIES). ``deny`` wins; when
``allow`` is given, every address it does not cover is denied. An address that cannot
be parsed is denied. Denied is 403 JSON.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, ClassVar, Final

from wsgiproxy.filters import Answer, Context, Filter, InvalidConfig, Request

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["Access"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_CIDRS: Final = {"type": "array", "items": {"type": "string"},
                 "x-message": "must be a list of addresses or CIDR blocks"}


def _networks(values: Sequence[str], key: str) -> tuple[Network, ...]:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise InvalidConfig(f"{value!r} is not an address or CIDR block",
                                field=f"{key}[{i}]") from None
    return tuple(out)


class Access(Filter):
    """403 for clients outside ``allow`` or inside ``deny``."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "x-message": "must be a mapping with allow and/or deny",
        "properties": {"allow": _CIDRS, "deny": _CIDRS},
    }

    def __init__(self, config: Mapping[str, Any], context: Context) -> None:
        super().__init__(config, context)
        self._allow = _networks(config.get("allow", ()), "allow")
        self._deny = _networks(config.get("deny", ()), "deny")
        self._allow_given = "allow" in config

    def allows(self, client: str) -> bool:
        """Whether ``client`` (an address) may pass."""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in net for net in self._deny):
            return False
        return not self._allow_given or any(address in net for net in self._allow)

    def on_request(self, request: Request) -> Answer | None:
        if self.allows(request.client):
            return None
        return Answer.error(403, "forbidden")
