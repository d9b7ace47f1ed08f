"""Where a host's connections go: its socket addresses, looked up once per name at a time.

urllib3 calls ``getaddrinfo`` for every new connection, even to ``127.0.0.1``. Under
gevent that call waits for one of the hub's ten threads, and each thread for the
interpreter lock from a worker busy with its other requests: a burst of new connections
(a cold pool, a worker just started, a host back in rotation) queued there for seconds
(docs/performance.md, "Tails at 500 connections"). So a host written as an address is
never looked up, and a name is looked up by one connection while the others opening at
the same moment wait for its answer, which is then kept for :data:`NAME_TTL_SECONDS`:
a changed DNS record is followed within that, as in Envoy's ``STRICT_DNS`` (5 s by
default). A failed lookup is not kept; each connection that needs it asks again.

The names come from the routes file, never from a client, and there is one of these
per pool (per host), so nothing here grows with traffic.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Final

from urllib3.util.connection import allowed_gai_family

__all__ = ["NAME_TTL_SECONDS", "HostAddresses"]

#: How long a name's answer is used for new connections before it is looked up again.
NAME_TTL_SECONDS: Final = 5.0

Address = tuple[int, tuple[Any, ...]]  # (family, socket address)


def literal(host: str, port: int) -> Address | None:
    """The address of a host written as an IPv4 or IPv6 address; None for a name (and
    for a scoped IPv6 address, whose scope needs the system's lookup)."""
    host = host.strip("[]")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, port) if family == socket.AF_INET else (host, port, 0, 0)
    return None


class HostAddresses:
    """The addresses of one ``host:port``, for the connections of its pool."""

    def __init__(self, host: str, port: int, ttl: float = NAME_TTL_SECONDS) -> None:
        self.host, self.port, self.ttl = host, port, ttl
        fixed = literal(host, port)
        self._fixed = [fixed] if fixed is not None else None
        self._answer: list[Address] = []
        self._expires = 0.0
        self._lookup: threading.Event | None = None  # set when the lookup under way ends
        self._lock = threading.Lock()  # gevent's, once the worker is patched

    def resolve(self) -> list[Address]:
        """The addresses to try, in order. Raises ``socket.gaierror`` if the name's
        lookup fails."""
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if self._answer and time.monotonic() < self._expires:
                return self._answer
            lookup = self._lookup
            if lookup is None:
                lookup = self._lookup = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            lookup.wait()
            with self._lock:
                if self._answer and time.monotonic() < self._expires:
                    return self._answer
            return self._look_up()  # the shared lookup failed: ask for ourselves
        try:
            answer = self._look_up()
            with self._lock:
                self._answer, self._expires = answer, time.monotonic() + self.ttl
            return answer
        finally:
            with self._lock:
                self._lookup = None
            lookup.set()

    def _look_up(self) -> list[Address]:
        infos = socket.getaddrinfo(self.host.strip("[]"), self.port, allowed_gai_family(),
                                   socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in infos]
