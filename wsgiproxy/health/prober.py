"""The prober of a proxy instance: every host of every service with a ``health_check``
probed once per interval, and a verdict per host (docs/health.md).

Each probed host has its own loop (a thread in gunicorn's master, a greenlet once gevent
has patched the process) that probes it, then waits ``interval_seconds``. A host starts
healthy; ``unhealthy_threshold`` failed probes in a row make it unhealthy, and
``healthy_threshold`` passed probes in a row healthy again. Every verdict change and
every passed probe (a passed probe also ends an ejection in the serving processes) is
handed to ``publish`` as a whole :data:`~.state.HealthState`, at most ten times a
second, from one publishing loop.

:meth:`Prober.update` takes a reload's routes: hosts whose probing did not change keep
their loop and their counts; the others start again, keeping their verdict.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..policy import resolve_policy
from .probe import Result, probe, tls_context
from .state import HostHealth

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from ..metrics import HealthMetrics
    from ..policy import HealthCheckPolicy
    from ..routes_file import Backend, Routes
    from ..settings import Settings
    from .state import HealthState

__all__ = ["PUBLISH_GAP_SECONDS", "Prober"]

logger = logging.getLogger(__name__)

#: The shortest time between two publications of the verdicts.
PUBLISH_GAP_SECONDS: Final = 0.1


@dataclass(frozen=True, slots=True)
class _Spec:
    """Everything that decides how one host is probed: a reload that changes none of it
    leaves the host's loop running."""

    service: str
    host: Backend
    domain: str
    check: HealthCheckPolicy
    server_name: str
    context: ssl.SSLContext | None


class _HostLoop:
    """Probes one host every interval and keeps its verdict."""

    def __init__(self, spec: _Spec, verdict: HostHealth, changed: Callable[[], None],
                 metrics: HealthMetrics | None) -> None:
        self.spec = spec
        self.verdict = verdict
        self._changed = changed
        self._metrics = metrics
        self._passes = self._fails = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"wsgiproxy-probe-{spec.host}")
        if metrics is not None:
            metrics.start(spec.service, spec.host.netloc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        spec = self.spec
        while not self._stop.is_set():
            try:
                result = probe(spec.host, spec.domain, spec.check, spec.context,
                               spec.server_name)
            except Exception:  # a bug here must not end the probing of the host
                logger.exception("probing %s of %s failed", spec.host, spec.service)
                result = Result.RESET
            if self._stop.is_set():
                return
            self._record(result)
            self._stop.wait(spec.check.interval_seconds)

    def _record(self, result: str) -> None:
        spec, verdict = self.spec, self.verdict
        if self._metrics is not None:
            self._metrics.checked(spec.service, spec.host.netloc, result)
        if result == Result.PASS:
            self._passes, self._fails = self._passes + 1, 0
            healthy = verdict.healthy or self._passes >= spec.check.healthy_threshold
            if healthy and not verdict.healthy:
                logger.warning("host %s of %s passed %d health checks in a row: back in "
                               "rotation", spec.host, spec.service, self._passes)
            self.verdict = HostHealth(healthy, time.monotonic())
        else:
            self._passes, self._fails = 0, self._fails + 1
            if verdict.healthy and self._fails >= spec.check.unhealthy_threshold:
                logger.warning("host %s of %s failed %d health checks in a row (%s): out "
                               "of rotation", spec.host, spec.service, self._fails, result)
                self.verdict = HostHealth(False, verdict.passed_at)
                if self._metrics is not None:
                    self._metrics.ejected(spec.service, spec.host.netloc)
            else:
                return  # nothing to tell
        self._changed()


class Prober:
    """Probes the hosts of the services that have a ``health_check``.

    :param settings: the global defaults of each service's keys.
    :param publish: given every verdict, each time one changes or a host passes.
    :param metrics: counts probes and the ejections they make; None counts nothing.

    Usage::

        prober = Prober(settings, publish=state_file.write)
        prober.update(routes)  # at start-up and after each reload
        ...
        prober.stop()
    """

    def __init__(self, settings: Settings, publish: Callable[[HealthState], None],
                 metrics: HealthMetrics | None = None) -> None:
        self._settings = settings
        self._publish = publish
        self._metrics = metrics
        self._loops: dict[tuple[str, str], _HostLoop] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stopped = threading.Event()
        self._contexts: dict[object, ssl.SSLContext] = {}
        threading.Thread(target=self._publishing, daemon=True,
                         name="wsgiproxy-health-publish").start()

    def update(self, routes: Routes) -> None:
        """Probe what ``routes`` says from now on."""
        wanted = {}
        for service in routes.services:
            check = resolve_policy(service, self._settings).health_check
            if check is None:
                continue
            context = None if service.tls is None else self._context(service.tls)
            name = (service.tls.server_name if service.tls else None) or service.domain
            for host in service.hosts:
                wanted[(service.name, host.netloc)] = _Spec(
                    service.name, host, service.domain, check, name, context)
        with self._lock:
            for key in [k for k in self._loops if k not in wanted]:
                self._loops.pop(key).stop()
            for key, spec in wanted.items():
                loop = self._loops.get(key)
                if loop is not None and loop.spec == spec:
                    continue
                if loop is not None:
                    loop.stop()
                verdict = loop.verdict if loop is not None else HostHealth(True, 0.0)
                self._loops[key] = new = _HostLoop(spec, verdict, self._dirty.set,
                                                   self._metrics)
                new.start()
        if wanted:
            logger.info("health checks: probing %d hosts", len(wanted))
        self._dirty.set()

    def _context(self, tls: object) -> ssl.SSLContext:
        """One TLS context per distinct ``tls`` setting, kept across reloads."""
        from ..routes_file import TLS

        assert isinstance(tls, TLS)
        context = self._contexts.get(tls)
        if context is None:
            context = self._contexts[tls] = tls_context(tls)
        return context

    def state(self) -> HealthState:
        """Every probed host's verdict now."""
        with self._lock:
            return {key: loop.verdict for key, loop in self._loops.items()}

    def _publishing(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopped.is_set():
                return
            self._dirty.clear()
            try:
                self._publish(self.state())
            except Exception:
                logger.exception("health verdicts not published")
            self._stopped.wait(PUBLISH_GAP_SECONDS)

    def stop(self) -> None:
        self._stopped.set()
        self._dirty.set()
        with self._lock:
            for loop in self._loops.values():
                loop.stop()
            self._loops.clear()
