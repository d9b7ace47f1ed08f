"""``python -m wsgiproxy``: the proxy on gevent's ``pywsgi`` server.

pywsgi's request parser is lenient in ways a proxy cannot afford, because the proxy's
reading of a request is what the host will read too (request smuggling):

* a duplicated ``Content-Length`` is accepted, the first value used and the rest of the
  body read as the next request; ``Content-Length`` beside ``Transfer-Encoding`` is
  silently dropped; ``+5`` parses as 5;
* a bare LF ends a line; ``Name : value`` and folded (obs-fold) lines are accepted;
* the raw request target is not passed on (``PATH_INFO`` is decoded: ``%2F`` → ``/``);
* a chunk extension is not checked at all (``5;\x01`` is a chunk of 5 bytes).

:class:`ProxyHandler` parses the request line and headers with :mod:`wsgiproxy.http1`,
as strictly as gunicorn 27 does (RFC 9112), answers every rejection with the proxy's
JSON error, passes the raw target as ``RAW_URI`` (gunicorn's name) and turns on
``TCP_NODELAY`` so a small response is not held back by Nagle's algorithm waiting for
the client's delayed ACK.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Final

import gevent
import gevent.event
import gevent.pool
from gevent import pywsgi

from .. import __version__
from ..errors import (
    BadRequest,
    ClientTimeout,
    InternalError,
    MalformedBody,
    ProxyError,
    URITooLong,
    error_for_status,
    raw_error_response,
)
from ..http1 import (
    head_with_body,
    parse_chunk_line,
    parse_request_line,
    read_fields,
    read_trailer,
    request_framing,
)
from ..limits import MAX_CHUNK_LINE_BYTES, MAX_REQUEST_LINE_BYTES
from .lifecycle import (
    LISTEN_BACKLOG,
    ClientTimeouts,
    Connections,
    ControlPlane,
    cannot_listen,
    count_client_timeout,
    listening_line,
    load_config_or_exit,
    plural,
)

if TYPE_CHECKING:
    from ..routes_file import Endpoint
    from ..settings import Settings

__all__ = ["ProxyHandler", "ProxyServer", "main", "serve"]

logger = logging.getLogger(__name__)

# read_requestline's markers for read_request, never real request lines.
_TOO_LONG: Final = "\x00too-long\r\n"
_TIMED_OUT: Final = "\x00timed-out\r\n"


class StrictInput(pywsgi.Input):  # type: ignore[misc]
    """pywsgi's request body, with each chunk-size line and trailer line checked whole
    (:mod:`wsgiproxy.http1`). It replaces ``Input``'s private readers, which read byte
    by byte, skip whatever follows a ``;`` and wait for a CR after a bare LF."""

    def _Input__read_chunk_length(self, rfile: Any) -> int:  # pywsgi calls it by this name
        try:
            size = parse_chunk_line(rfile.readline(MAX_CHUNK_LINE_BYTES + 1))
            if size == 0:
                read_trailer(rfile.readline)
        except MalformedBody as error:
            self._chunked_input_error = True
            raise pywsgi._InvalidClientInput(error.message) from None
        return size


class ProxyHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """A pywsgi handler that parses requests as strictly as the proxy needs."""

    response_use_chunked: bool
    server: ProxyServer
    wsgi_input: Any
    _head_deadline: gevent.Timeout

    def handle(self) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a unix socket, or already closed
            pass
        connections, sock = self.server.connections, self.socket  # handle() drops it
        connections.opened(sock)
        try:
            super().handle()
        finally:
            connections.closed(sock)

    def read_requestline(self) -> str:
        """Wait up to the keep-alive time for a request to begin (then close quietly),
        then give it CLIENT_HEADER_TIMEOUT_SECONDS for its whole header section."""
        server, sock = self.server, self.socket
        connections = server.connections
        if connections.draining:
            return ""  # shutting down: no further request on this connection
        connections.idle(sock)
        sock.settimeout(server.timeouts.keepalive)
        try:
            if not self.rfile.peek(1):
                return ""  # the client closed
        except OSError:  # the keep-alive time ran out (or the connection broke)
            return ""
        connections.busy(sock)
        self._head_deadline = gevent.Timeout.start_new(
            server.timeouts.header, ClientTimeout("the client took too long to send its "
                                                  "request header section"))
        try:
            line: bytes = self.rfile.readline(MAX_REQUEST_LINE_BYTES + 1)
        except ClientTimeout:
            return _TIMED_OUT
        if len(line) >= MAX_REQUEST_LINE_BYTES:
            # pywsgi would answer its own plain-text 414; hand read_request a marker
            # so the 414 comes from _handle_client_error, as JSON.
            return _TOO_LONG
        return line.decode("latin-1")

    def read_request(self, raw_requestline: str) -> bool:
        try:
            self._read_head(raw_requestline)
        finally:
            self._head_deadline.close()
        # The body (and the response) may pause this long between two reads (writes).
        self.socket.settimeout(self.server.timeouts.body)
        return True

    def _read_head(self, raw_requestline: str) -> None:
        if raw_requestline == _TIMED_OUT:
            raise ClientTimeout("the client took too long to send its request line")
        if raw_requestline == _TOO_LONG:
            raise URITooLong("request line is too long")
        line = parse_request_line(raw_requestline)
        self.requestline = raw_requestline.rstrip("\r\n")
        self.command, self.path, self.request_version = line.method, line.target, line.version
        headers = pywsgi.OldMessage()  # what pywsgi's own parser returns
        for name, value in read_fields(self.rfile.readline):
            headers[name] = value
        self.headers = headers
        framing = request_framing(headers.get_all("Content-Length") or [],
                                  headers.get_all("Transfer-Encoding") or [],
                                  self.request_version)
        self.content_length = framing.length
        connection = headers.get("Connection", "").lower()
        if self.request_version == "HTTP/1.1":
            self.close_connection = connection == "close"
        else:
            self.close_connection = connection != "keep-alive"

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            if self.close_connection:
                # pywsgi would next read and discard the rest of the request body, so a
                # 413 would wait for (and read) the very body it refused. The connection
                # is closing: nothing more of it needs reading.
                body = self.wsgi_input
                body.content_length, body.chunked_input = body.position, False

    def handle_one_request(self) -> Any:
        try:
            return super().handle_one_request()
        finally:
            deadline = getattr(self, "_head_deadline", None)
            if deadline is not None:
                deadline.close()  # whatever ended the request, never let it fire later

    def handle_error(self, kind: Any, error: BaseException, traceback: Any) -> None:
        if isinstance(error, TimeoutError):
            # A client that stopped reading its response (the socket's timeout is
            # CLIENT_BODY_TIMEOUT_SECONDS): drop it and count it, without a traceback.
            logger.info("dropped a client that stopped reading its response: %s",
                        self.client_address)
            count_client_timeout("response")
            self.close_connection = True
            return
        super().handle_error(kind, error, traceback)

    def handle_one_response(self) -> None:
        super().handle_one_response()
        if self.close_connection:
            # pywsgi's handle() ends with a blocking recv() to drain the socket before it
            # closes it; a client waiting for the end of a "Connection: close" response
            # would wait forever. Half-close now: the client sees EOF at once.
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi's, with the head and the first body piece in one send
        (:func:`~wsgiproxy.http1.head_with_body`)."""
        self.headers_sent = True
        self.finalize_headers()
        head = bytearray(b"HTTP/1.1 ")
        head += self.status
        head += b"\r\n"
        for header, value in self.response_headers:
            head += header + b": " + value + b"\r\n"
        head += b"\r\n"
        for piece in head_with_body(bytes(head), data, self.response_use_chunked):
            self._sendall(piece)

    def finalize_headers(self) -> None:
        super().finalize_headers()
        if self.code == 101:
            # After the tunnel nothing on this connection is HTTP: never read it as
            # a next request.
            self.close_connection = True
        if self.command == "HEAD" and self.response_use_chunked:
            # pywsgi would frame a HEAD response as chunked and then write the final
            # "0\r\n\r\n", a body the client does not expect (RFC 9110 §9.3.2): the next
            # response on the connection would start with it.
            self.response_use_chunked = False
            self.response_headers.remove((b"Transfer-Encoding", b"chunked"))

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        if isinstance(ex, ClientTimeout):
            count_client_timeout(ex.phase)
        # pywsgi's own errors (its body reader, for one) are the client's mistakes too.
        error = ex if isinstance(ex, ProxyError) else BadRequest(str(ex) or "bad request")
        logger.info("rejected a request from %s: %s", self.client_address, error.message)
        return str(error.status.value), raw_error_response(error)

    def _send_error_response_if_possible(self, error_code: int) -> None:
        if self.response_length:
            self.close_connection = True
            return
        error = InternalError("internal server error") if error_code >= 500 \
            else error_for_status(error_code, "bad request")
        body = raw_error_response(error)
        try:
            self.socket.sendall(body)
        except OSError:
            pass
        self.close_connection = True

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        draining = self.server.connections.draining
        if draining and not any(k.lower() == "connection" for k, _ in headers):
            headers = [*headers, ("Connection", "close")]  # tell the client, then close
        return super().start_response(status, headers, exc_info)

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        env["RAW_URI"] = self.path
        env["wsgiproxy.socket"] = self.socket  # for a tunnel after a 101 (docs/websocket.md)
        if self.wsgi_input.chunked_input and env["wsgi.input"] is self.wsgi_input:
            self.wsgi_input = env["wsgi.input"] = StrictInput(
                self.rfile, self.content_length, socket=self.wsgi_input.socket,
                chunked_input=True)
        return env


class ProxyServer(pywsgi.WSGIServer):  # type: ignore[misc]
    """pywsgi's server, able to stop gracefully.

    ``WSGIServer.stop(timeout)`` waits for every connection, and an idle keep-alive
    connection only ends when its client closes it: a stop would always run into the
    timeout. :meth:`drain` closes idle connections, lets requests in flight finish (their
    responses say ``Connection: close``) and gives up at the deadline.
    """

    timeouts: ClientTimeouts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections = Connections()

    def drain(self, grace: float) -> bool:
        """Stop accepting and wait for in-flight requests; True if all finished in time."""
        self.close()  # the listening socket: new connections are refused from now on
        return self.connections.drain(grace, gevent.sleep)


def serve(app: Any, listen: Endpoint, settings: Settings) -> ProxyServer:
    """A started pywsgi server for ``app`` on ``listen``; ``OSError`` if it cannot bind.
    It holds at most WORKER_CONNECTIONS connections; more wait in the listen backlog."""
    server = ProxyServer((listen.address, listen.port), app, handler_class=ProxyHandler,
                         log=None, error_log=logger,
                         spawn=gevent.pool.Pool(settings.worker_connections),
                         backlog=LISTEN_BACKLOG)
    server.timeouts = ClientTimeouts.of(settings)
    server.start()
    return server


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wsgiproxy" if sys.argv[0].endswith("wsgiproxy") else "python -m wsgiproxy",
        description="wsgiproxy, an HTTP reverse proxy, on gevent's pywsgi server. Settings "
                    "come from the environment or .env (see docs/settings.md); the routes file "
                    "is CONFIGURATION_FILENAME. SIGHUP reloads the routes file; SIGTERM "
                    "and SIGINT stop it gracefully.")
    parser.add_argument("--check-config", action="store_true",
                        help="check the settings and the routes file, print 'ok: N "
                             "services' and exit 0, or the problem and exit 2")
    parser.add_argument("--version", action="version", version=f"wsgiproxy {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then drain; a bad setting or routes file, or a port
    that is taken, exits 2 with one line."""
    from ..filters.loading import descriptions
    from ..handler import create_app
    from ..health.state import apply_to_apps
    from ..metrics import exposition

    args = arguments(argv)
    config = load_config_or_exit()
    settings, routes = config.settings, config.routes
    if args.check_config:
        print(f"ok: {plural(len(routes.services), 'service')}")
        for line in descriptions(routes):
            print(line)
        return 0
    app = create_app(settings, routes)
    control = ControlPlane(config, accept=lambda new, _text: app.reload(new),
                           collect=exposition)
    # Before listening: a signal that arrives as soon as the port answers must be
    # handled, not kill the process with the signal's default action.
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    gevent.signal_handler(signal.SIGHUP, control.reload, "SIGHUP")
    control.serve_admin()
    try:
        server = serve(app, routes.listen, settings)
    except OSError as error:
        cannot_listen("proxy.listen", (routes.listen.address, routes.listen.port), error)
    control.started()
    # The prober in this process: its verdicts go straight into the app's balancers.
    control.probe(apply_to_apps, None if app.metrics is None else app.metrics.ejections)
    logger.info("%s", listening_line([f"http://{routes.listen}"], "pywsgi",
                                      settings.metrics_addr, len(routes.services)))
    control.watch(lambda: control.reload("file changed"))
    stopping.wait()
    control.shutting_down()
    finished = server.drain(settings.graceful_timeout)
    logger.info("stopped (%s)", "all requests finished" if finished else "graceful timeout")
    control.stop()
    app.close()
    return 0
