"""Which host of a service gets the next request: round-robin with passive ejection.

Pure bookkeeping, no I/O (so no greenlet switch can interleave a pick, and nothing here
imports a network library): hosts in routes-file order, one after the other, skipping a
host that refused a connection until its ejection runs out. When every host is ejected
they are tried anyway, in order: a guess beats a certain 502. The upstream client asks
:meth:`RoundRobin.pick` for a host and reports back with :meth:`~RoundRobin.eject` and
:meth:`~RoundRobin.mark_up`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .routes_file import Backend

__all__ = ["HostStateListener", "RoundRobin"]

logger = logging.getLogger(__name__)

#: Called with (host, up) whenever a host is ejected (False) or answers again (True).
HostStateListener = Callable[["Backend", bool], None]


class RoundRobin:
    """The hosts of one service, each in turn, skipping ejected ones.

    :param hosts: in routes-file order.
    :param eject_seconds: how long :meth:`eject` keeps a host out of rotation.
    :param clock: a monotonic clock; tests pass their own.

    Usage::

        rr = RoundRobin(service.hosts, eject_seconds=10)
        host = rr.pick()
        rr.eject(host)  # it refused: skip it for 10 s
    """

    def __init__(
        self,
        hosts: Sequence[Backend],
        eject_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        listener: HostStateListener | None = None,
    ) -> None:
        if not hosts:
            raise ValueError("a service needs at least one host")
        self.hosts: tuple[Backend, ...] = tuple(hosts)
        self._eject_seconds = eject_seconds
        self._clock = clock
        self._listener = listener
        # itertools.count's next() is atomic, so concurrent picks never share a slot.
        self._turn = itertools.count()
        self._ejected_until = [0.0] * len(self.hosts)

    def pick(self) -> Backend:
        """The next host in turn that is not ejected (or the next one, if all are)."""
        n = len(self.hosts)
        i = next(self._turn) % n
        if not self._ejected_until[i]:
            return self.hosts[i]
        # Skipping consumes turns, so the live hosts still share the load evenly.
        now = self._clock()
        for _ in range(n):
            if self._ejected_until[i] <= now:
                return self.hosts[i]
            i = next(self._turn) % n
        # Every host is ejected. That took n + 1 turns, so successive picks still
        # rotate through the hosts rather than hammering one.
        logger.debug("every host is ejected; trying %s anyway", self.hosts[i])
        return self.hosts[i]

    def eject(self, host: Backend) -> None:
        """Skip ``host`` for ``eject_seconds`` (it refused or timed out connecting)."""
        i = self.hosts.index(host)
        was_up = self._ejected_until[i] == 0.0
        self._ejected_until[i] = self._clock() + self._eject_seconds
        if was_up:
            logger.warning("host %s is down: skipped for %gs", host, self._eject_seconds)
            if self._listener:
                self._listener(host, False)

    def mark_up(self, host: Backend) -> None:
        """``host`` answered: back in rotation at once."""
        i = self.hosts.index(host)
        if self._ejected_until[i]:
            self._ejected_until[i] = 0.0
            logger.warning("host %s is up again", host)
            if self._listener:
                self._listener(host, True)
