"""Which host of a service gets the next request: smooth weighted round-robin with
passive ejection.

Pure bookkeeping, no I/O (so no greenlet switch can interleave a pick, and nothing here
imports a network library). Each host has a weight (1 unless the routes file says,
1-100); picks follow nginx's smooth weighted round-robin: every pick adds each host's
weight to its running score, takes the host with the highest score (the first in file
order on a tie) and takes the sum of the weights off the winner. Equal weights give
plain round-robin in file order; weights 3 and 1 give A A B A, so the heavier host
never gets more than its share in a row. A host that refused a connection is left out
(it neither scores nor is picked) until its ejection runs out; when every host is
ejected they are tried anyway: a guess beats a certain 502. The upstream client asks
:meth:`RoundRobin.pick` for a host and reports back with :meth:`~RoundRobin.eject` and
:meth:`~RoundRobin.mark_up`.
"""

from __future__ import annotations

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
    """The hosts of one service, each in turn by weight, skipping ejected ones.

    :param hosts: in routes-file order; each with its ``weight``.
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
        self._weights = [host.weight for host in self.hosts]
        self._scores = [0] * len(self.hosts)
        self._ejected_until = [0.0] * len(self.hosts)

    def pick(self) -> Backend:
        """The next host by weight among those not ejected (among all, if all are)."""
        if len(self.hosts) == 1:
            return self.hosts[0]
        best = self._step(skip_ejected=True)
        if best < 0:
            best = self._step(skip_ejected=False)
            logger.debug("every host is ejected; trying %s anyway", self.hosts[best])
        return self.hosts[best]

    def _step(self, skip_ejected: bool) -> int:
        """One round of smooth weighted round-robin; -1 when every host is ejected."""
        scores, weights, ejected = self._scores, self._weights, self._ejected_until
        now = self._clock() if skip_ejected and any(ejected) else 0.0
        best, total = -1, 0
        for i, weight in enumerate(weights):
            if skip_ejected and ejected[i] > now:
                continue
            scores[i] += weight
            total += weight
            if best < 0 or scores[i] > scores[best]:
                best = i
        if best >= 0:
            scores[best] -= total
        return best

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
