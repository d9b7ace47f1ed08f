"""gunicorn integration: the worker class and the server hooks ``gunicorn.conf.py``
installs, so that ``gunicorn -k gevent wsgiproxy:app`` run from the project root (or
the image's working directory, where gunicorn finds that file by itself) is the whole
product.

In the master (:class:`Hooks`):

* ``on_starting`` checks the settings and the routes file, that the proxy's port and
  METRICS_ADDR are free (one line and exit 2 otherwise), and that the worker is
  gevent's (``-k gevent`` is run as this module's :class:`GeventWorker`); empties
  PROMETHEUS_MULTIPROC_DIR; starts the one metrics/health server; keeps the accepted
  routes where workers load them from; takes over SIGHUP.
* SIGHUP, or a change of the routes file's content (a watcher thread, every
  CONFIG_WATCH_SECONDS), reloads the routes: a bad file is refused with one line and
  the workers keep what they serve; a good one is kept and the workers are told
  (SIGHUP to each) to load it in place: their connections, ejected hosts and cached
  entries stay. gunicorn's own reload (new workers, config file read again) would
  lose those, and a bad file would have stopped the master.
* ``/readyz`` is 200 only while a worker that has loaded the app is alive; SIGTERM,
  SIGINT and SIGQUIT turn it 503 before gunicorn acts on them. ``child_exit`` marks a
  dead worker's metrics files and readiness.
* ``/metrics`` sums the workers' metrics and adds ``process_*`` of each process,
  labelled ``pid`` and ``role``.

In each worker, :class:`GeventWorker` is gunicorn's gevent worker that, at shutdown,
closes keep-alive connections waiting for their next request (gunicorn waits for every
connection to end, and an idle one ends only after ``keepalive`` seconds: a stop would
take the whole graceful timeout whenever a client kept a connection open), and
:func:`adapt_gunicorn` runs before it loads the app:

* Requests gunicorn's parser rejects (bad request line, duplicated Content-Length,
  header too large, ...) are answered with the proxy's JSON error instead of gunicorn's
  HTML page; gunicorn still decides the status.
* gunicorn drops an app's ``Date`` and ``Server`` (``gunicorn.util.hop_headers``) and
  writes its own. The host's ``Date`` matters (a cached answer must carry the stored
  ``Date`` with its ``Age``, RFC 9111 §4), so the proxy's response class keeps the
  host's ``Date`` and ``Server``, writes gunicorn's ``Date`` only when the host sent
  none, and never advertises gunicorn in ``Server``. It also honours an app's
  ``Connection: close`` (gunicorn drops it as hop-by-hop), which the proxy sends when
  it answers without reading the request body.
* gunicorn sends a response's head and its body in two ``sendall`` calls, each a
  gevent socket operation plus two system calls. A response with a known length up to
  64 KiB goes out in one; longer and streamed responses still get their head at once.

* gunicorn takes a chunk size of any number of hex digits and then waits for that many
  bytes; more than 16 digits (2^64) is refused, as pywsgi does.

These are replacements of gunicorn module attributes in the worker process, made before
it serves: gunicorn offers no hook for them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn import util as gunicorn_util
from gunicorn.http import body as gunicorn_body
from gunicorn.http import errors as gunicorn_errors
from gunicorn.http import message as gunicorn_message
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from ..errors import ConfigError, error_for_status, raw_error_response
from ..logs import configure_logging
from ..routes_file import load_routes
from . import (
    cannot_listen,
    check_can_listen,
    end_idle_connection,
    load_config_or_exit,
    metrics_url,
)

if TYPE_CHECKING:
    import socket
    from wsgiref.simple_server import WSGIServer

    from ..handler import ProxyApp
    from ..reload import RoutesReloader
    from .admin import Readiness

__all__ = ["GeventWorker", "Hooks", "ProxyResponse", "adapt_gunicorn"]

logger = logging.getLogger(__name__)


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, writing the proxy's JSON error instead of HTML."""
    gunicorn_util.write_nonblock(
        sock, raw_error_response(error_for_status(status_int, mesg or reason)))


class ProxyResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, keeping the host's ``Date`` and ``Server``, honouring the
    app's ``Connection: close``, and sending a small response in one ``send``."""

    _app_date = False
    _pending_head = b""
    headers_sent: bool

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        super().process_headers(headers)  # validates every header, drops some
        if self.status_code == 101:
            self.must_close = True  # after a tunnel nothing on the connection is HTTP
        for name, value in headers:
            lname = name.lower()
            if lname in ("date", "server"):
                self.headers.append((name, value.strip(" \t")))
                self._app_date = self._app_date or lname == "date"
            elif lname == "connection" and "close" in value.lower():
                self.must_close = True

    def default_headers(self) -> list[str]:
        return [line for line in super().default_headers()
                if not line.startswith("Server:")
                and not (self._app_date and line.startswith("Date:"))]

    def send_headers(self) -> None:
        length = self.response_length
        if self.headers_sent or self.chunked or length is None or length > 65536:
            super().send_headers()
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._pending_head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True  # for gunicorn's bookkeeping; written with the body

    def _emit_body(self, data: bytes) -> None:
        head, self._pending_head = self._pending_head, b""
        if head:
            self.sock.sendall(head + data)
        else:
            super()._emit_body(data)

    def close(self) -> None:
        if not self.headers_sent:  # no body was written: gunicorn makes the head now
            self.send_headers()
        head, self._pending_head = self._pending_head, b""
        if head:  # no body came (HEAD, 204, 304, an empty body)
            self.sock.sendall(head)
        super().close()

    def sendfile(self, respiter: Any) -> bool:
        return False  # never used by the proxy; it would overtake a pending head


class StrictChunkedReader(gunicorn_body.ChunkedReader):  # type: ignore[misc]
    """gunicorn's chunked-body reader, refusing a chunk size of more than 16 hex digits
    (as pywsgi does) instead of waiting for more bytes than any body could have."""

    def parse_chunk_size(self, unreader: Any, data: Any = None) -> Any:
        size, rest = super().parse_chunk_size(unreader, data)
        if size >= 1 << 64:
            raise gunicorn_errors.InvalidChunkSize(b"chunk size over 16 hex digits")
        return size, rest


def adapt_gunicorn() -> None:
    """Install the JSON error writer, the proxy's response class and the strict chunk
    reader in this process."""
    gunicorn_wsgi.Response = ProxyResponse
    gunicorn_util.write_error = _write_json_error
    gunicorn_message.ChunkedReader = StrictChunkedReader


class GeventWorker(_GunicornGeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, closing idle keep-alive connections when it stops."""

    def init_process(self) -> None:
        self._busy: dict[socket.socket, bool] = {}  # open connection -> in a request
        adapt_gunicorn()  # before super() loads the app and starts serving
        super().init_process()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self._busy[client] = False
        try:
            super().handle(listener, client, addr)
        finally:
            self._busy.pop(client, None)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket,
                       addr: Any) -> Any:
        self._busy[sock] = True
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if sock in self._busy:
                self._busy[sock] = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # alive = False: new requests get Connection: close
        gevent.spawn(self._close_idle)

    def _close_idle(self) -> None:
        while self._busy:
            for sock, busy in list(self._busy.items()):
                if not busy:
                    end_idle_connection(sock)
            gevent.sleep(0.05)


# -- hooks ------------------------------------------------------------------------------
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
        self.admin: WSGIServer | None = None
        self.readiness: Readiness | None = None
        self.reloader: RoutesReloader | None = None
        self._file_changed = False

    # -- master --------------------------------------------------------------------------
    def on_starting(self, server: Any) -> None:
        from ..metrics import ReloadMetrics, exposition
        from ..reload import RoutesReloader
        from .admin import AdminApp, Readiness, serve_in_thread

        self.server = server
        self._use_our_worker(server)
        settings, routes = self.settings, self.config.routes
        inherited = "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ
        for address in server.cfg.address:
            if isinstance(address, tuple) and not inherited:
                check_can_listen("the proxy", address)
        self._empty_multiprocess_dir()
        self.runtime = Path(tempfile.mkdtemp(prefix="wsgiproxy-"))
        self._keep(self.config.routes_text)
        self.readiness = Readiness(serving=self._a_worker_serves)
        self.reloader = RoutesReloader(settings.configuration_filename, routes,
                                       accept=self._accept, metrics=ReloadMetrics())
        if settings.metrics_addr:
            app = AdminApp(self.readiness, lambda: exposition(processes=self._processes))
            try:
                self.admin = serve_in_thread(settings.metrics_addr, app)
            except OSError as error:
                cannot_listen("METRICS_ADDR", settings.metrics_addr, error)
        server.handle_hup = self._handle_hup
        server.handle_term = self._not_ready_then(server.handle_term)
        server.handle_int = self._not_ready_then(server.handle_int)
        server.handle_quit = self._not_ready_then(server.handle_quit)

    def when_ready(self, server: Any) -> None:
        settings = self.settings
        addresses = ", ".join(f"http://{a[0]}:{a[1]}" if isinstance(a, tuple) else str(a)
                              for a in server.cfg.address)
        server.log.info("wsgiproxy listening on %s (%d gevent workers%s); metrics on %s",
                        addresses, server.num_workers,
                        ", a SO_REUSEPORT socket each" if server.cfg.reuse_port else "",
                        metrics_url(settings.metrics_addr))
        if settings.config_watch_seconds:
            threading.Thread(target=self._watch, name="wsgiproxy-routes-watch",
                             daemon=True).start()

    def child_exit(self, server: Any, worker: Any) -> None:
        if self.runtime is not None:
            (self.runtime / f"ready-{worker.pid}").unlink(missing_ok=True)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    def on_exit(self, server: Any) -> None:
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)

    @staticmethod
    def _use_our_worker(server: Any) -> None:
        """``-k gevent`` means this module's :class:`GeventWorker`; nothing else runs
        the proxy (it needs a greenlet per request)."""
        if server.worker_class is _GunicornGeventWorker:
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

    def _keep(self, text: str) -> None:
        staging = self.accepted_routes.with_suffix(".new")
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, self.accepted_routes)  # a worker reads old or new, never half

    def _accept(self, routes: Any, text: str) -> None:
        self._keep(text)
        for pid in self._ready_workers():
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    def _handle_hup(self) -> None:
        """SIGHUP in the master (gunicorn calls it from its main loop)."""
        assert self.reloader is not None
        self.server.log.reopen_files()  # what gunicorn's HUP also does: log rotation
        reason, self._file_changed = ("file changed" if self._file_changed else "SIGHUP"), False
        self.reloader.reload(reason)

    def _watch(self) -> None:
        from ..reload import watch

        settings = self.settings

        def changed() -> None:
            self._file_changed = True
            os.kill(os.getpid(), signal.SIGHUP)  # reload in gunicorn's main loop

        watch(settings.configuration_filename, settings.config_watch_seconds, changed,
              time.sleep, lambda: False)

    def _not_ready_then(self, handle: Any) -> Any:
        def handle_signal() -> None:
            assert self.readiness is not None
            self.readiness.shutting_down()
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
        if self.admin is not None:
            self.admin.socket.close()  # the master's; a worker must not hold it open
        # The app is built from the settings in the environment: point it at the routes
        # the master accepted, never at a file that may have been edited since.
        os.environ["CONFIGURATION_FILENAME"] = str(self.accepted_routes)

    def post_worker_init(self, worker: Any) -> None:
        """The app is loaded: reload on SIGHUP from now on, and say this worker serves."""
        from ..handler import ProxyApp

        app = worker.wsgi
        if isinstance(app, ProxyApp):  # the benchmark runs a hello-world app this way too
            gevent.signal_handler(signal.SIGHUP, self._reload_worker, app)
        (self.accepted_routes.parent / f"ready-{os.getpid()}").touch()
        if isinstance(app, ProxyApp):
            # Routes accepted while this worker was booting: no SIGHUP reached it for them.
            self._reload_worker(app)

    def _reload_worker(self, app: ProxyApp) -> None:
        try:
            routes = load_routes(self.accepted_routes)
        except ConfigError as error:  # the master accepted it: only a vanished file
            logger.error("worker %d: routes not reloaded: %s", os.getpid(), error)
            return
        app.reload(routes)
        logger.debug("worker %d: serving %d services", os.getpid(), len(routes.services))

    def worker_exit(self, server: Any, worker: Any) -> None:
        from ..handler import ProxyApp

        app = getattr(worker, "wsgi", None)  # unset when the app failed to load
        if isinstance(app, ProxyApp):
            app.close()  # the access-log lines still buffered, the upstream connections
