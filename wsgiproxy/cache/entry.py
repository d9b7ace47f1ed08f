"""What the cache stores: a response with the times RFC 9111 needs to compute its age.

At a URL whose responses ``Vary``, a :class:`VaryIndex` names the request headers that
pick the variant, and each variant is an :class:`Entry` under its own key. The memory
store keeps these objects as they are (a hit costs no decoding); the Redis store sends
them through :meth:`Entry.to_wire` / :func:`from_wire` (msgpack).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Final

import msgpack

from ..headers import HOP_BY_HOP
from ..http1 import FIELD_VALUE as _FIELD_VALUE
from ..http1 import TOKEN as _TOKEN

__all__ = ["ENTRY_OVERHEAD_BYTES", "Entry", "Stored", "VaryIndex", "from_wire"]

logger = logging.getLogger(__name__)

#: Bytes an entry costs beyond its body and headers (objects, dict slots): an estimate
#: that keeps CACHE_MAX_BYTES honest for small responses.
ENTRY_OVERHEAD_BYTES: Final = 600


@dataclass(slots=True)
class Entry:
    """A stored response (RFC 9111 §3) and what is needed to compute its age (§4.2.3)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]  # as the host sent them, minus Age and hop-by-hop
    body: bytes
    response_time: float  # wall clock when it was received
    initial_age: float  # corrected_initial_age of §4.2.3
    lifetime: float  # freshness lifetime, s-maxage > max-age > Expires, capped by the TTL
    vary: dict[str, str] = field(default_factory=dict)  # request values it was stored for
    revalidate: bool = False  # response said no-cache: never served without validation

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def size(self) -> int:
        return (len(self.body) + sum(len(k) + len(v) for k, v in self.headers)
                + ENTRY_OVERHEAD_BYTES)

    def to_wire(self) -> bytes:
        data: bytes = msgpack.packb([1, self.status, self.reason, self.headers, self.body,
                                     self.response_time, self.initial_age, self.lifetime,
                                     self.vary, self.revalidate], use_bin_type=True)
        return data


@dataclass(slots=True, frozen=True)
class VaryIndex:
    """Stored at a URL whose response varies: the request headers that pick a variant."""

    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return ENTRY_OVERHEAD_BYTES + sum(len(n) for n in self.names)

    def to_wire(self) -> bytes:
        data: bytes = msgpack.packb([2, list(self.names)], use_bin_type=True)
        return data


Stored = Entry | VaryIndex


#: No time in an entry (seconds since the epoch, an age, a lifetime) is larger.
_LONGEST: Final = 1e11


def _strings(value: object) -> bool:
    return isinstance(value, str)


def _entry(item: list[object]) -> Entry | None:
    """An :class:`Entry` from its wire fields, each of the type it must have: anything
    else in the store (written by something other than this proxy) is no entry."""
    if len(item) != 10:
        return None
    _, status, reason, headers, body, response_time, initial_age, lifetime, vary, revalidate \
        = item
    numbers = (response_time, initial_age, lifetime)
    if not (isinstance(status, int) and 200 <= status <= 599 and isinstance(reason, str)
            and _FIELD_VALUE.fullmatch(reason) and isinstance(headers, list)
            and isinstance(body, bytes) and isinstance(vary, dict)
            and isinstance(revalidate, bool)
            and all(isinstance(n, (int, float)) and not isinstance(n, bool)
                    and math.isfinite(n) and 0 <= n < _LONGEST for n in numbers)):
        return None
    pairs: list[tuple[str, str]] = []
    for header in headers:
        if not (isinstance(header, list) and len(header) == 2
                and all(_strings(part) for part in header)
                and _TOKEN.fullmatch(header[0]) and _FIELD_VALUE.fullmatch(header[1])
                and header[0].lower() not in HOP_BY_HOP):
            return None
        pairs.append((header[0], header[1]))
    if not all(_strings(k) and _strings(v) for k, v in vary.items()):
        return None
    return Entry(status, reason, pairs, body, float(response_time),  # type: ignore[arg-type]
                 float(initial_age), float(lifetime), vary, revalidate)  # type: ignore[arg-type]


def from_wire(data: bytes) -> Stored | None:
    """Decode what :meth:`Entry.to_wire` or :meth:`VaryIndex.to_wire` wrote; None for
    anything else (the caller counts it and serves a miss)."""
    try:
        item = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(item, list) or not item:
        return None
    if item[0] == 1:
        return _entry(item)
    if item[0] == 2 and len(item) == 2 and isinstance(item[1], list) \
            and all(_strings(n) for n in item[1]):
        return VaryIndex(tuple(item[1]))
    return None
