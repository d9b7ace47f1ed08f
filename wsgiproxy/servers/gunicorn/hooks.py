"""gunicorn's server hooks, as ``gunicorn.conf.py`` installs them: the master runs the
instance's :class:`~wsgiproxy.servers.lifecycle.ControlPlane`, the workers serve.

In the master:

* when gunicorn reads its config file, the settings and the routes file are checked
  (one line and exit 2 otherwise); ``on_starting`` checks that the proxy's port and
  METRICS_ADDR are free and that the worker is gevent's (``-k gevent`` is run as the
  proxy's :class:`~.worker.GeventWorker`), empties PROMETHEUS_MULTIPROC_DIR, starts
  the one metrics/health server, keeps the accepted routes where workers load them
  from and takes over SIGHUP;
* SIGHUP, or a change of the routes file's content, reloads the routes: a bad file is
  refused with one line and the workers keep what they serve; a good one is kept and
  the workers are told (SIGHUP to each) to load it in place: their connections, ejected
  hosts and cached entries stay. gunicorn's own reload (new workers, config file read
  again) would lose those, and a bad file would have stopped the master;
* ``/readyz`` is 200 only while a worker that has loaded the app is alive; SIGTERM,
  SIGINT and SIGQUIT turn it 503 before gunicorn acts on them; ``child_exit`` marks a
  dead worker's metrics files and readiness;
* ``/metrics`` sums the workers' metrics and adds ``process_*`` of each process,
  labelled ``pid`` and ``role``;
* the active health checks (docs/health.md) are probed here, once for all workers, and
  the verdicts written to ``health.json`` in the runtime directory.

In each worker, ``post_worker_init`` finds the proxy apps the worker built
(:meth:`wsgiproxy.handler.ProxyApp.instances`: a WSGI middleware wrapped around
``wsgiproxy:app`` still reloads) and reloads them on SIGHUP, and starts a greenlet that
takes new health verdicts from ``health.json`` into their balancers (it looks once a
second, and reads the file only when it changed).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent

from ...errors import ConfigError
from ...health.state import READ_EVERY_SECONDS, HealthFile, apply_to_apps
from ...logs import configure_logging
from ...routes_file import load_routes
from ..lifecycle import (
    ControlPlane,
    check_can_listen,
    listening_line,
    load_config_or_exit,
    plural,
)
from .worker import GeventWorker, GunicornGeventWorker

if TYPE_CHECKING:
    from ...routes_file import Routes

__all__ = ["Hooks"]

logger = logging.getLogger(__name__)


class Hooks:
    """gunicorn's server hooks, and the master's state between them.

    ``gunicorn.conf.py`` makes one and names its methods as the hooks::

        hooks = Hooks()
        on_starting, when_ready, post_fork = hooks.on_starting, hooks.when_ready, ...

    Methods named ``post_fork``, ``post_worker_init`` and ``worker_exit`` run in a
    worker; the others in the master.
    """

    def __init__(self) -> None:
        #: Checked when gunicorn reads its config file: a bad setting or routes file is
        #: one line and exit 2 before gunicorn has started anything.
        self.config = load_config_or_exit()
        self.settings = self.config.settings
        configure_logging(self.settings.log_level)  # the master's lines: reloads, readiness
        self.server: Any = None  # gunicorn's Arbiter
        self.runtime: Path | None = None  # ready markers and the accepted routes
        self.control: ControlPlane | None = None
        self._file_changed = False
        self._health_file: HealthFile | None = None

    # -- master --------------------------------------------------------------------------
    def on_starting(self, server: Any) -> None:
        from ...metrics import exposition

        self.server = server
        logging.getLogger("gunicorn.error").addFilter(self._gunicorn_lines)
        self._use_our_worker(server)
        inherited = "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ
        for address in server.cfg.address:
            if isinstance(address, tuple) and not inherited:
                check_can_listen("the proxy", address)
        self._empty_multiprocess_dir()
        self.runtime = Path(tempfile.mkdtemp(prefix="wsgiproxy-"))
        self._keep(self.config.routes_text)
        self.control = ControlPlane(self.config, accept=self._accept,
                                    collect=lambda: exposition(processes=self._processes),
                                    serving=self._a_worker_serves)
        self.control.serve_admin()
        server.handle_hup = self._handle_hup
        server.handle_term = self._not_ready_then(server.handle_term)
        server.handle_int = self._not_ready_then(server.handle_int)
        server.handle_quit = self._not_ready_then(server.handle_quit)

    @staticmethod
    def _addresses(server: Any) -> list[str]:
        return [f"http://{a[0]}:{a[1]}" if isinstance(a, tuple) else str(a)
                for a in server.cfg.address]

    def _gunicorn_lines(self, record: logging.LogRecord) -> bool:
        """gunicorn's own lines, where they would mislead (docs/running.md): with a
        socket per worker the master listens on nothing and would log ``Listening at:
        (pid)``; a reload the file watch asked for is a SIGHUP the master sends itself,
        which is not news ("routes reloaded (file changed)" follows)."""
        args = record.args
        if record.msg == "Listening at: %s (%s)" and isinstance(args, tuple) and not args[0]:
            record.args = (", ".join(self._addresses(self.server)), args[1])
        elif record.msg == "Handling signal: %s" and args == ("hup",) and self._file_changed:
            return False
        return True

    def when_ready(self, server: Any) -> None:
        addresses = self._addresses(server)
        sockets = ", a SO_REUSEPORT socket each" if server.cfg.reuse_port else ""
        server.log.info("%s", listening_line(
            addresses, f"{plural(server.num_workers, 'gevent worker')}{sockets}",
            self.settings.metrics_addr, len(self.config.routes.services)))
        assert self.control is not None
        self.control.watch(self._file_change)
        self.control.probe(self.health_file.write, forks=True)

    def child_exit(self, server: Any, worker: Any) -> None:
        if self.runtime is not None:
            (self.runtime / f"ready-{worker.pid}").unlink(missing_ok=True)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    def on_exit(self, server: Any) -> None:
        if self.control is not None:
            self.control.stop()
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)

    @staticmethod
    def _use_our_worker(server: Any) -> None:
        """``-k gevent`` means the proxy's :class:`GeventWorker`; nothing else runs the
        proxy (it needs a greenlet per request)."""
        if server.worker_class is GunicornGeventWorker:
            server.worker_class = GeventWorker
        elif not issubclass(server.worker_class, GeventWorker):
            print(f"wsgiproxy: needs gunicorn's gevent worker (-k gevent), not "
                  f"{server.cfg.worker_class_str!r}", file=sys.stderr)
            raise SystemExit(2)

    @staticmethod
    def _empty_multiprocess_dir() -> None:
        """Files of an earlier run in PROMETHEUS_MULTIPROC_DIR would be summed in."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            path = Path(directory)
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):
                stale.unlink()

    @property
    def accepted_routes(self) -> Path:
        """Where workers load routes from: the last routes file the master accepted, so
        that a worker (re)started after a bad edit still boots, on the good routes."""
        assert self.runtime is not None
        return self.runtime / "routes.yaml"

    @property
    def health_file(self) -> HealthFile:
        """The active checks' verdicts, as the master writes them for its workers."""
        if self._health_file is None:
            self._health_file = HealthFile(self.accepted_routes.parent / "health.json")
        return self._health_file

    def _keep(self, text: str) -> None:
        staging = self.accepted_routes.with_suffix(".new")
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, self.accepted_routes)  # a worker reads old or new, never half

    def _accept(self, routes: Routes, text: str) -> None:
        self._keep(text)
        for pid in self._ready_workers():
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    def _handle_hup(self) -> None:
        """SIGHUP in the master (gunicorn calls it from its main loop)."""
        assert self.control is not None
        self.server.log.reopen_files()  # what gunicorn's HUP also does: log rotation
        reason, self._file_changed = ("file changed" if self._file_changed else "SIGHUP"), False
        self.control.reload(reason)

    def _file_change(self) -> None:
        """From the watcher thread: reload in gunicorn's main loop, as for SIGHUP."""
        self._file_changed = True
        os.kill(os.getpid(), signal.SIGHUP)

    def _not_ready_then(self, handle: Any) -> Any:
        def handle_signal() -> None:
            assert self.control is not None
            self.control.shutting_down()
            handle()
        return handle_signal

    def _workers(self) -> list[int]:
        for _ in range(3):  # gunicorn's main loop may change the dict as we copy it
            try:
                return list(self.server.WORKERS)
            except RuntimeError:
                continue
        return []

    def _ready_workers(self) -> list[int]:
        runtime = self.runtime
        assert runtime is not None
        return [pid for pid in self._workers() if (runtime / f"ready-{pid}").exists()]

    def _a_worker_serves(self) -> bool:
        return bool(self._ready_workers())

    def _processes(self) -> list[tuple[int, str]]:
        return [(os.getpid(), "master")] + [(pid, "worker") for pid in self._workers()]

    # -- workers -------------------------------------------------------------------------
    def post_fork(self, server: Any, worker: Any) -> None:
        if self.control is not None:
            self.control.close_admin_socket()  # the master's; a worker must not hold it
        # The app is built from the settings in the environment: point it at the routes
        # the master accepted, never at a file that may have been edited since.
        os.environ["CONFIGURATION_FILENAME"] = str(self.accepted_routes)

    def post_worker_init(self, worker: Any) -> None:
        """The app is loaded: reload on SIGHUP from now on, and say this worker serves."""
        # Always ours: gunicorn's own SIGHUP handler would end the worker. The apps are
        # looked up at each reload: a middleware may build the proxy app lazily.
        gevent.signal_handler(signal.SIGHUP, self._reload_worker)
        (self.accepted_routes.parent / f"ready-{os.getpid()}").touch()
        # Routes accepted while this worker was booting: no SIGHUP reached it for them.
        self._reload_worker()
        gevent.spawn(self._follow_health)

    def _follow_health(self) -> None:
        """Take the master's health verdicts into this worker's balancers as they come."""
        health = self.health_file
        while True:
            if health.read_if_changed():
                apply_to_apps(health.state)
            gevent.sleep(READ_EVERY_SECONDS)

    def _reload_worker(self) -> None:
        from ...handler import ProxyApp

        apps = ProxyApp.instances()  # none when gunicorn serves another app (the bench)
        if not apps:
            return
        try:
            routes = load_routes(self.accepted_routes)
        except ConfigError as error:  # the master accepted it: only a vanished file
            logger.error("worker %d: routes not reloaded: %s", os.getpid(), error)
            return
        for app in apps:
            app.reload(routes)
        apply_to_apps(self.health_file.state)  # a changed service's new balancer
        logger.debug("worker %d: serving %d services", os.getpid(), len(routes.services))

    def worker_exit(self, server: Any, worker: Any) -> None:
        from ...handler import ProxyApp

        for app in ProxyApp.instances():
            app.close()  # the access-log lines still buffered, the upstream connections
