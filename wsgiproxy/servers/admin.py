"""The metrics and health server on METRICS_ADDR, separate from the proxy's port.

* ``GET /metrics`` — Prometheus text format (:func:`wsgiproxy.metrics.exposition`).
* ``GET /healthz`` — 200 while the process is alive (a liveness probe).
* ``GET /readyz`` — 200 while requests can be served, 503 until then, whenever they
  cannot (under gunicorn: no worker has booted, or all have crashed and are
  restarting) and from the moment shutdown begins (so the load balancer stops sending
  before the listener closes).

It runs in a thread of the process that owns the instance's control plane
(:class:`~wsgiproxy.servers.lifecycle.ControlPlane`): under ``python -m wsgiproxy``
that thread is a greenlet (the process is monkey-patched); under gunicorn it is a real
thread of the master (which is not), so there is exactly one metrics server however
many workers there are.
"""

from __future__ import annotations

import json
import logging
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import MethodNotAllowed, NotFound, ProxyError, error_response

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["AdminApp", "Readiness", "serve_in_thread"]

logger = logging.getLogger(__name__)


class Readiness:
    """Whether the process should be sent traffic, and why not.

    :param serving: whether requests can be served now (under gunicorn: a worker has
        booted and is alive); None means as soon as :meth:`started` is called.
    """

    def __init__(self, serving: Callable[[], bool] | None = None) -> None:
        self._serving = serving
        self._started = threading.Event()
        self._stopping = threading.Event()

    def started(self) -> None:
        self._started.set()

    def problem(self) -> str | None:
        """None when ready; otherwise what stands in the way."""
        if self._stopping.is_set():
            return "shutting down"
        if self._serving is not None:
            return None if self._serving() else "no worker is serving"
        return None if self._started.is_set() else "starting"

    def shutting_down(self) -> None:
        if not self._stopping.is_set():
            logger.info("shutting down: /readyz now answers 503")
        self._stopping.set()


class AdminApp:
    """WSGI app of the metrics/health server.

    :param readiness: flipped when shutdown begins.
    :param collect: returns the metrics text (summed over workers under gunicorn).
    """

    def __init__(self, readiness: Readiness, collect: Callable[[], bytes]) -> None:
        self.readiness = readiness
        self.collect = collect

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self._error(start_response, MethodNotAllowed("only GET and HEAD"),
                               [("Allow", "GET, HEAD")])
        if path == "/metrics":
            body = self.collect()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/healthz":
            return self._answer(start_response, "200 OK", {"status": "alive"})
        if path == "/readyz":
            problem = self.readiness.problem()
            if problem is None:
                return self._answer(start_response, "200 OK", {"status": "ready"})
            return self._answer(start_response, "503 Service Unavailable",
                                {"status": problem})
        return self._error(start_response,
                           NotFound("not found: try /metrics, /healthz or /readyz"))

    @staticmethod
    def _answer(start_response: StartResponse, status: str,
                data: dict[str, str]) -> list[bytes]:
        body = json.dumps(data).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    @staticmethod
    def _error(start_response: StartResponse, error: ProxyError,
               extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        rendered = error_response(error)
        start_response(rendered.status, [*rendered.headers, *(extra or [])])
        return [rendered.body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # SO_REUSEADDR (for TIME_WAIT), never SO_REUSEPORT: a port another process listens
    # on must fail to bind, not be shared.
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_in_thread(addr: tuple[str, int], app: AdminApp) -> WSGIServer:
    """Serve ``app`` from a daemon thread (for gunicorn's master); returns the server.
    Raises ``OSError`` when ``addr`` cannot be bound."""
    server = make_server(addr[0], addr[1], app, _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="wsgiproxy-admin",
                     daemon=True).start()
    return server
