"""gunicorn integration: the worker class and server hooks ``config/gunicorn.conf.py``
uses, and the two places where gunicorn's own answers would differ from the proxy's.

In the master (:class:`Hooks`):

* ``on_starting`` empties PROMETHEUS_MULTIPROC_DIR (files of an earlier run would be
  summed in); ``child_exit`` marks a dead worker's files (its live gauges go away).
* ``when_ready`` starts the one metrics/health server (in a thread of the master)
  and makes SIGTERM, SIGINT and SIGQUIT flip ``/readyz`` to 503 before anything else.
* ``post_fork`` closes that server's socket in each worker.

In each worker, :class:`GeventWorker` is gunicorn's gevent worker that, at shutdown,
closes keep-alive connections waiting for their next request. gunicorn waits for every
connection to end, and an idle one ends only after ``keepalive`` seconds: without this a
stop would take the whole graceful timeout whenever a client kept a connection open.

:func:`adapt_gunicorn` runs in each worker before it loads the app
(:meth:`GeventWorker.init_process`):

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

Both are process-wide replacements of a gunicorn module attribute, made once per worker
before it serves: gunicorn offers no hook for either.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn import util as gunicorn_util
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from ..errors import error_for_status, raw_error_response
from . import load_config_or_exit

if TYPE_CHECKING:
    from collections.abc import Callable
    from wsgiref.simple_server import WSGIServer

__all__ = ["GeventWorker", "Hooks", "ProxyResponse", "adapt_gunicorn"]


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


def adapt_gunicorn() -> None:
    """Install the JSON error writer and the proxy's response class in this process."""
    gunicorn_wsgi.Response = ProxyResponse
    gunicorn_util.write_error = _write_json_error


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
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            gevent.sleep(0.05)


# -- hooks ------------------------------------------------------------------------------
class Hooks:
    """gunicorn's server hooks, and the master's state between them (the metrics server).

    ``gunicorn.conf.py`` makes one and names its methods as the hooks::

        hooks = Hooks()
        on_starting, when_ready, post_fork = hooks.on_starting, hooks.when_ready, ...
    """

    def __init__(self) -> None:
        self.admin: WSGIServer | None = None

    def on_starting(self, server: Any) -> None:
        """Empty PROMETHEUS_MULTIPROC_DIR: files of an earlier run would be summed in."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            path = Path(directory)
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):
                stale.unlink()

    def when_ready(self, server: Any) -> None:
        """Start the one metrics/health server; SIGTERM, SIGINT and SIGQUIT flip
        ``/readyz`` to 503 before gunicorn acts on them."""
        from ..metrics import exposition
        from .admin import AdminApp, Readiness, serve_in_thread

        settings, _ = load_config_or_exit()
        readiness = Readiness()
        if settings.metrics_addr:
            self.admin = serve_in_thread(settings.metrics_addr, AdminApp(readiness, exposition))
            server.log.info("metrics and health on http://%s:%d/", *settings.metrics_addr)

        def flip_then(original: Callable[[], None]) -> Callable[[], None]:
            def handle() -> None:
                readiness.shutting_down()
                original()
            return handle

        server.handle_term = flip_then(server.handle_term)
        server.handle_int = flip_then(server.handle_int)
        server.handle_quit = flip_then(server.handle_quit)

    def post_fork(self, server: Any, worker: Any) -> None:
        if self.admin is not None:
            self.admin.socket.close()  # the master's; a worker must not hold it open

    def worker_exit(self, server: Any, worker: Any) -> None:
        from ..handler import ProxyApp

        app = getattr(worker, "wsgi", None)  # unset when the app failed to load
        if isinstance(app, ProxyApp):
            app.close()  # the access-log lines still buffered, the upstream connections

    def child_exit(self, server: Any, worker: Any) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
