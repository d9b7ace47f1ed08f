"""The active checks' verdicts as one value, the file that carries them from gunicorn's
master to its workers, and how a process takes them into its balancers.

The file is a small JSON document in the master's runtime directory, replaced whole
(``os.replace``) so a worker reads the old one or the new one, never half. A worker
looks at it once a second (:data:`READ_EVERY_SECONDS`) with one ``stat`` and reads it
only when it changed. The times in it are ``time.monotonic()`` values: on Linux that
clock is the machine's (``CLOCK_MONOTONIC``), the same in every process.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from ..route_table import Route

__all__ = ["READ_EVERY_SECONDS", "HealthFile", "HealthState", "HostHealth", "apply"]

logger = logging.getLogger(__name__)

#: How often a gunicorn worker looks for new verdicts.
READ_EVERY_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class HostHealth:
    """The verdict on one probed host."""

    healthy: bool
    passed_at: float  # when it last passed a probe (time.monotonic()); 0: never


#: Verdicts by (service name, host as ``address:port``): only hosts that are probed.
HealthState = dict[tuple[str, str], HostHealth]


def apply(state: Mapping[tuple[str, str], HostHealth], routes: Iterable[Route]) -> None:
    """Tell each route's balancer the verdicts on its hosts; a host without one (its
    service is not probed, or no longer is) counts as healthy."""
    unprobed = HostHealth(True, 0.0)
    for route in routes:
        balancer = route.channel.adapter.balancer
        name = route.service.name
        for host in balancer.hosts:
            verdict = state.get((name, host.netloc), unprobed)
            balancer.checked(host, verdict.healthy, verdict.passed_at)


def apply_to_apps(state: Mapping[tuple[str, str], HostHealth]) -> None:
    """:func:`apply` to the routes of every proxy app of this process."""
    from ..handler import ProxyApp

    for app in ProxyApp.instances():
        apply(state, app.table)


class HealthFile:
    """The verdicts as the master writes them and a worker reads them.

    :param path: in the master's runtime directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        #: The verdicts last read (empty until the file exists).
        self.state: HealthState = {}

    def write(self, state: Mapping[tuple[str, str], HostHealth]) -> None:
        hosts = [[service, host, h.healthy, h.passed_at]
                 for (service, host), h in sorted(state.items())]
        staging = self.path.with_suffix(".new")
        staging.write_text(json.dumps({"hosts": hosts}), encoding="utf-8")
        os.replace(staging, self.path)

    def read_if_changed(self) -> bool:
        """Read the file if it changed since the last look; True if :attr:`state` is new."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return False
        try:
            hosts = json.loads(self.path.read_text(encoding="utf-8"))["hosts"]
            state = {(str(s), str(h)): HostHealth(bool(up), float(at))
                     for s, h, up, at in hosts}
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("health verdicts not read from %s: %s", self.path, error)
            return False
        self._seen, self.state = seen, state
        return True
