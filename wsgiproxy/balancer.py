"""Which host of a service gets the next request: smooth weighted round-robin over the
hosts that are in rotation (docs/policy.md, docs/health.md).

Pure bookkeeping, no I/O (so no greenlet switch can interleave a pick, and nothing here
imports a network library). Each host has a weight (1 unless the routes file says,
1-100); picks follow nginx's smooth weighted round-robin: every pick adds each host's
weight to its running score, takes the host with the highest score (the first in file
order on a tie) and takes the sum of the weights off the winner. Equal weights give
plain round-robin in file order; weights 3 and 1 give A A B A, so the heavier host
never gets more than its share in a row.

A host is out of rotation (it neither scores nor is picked) while any of these holds:

* it refused a connection (:meth:`RoundRobin.eject`), for ``eject_seconds``;
* it answered ``consecutive_5xx`` errors in a row (:meth:`RoundRobin.answered`), for
  ``base_ejection_seconds`` times the number of its ejections, at most 300 s; never more
  than ``max_ejection_percent`` of the hosts at once, and never the last one in rotation;
* its active health checks say it is unhealthy (:meth:`RoundRobin.checked`); a probe it
  passes also ends the two ejections above.

When every host is out they are all tried anyway: a guess beats a certain 502.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .policy import OutlierPolicy
    from .routes_file import Backend

__all__ = ["MAX_EJECTION_SECONDS", "HostStateListener", "Reason", "RoundRobin"]

logger = logging.getLogger(__name__)

#: Called with (host, up) whenever a host leaves rotation (False) or is back (True).
HostStateListener = Callable[["Backend", bool], None]
#: The longest outlier ejection; also how long a host must serve before its earlier
#: ejections are forgotten.
MAX_EJECTION_SECONDS: Final = 300.0


class Reason:
    """Why a host was ejected: the ``reason`` label of ``proxy_upstream_ejections_total``."""

    REFUSED: Final = "refused"  # refused a connection (or timed out connecting, or TLS)
    CONSECUTIVE_5XX: Final = "consecutive_5xx"
    HEALTH_CHECK: Final = "health_check"


class _Host:
    """One host's standing, mutated only by its :class:`RoundRobin`."""

    __slots__ = ("check_down", "ejections", "errors", "outlier_since", "outlier_until",
                 "passed_at", "refused_since", "refused_until", "reported_up", "served_from")

    def __init__(self) -> None:
        self.refused_until = self.refused_since = 0.0
        self.outlier_until = self.outlier_since = 0.0
        self.served_from = 0.0  # when its last outlier ejection ended
        self.ejections = 0  # outlier ejections not yet forgotten
        self.errors = 0  # errors in a row
        self.check_down = False
        self.passed_at = 0.0  # when it last passed an active probe, as last told
        self.reported_up = True

    def out(self, now: float) -> bool:
        return self.check_down or self.refused_until > now or self.outlier_until > now


class RoundRobin:
    """The hosts of one service, each in turn by weight, skipping those out of rotation.

    :param hosts: in routes-file order; each with its ``weight``.
    :param eject_seconds: how long :meth:`eject` keeps a host out of rotation.
    :param clock: a monotonic clock; tests pass their own.
    :param listener: told (host, up) when a host leaves rotation or comes back.
    :param outlier: when :meth:`answered` errors eject a host; None: never.
    :param on_ejection: told (host, reason) at each ejection (refused, consecutive_5xx).
    :param on_all_down: told each time a pick finds every host out of rotation.
    :param name: the service's, for the log.

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
        *,
        outlier: OutlierPolicy | None = None,
        on_ejection: Callable[[Backend, str], None] | None = None,
        on_all_down: Callable[[], None] | None = None,
        name: str = "",
    ) -> None:
        if not hosts:
            raise ValueError("a service needs at least one host")
        self.hosts: tuple[Backend, ...] = tuple(hosts)
        self._eject_seconds = eject_seconds
        self._clock = clock
        self._listener = listener
        self._outlier = outlier
        self._on_ejection = on_ejection
        self._on_all_down = on_all_down
        self._name = name or "service"
        self._weights = [host.weight for host in self.hosts]
        self._scores = [0] * len(self.hosts)
        self._state = [_Host() for _ in self.hosts]
        self._tracking = False  # some host has been out of rotation: look at the clock
        self._all_down = False

    # -- picking -----------------------------------------------------------------------
    def pick(self) -> Backend:
        """The next host by weight among those in rotation (among all, if none is)."""
        out = self._out_now() if self._tracking else ()
        if out and len(out) == len(self.hosts):
            self._every_host_out()
            return self.hosts[self._step(())]
        if self._all_down:
            self._all_down = False
            logger.warning("%s: a host is back in rotation", self._name)
        if len(self.hosts) == 1:
            return self.hosts[0]
        return self.hosts[self._step(out)]

    def _out_now(self) -> list[int]:
        """The hosts out of rotation now; those whose ejection ran out are reported back."""
        now = self._clock()
        out = []
        for i, state in enumerate(self._state):
            if state.out(now):
                out.append(i)
            elif not state.reported_up:
                self._report(i, now)
        if not out and all(s.reported_up for s in self._state):
            self._tracking = False
        return out

    def _step(self, out: Sequence[int]) -> int:
        """One round of smooth weighted round-robin over the hosts not in ``out``."""
        scores, weights = self._scores, self._weights
        best, total = -1, 0
        for i, weight in enumerate(weights):
            if out and i in out:
                continue
            scores[i] += weight
            total += weight
            if best < 0 or scores[i] > scores[best]:
                best = i
        scores[best] -= total
        return best

    def _every_host_out(self) -> None:
        if not self._all_down:
            self._all_down = True
            logger.warning("%s: every host is down or ejected; sending to all of them "
                           "anyway", self._name)
        if self._on_all_down is not None:
            self._on_all_down()

    # -- what the hosts did ------------------------------------------------------------
    def eject(self, host: Backend) -> None:
        """Skip ``host`` for ``eject_seconds`` (it refused or timed out connecting)."""
        i = self.hosts.index(host)
        state, now = self._state[i], self._clock()
        was_refused = state.refused_until > now
        state.refused_until, state.refused_since = now + self._eject_seconds, now
        self._tracking = True
        if not was_refused:
            logger.warning("host %s is down: skipped for %gs", host, self._eject_seconds)
            if self._on_ejection is not None:
                self._on_ejection(host, Reason.REFUSED)
        self._report(i, now)

    def mark_up(self, host: Backend) -> None:
        """``host`` answered: no longer skipped for refusing connections."""
        i = self.hosts.index(host)
        state = self._state[i]
        if state.refused_until:
            state.refused_until = 0.0
            if not state.check_down and state.outlier_until <= self._clock():
                logger.warning("host %s is up again", host)
            self._report(i, self._clock())

    def answered(self, host: Backend, error: bool) -> None:
        """One attempt at ``host`` ended: a 5xx or a broken exchange (``error``) or
        anything else. ``consecutive_5xx`` errors in a row eject it."""
        state = self._state[self.hosts.index(host)]
        if not error:
            state.errors = 0
            return
        state.errors += 1
        outlier = self._outlier
        if outlier is not None and outlier.consecutive_5xx and \
                state.errors >= outlier.consecutive_5xx:
            self._eject_outlier(self.hosts.index(host), outlier)

    def _eject_outlier(self, i: int, outlier: OutlierPolicy) -> None:
        state, now, host = self._state[i], self._clock(), self.hosts[i]
        if state.outlier_until > now or outlier.base_ejection_seconds <= 0:
            return
        ejected = sum(1 for s in self._state if s.outlier_until > now)
        cap = math.floor(len(self.hosts) * outlier.max_ejection_percent / 100)
        in_rotation = sum(1 for s in self._state if not s.out(now))
        if ejected >= cap or (in_rotation <= 1 and not state.out(now)):
            logger.debug("%s: host %s answered %d errors in a row; not ejected (%d of %d "
                         "hosts ejected already, %d in rotation)", self._name, host,
                         state.errors, ejected, len(self.hosts), in_rotation)
            return
        if now - state.served_from > MAX_EJECTION_SECONDS:
            state.ejections = 0  # it served long enough since: a first offence again
        state.ejections += 1
        seconds = min(MAX_EJECTION_SECONDS, outlier.base_ejection_seconds * state.ejections)
        state.outlier_since, state.outlier_until = now, now + seconds
        state.served_from = now + seconds
        self._tracking = True
        logger.warning("host %s of %s ejected for %gs after %d errors in a row (ejection "
                       "%d)", host, self._name, seconds, state.errors, state.ejections)
        state.errors = 0
        if self._on_ejection is not None:
            self._on_ejection(host, Reason.CONSECUTIVE_5XX)
        self._report(i, now)

    def checked(self, host: Backend, healthy: bool, passed_at: float) -> None:
        """The active checks' verdict on ``host``, and when it last passed a probe (on
        this clock; 0: never): a probe passed since an ejection ends that ejection."""
        i = self.hosts.index(host)
        state = self._state[i]
        if state.check_down != healthy and passed_at <= state.passed_at:
            return  # nothing new (verdicts are told again and again)
        state.check_down, state.passed_at = not healthy, max(passed_at, state.passed_at)
        if passed_at > state.outlier_since and state.outlier_until:
            state.outlier_until, state.served_from = 0.0, passed_at
        if passed_at > state.refused_since and state.refused_until:
            state.refused_until = 0.0
        self._tracking = True
        self._report(i, self._clock())

    def _report(self, i: int, now: float) -> None:
        state = self._state[i]
        up = not state.out(now)
        if up != state.reported_up:
            state.reported_up = up
            if up:
                logger.info("host %s of %s is back in rotation", self.hosts[i], self._name)
            if self._listener is not None:
                self._listener(self.hosts[i], up)

    # -- reloads -----------------------------------------------------------------------
    def adopt(self, previous: RoundRobin) -> None:
        """Take over the standing of the hosts ``previous`` also had (same address and
        port): a reload that changes a service keeps what is known of its hosts."""
        known = {(h.address, h.port): s for h, s in zip(previous.hosts, previous._state,
                                                         strict=True)}
        for i, host in enumerate(self.hosts):
            state = known.get((host.address, host.port))
            if state is not None:
                self._state[i] = state
                self._tracking = True
