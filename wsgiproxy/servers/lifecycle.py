"""What a running proxy does once, whatever server carries its requests (docs/running.md,
docs/reload.md).

Both ways of running it (``python -m wsgiproxy``; gunicorn's master and its gevent
workers) share this module and supply only what differs between them:

* start-up: :func:`load_config_or_exit` reads the settings and the routes file, or
  prints one line and exits 2; :func:`check_can_listen` / :func:`cannot_listen` make a
  taken port one line and exit 2 as well;
* :class:`ControlPlane`: readiness, the routes reloader and its metrics, the
  metrics/health server on METRICS_ADDR, the routes-file watcher, the prober of the
  active health checks (docs/health.md). ``python -m wsgiproxy`` runs one in its
  process; under gunicorn the master runs it (one metrics server, one reload decision
  and one probe per host and interval, however many workers);
* :class:`Connections`: a server process's open client connections and whether each
  is in a request, so that shutdown closes the idle keep-alive ones at once instead of
  waiting for their clients, and lets requests in flight finish.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from ..errors import ConfigError
from ..routes_file import Routes, read_routes
from ..settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Counter

    from ..health import HealthState, Prober

__all__ = ["LISTEN_BACKLOG", "ClientTimeouts", "Config", "Connections", "ControlPlane",
           "cannot_listen", "check_can_listen", "count_client_timeout", "end_idle_connection",
           "load_config", "load_config_or_exit", "metrics_url"]

#: Connections the kernel queues for a server that holds WORKER_CONNECTIONS already.
LISTEN_BACKLOG: Final = 2048

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Config:
    """What a server starts from: the settings, the routes file and its text."""

    settings: Settings
    routes: Routes
    routes_text: str


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """How long a client may take, the same under both servers (docs/strangers.md)."""

    keepalive: float  # idle between requests: then the connection is closed quietly
    header: float  # from a request's first byte to the end of its header section: 408
    body: float  # the longest pause within a body (or a response write): 408 or a close

    @classmethod
    def of(cls, settings: Settings) -> ClientTimeouts:
        return cls(settings.keepalive_seconds, settings.client_header_timeout_seconds,
                   settings.client_body_timeout_seconds)


def count_client_timeout(phase: str) -> None:
    """Count a client that was too slow before the app saw its request (the servers'
    header timeouts), on the proxy app of this process."""
    from ..handler import ProxyApp

    for app in ProxyApp.instances()[:1]:
        app.client_timed_out(phase)


def load_config() -> Config:
    """The settings (environment, ``.env``) and the routes file they name."""
    settings = load_settings()
    routes, text = read_routes(settings.configuration_filename)
    return Config(settings, routes, text)


def load_config_or_exit() -> Config:
    """:func:`load_config`, or one line on stderr and exit status 2: how every way of
    starting the proxy refuses a bad setting or routes file, before anything listens."""
    try:
        return load_config()
    except ConfigError as error:
        print(f"wsgiproxy: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cannot_listen(what: str, addr: tuple[str, int], error: OSError) -> NoReturn:
    """One line on stderr and exit status 2: the port is taken, or not ours to bind."""
    reason = "address already in use" if error.errno == errno.EADDRINUSE \
        else error.strerror or str(error)
    print(f"wsgiproxy: cannot listen on {addr[0]}:{addr[1]} ({what}): {reason}",
          file=sys.stderr)
    raise SystemExit(2)


def check_can_listen(what: str, addr: tuple[str, int]) -> None:
    """Bind ``addr`` (with SO_REUSEADDR, never SO_REUSEPORT) and let it go again, or
    :func:`cannot_listen`. gunicorn's workers each bind their own SO_REUSEPORT socket,
    which would quietly share a port with another process of the same user; this check
    in the master makes a taken port a start-up error instead."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as error:
            cannot_listen(what, addr, error)


def metrics_url(addr: tuple[str, int] | None) -> str:
    """Where the metrics/health server answers, for the start-up line."""
    return f"http://{addr[0]}:{addr[1]}/" if addr else "nothing (METRICS_ADDR is empty)"


def end_idle_connection(sock: Any) -> None:
    """End a keep-alive connection that waits for its next request, at shutdown.

    Shuts down the OS socket under gevent's: the greenlet waiting on it then reads a
    plain end of file and finishes quietly. gevent's own ``shutdown()`` would first
    cancel that wait with EBADF ("closed in another greenlet"), which servers log as a
    socket error with a traceback.
    """
    try:
        getattr(sock, "_sock", sock).shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Connections:
    """The open client connections of one server process, each busy or idle.

    A server marks a connection :meth:`opened` when it accepts it, :meth:`busy` while
    a request is read and answered, :meth:`idle` between requests, :meth:`closed` at
    the end. At shutdown :meth:`drain` ends the idle ones (their clients would keep
    them for the whole keep-alive time) and waits for the busy ones.

    :param end: how to end an idle connection (:func:`end_idle_connection`).
    """

    def __init__(self, end: Callable[[Any], None] = end_idle_connection) -> None:
        self._busy: dict[Any, bool] = {}
        self._end = end
        self.draining = False

    def opened(self, conn: Any) -> None:
        self._busy[conn] = False
        if self.draining:
            self._end(conn)

    def busy(self, conn: Any) -> None:
        if conn in self._busy:
            self._busy[conn] = True

    def idle(self, conn: Any) -> None:
        if conn in self._busy:
            self._busy[conn] = False
            if self.draining:
                self._end(conn)

    def closed(self, conn: Any) -> None:
        self._busy.pop(conn, None)

    def __len__(self) -> int:
        return len(self._busy)

    def close_idle(self) -> None:
        for conn, busy in list(self._busy.items()):
            if not busy:
                self._end(conn)

    def drain(self, grace: float, sleep: Callable[[float], object] = time.sleep) -> bool:
        """End idle connections, now and as requests finish, until none is left or
        ``grace`` seconds have passed; True if every connection ended in time."""
        self.draining = True
        deadline = time.monotonic() + grace
        while self._busy:
            self.close_idle()
            if time.monotonic() > deadline:
                logger.warning("graceful timeout: %d connections still open",
                               len(self._busy))
                return False
            sleep(0.05)
        return True


class ControlPlane:
    """Readiness, reloads, the metrics/health server and the routes watcher of one
    proxy instance.

    :param config: what the instance started from.
    :param accept: given new, valid routes and their text when a reload succeeds.
    :param serving: whether requests can be served now (under gunicorn: a worker that
        has loaded the app is alive); None: from :meth:`started` on.
    :param collect: the metrics text for ``/metrics``.
    """

    def __init__(self, config: Config, *, accept: Callable[[Routes, str], None],
                 collect: Callable[[], bytes],
                 serving: Callable[[], bool] | None = None) -> None:
        from ..metrics import ReloadMetrics
        from ..reload import RoutesReloader
        from .admin import AdminApp, Readiness

        self.config = config
        self.settings = config.settings
        self.readiness = Readiness(serving)
        self.reloader = RoutesReloader(self.settings.configuration_filename, config.routes,
                                       accept=accept, metrics=ReloadMetrics())
        self._admin_app = AdminApp(self.readiness, collect)
        self.admin: WSGIServer | None = None
        self.prober: Prober | None = None
        self._stopped = threading.Event()

    def serve_admin(self) -> None:
        """Start the metrics/health server on METRICS_ADDR (a thread: a greenlet once
        gevent has patched the process), or one line and exit 2 if it cannot bind."""
        from .admin import serve_in_thread

        addr = self.settings.metrics_addr
        if addr is None:
            return
        try:
            self.admin = serve_in_thread(addr, self._admin_app)
        except OSError as error:
            cannot_listen("METRICS_ADDR", addr, error)

    def started(self) -> None:
        self.readiness.started()

    def reload(self, reason: str) -> bool:
        accepted = self.reloader.reload(reason)
        if accepted and self.prober is not None:
            self.prober.update(self.reloader.current)
        return accepted

    def probe(self, publish: Callable[[HealthState], None],
              ejections: Counter | None = None, forks: bool = False) -> None:
        """Start the active health checks of the routes in use (and of every reload's);
        each new set of verdicts goes to ``publish``.

        :param ejections: the process's ``proxy_upstream_ejections`` counter, if it has
            one already.
        :param forks: this process forks the workers (gunicorn's master): its metrics
            stay out of the registry they inherit (:class:`~wsgiproxy.metrics.HealthMetrics`).
        """
        from prometheus_client import REGISTRY

        from ..health import Prober
        from ..metrics import HealthMetrics

        metrics = HealthMetrics(None if forks else REGISTRY, ejections=ejections)
        self.prober = Prober(self.settings, publish, metrics)
        self.prober.update(self.reloader.current)

    def watch(self, changed: Callable[[], object]) -> None:
        """Call ``changed`` whenever the routes file's content changes, every
        CONFIG_WATCH_SECONDS (0: never), from a daemon thread."""
        from ..reload import watch

        interval = self.settings.config_watch_seconds
        if not interval:
            return
        threading.Thread(target=watch, name="wsgiproxy-routes-watch", daemon=True,
                         args=(self.settings.configuration_filename, interval, changed,
                               time.sleep, self._stopped.is_set,
                               lambda: self.reloader.digest)).start()

    def shutting_down(self) -> None:
        """From now on ``/readyz`` is 503: load balancers stop sending first."""
        self.readiness.shutting_down()

    def stop(self) -> None:
        self._stopped.set()
        if self.prober is not None:
            self.prober.stop()
        if self.admin is not None:
            self.admin.shutdown()
            self.admin.server_close()

    def close_admin_socket(self) -> None:
        """In a forked child: let go of the master's metrics socket."""
        if self.admin is not None:
            self.admin.socket.close()


def listening_line(addresses: Iterable[str], server: str, metrics: tuple[str, int] | None,
                   services: int) -> str:
    """The start-up line, the same under both servers."""
    return (f"wsgiproxy listening on {', '.join(addresses)} ({server}), "
            f"{plural(services, 'service')}; metrics on {metrics_url(metrics)}")


def plural(count: int, noun: str) -> str:
    """``1 service``, ``2 services``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
