"""``python -m wsgiproxy``: the proxy on gevent's ``pywsgi`` server.

pywsgi's request parser is lenient in ways a proxy cannot afford, because the proxy's
reading of a request is what the host will read too (request smuggling):

* a duplicated ``Content-Length`` is accepted, the first value used and the rest of the
  body read as the next request; ``Content-Length`` beside ``Transfer-Encoding`` is
  silently dropped; ``+5`` parses as 5;
* a bare LF ends a line; ``Name : value`` and folded (obs-fold) lines are accepted;
* the raw request target is not passed on (``PATH_INFO`` is decoded: ``%2F`` → ``/``);
* a chunk extension is not checked at all (``5;\x01`` is a chunk of 5 bytes).

:class:`ProxyHandler` parses the request line and headers itself, as strictly as
gunicorn 27 does (RFC 9112), answers every rejection with the proxy's JSON error, passes
the raw target as ``RAW_URI`` (gunicorn's name) and turns on ``TCP_NODELAY`` so a small
response is not held back by Nagle's algorithm waiting for the client's delayed ACK.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Final

import gevent
import gevent.event
from gevent import pywsgi

from .. import __version__
from ..errors import (
    BadRequest,
    HeadersTooLarge,
    InternalError,
    NotImplementedByProxy,
    ProxyError,
    URITooLong,
    error_for_status,
    raw_error_response,
)
from ..headers import FIELD_VALUE, MAX_HEADER_BYTES, MAX_HEADER_LINE_BYTES
from . import cannot_listen, end_idle_connection, load_config_or_exit, metrics_url

if TYPE_CHECKING:
    from ..routes_file import Endpoint

__all__ = ["ProxyHandler", "main", "serve"]

logger = logging.getLogger(__name__)

MAX_REQUEST_LINE: Final = 8192
_TOO_LONG: Final = "\x00too-long\r\n"  # read_requestline's marker, never a real line

# RFC 9112 §3: method SP request-target SP HTTP-version CRLF, nothing else.
_REQUEST_LINE: Final = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/1\.[01])\r\n")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, at most 16 hex digits (as pywsgi), with
# chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ).
_TOKEN_B: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_B: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*" + _TOKEN_B
                                + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN_B + rb"|" + _QUOTED_B
                                + rb"))?)*)\r\n")
_MAX_CHUNK_LINE: Final = 4096


class StrictInput(pywsgi.Input):  # type: ignore[misc]
    """pywsgi's request body, with each chunk-size line checked whole (see the module
    doc). It replaces ``Input``'s private chunk-size reader, which reads byte by byte
    and skips whatever follows a ``;``."""

    def _Input__read_chunk_length(self, rfile: Any) -> int:  # pywsgi calls it by this name
        line = rfile.readline(_MAX_CHUNK_LINE + 1)
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            self._chunked_input_error = True
            raise pywsgi._InvalidClientInput(f"invalid chunk size line {line[:60]!r}")
        size = int(match.group(1), 16)
        if size == 0:
            while self._Input__read_chunk_trailer(rfile):
                pass
        return size


class ProxyHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """A pywsgi handler that parses requests as strictly as the proxy needs."""

    response_use_chunked: bool
    server: ProxyServer
    wsgi_input: Any

    def handle(self) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a unix socket, or already closed
            pass
        self.server.connections.add(self)
        try:
            super().handle()
        finally:
            self.server.connections.discard(self)
            self.server.idle.discard(self)

    def read_requestline(self) -> str:
        if self.server.draining:
            return ""  # shutting down: no further request on this connection
        self.server.idle.add(self)
        try:
            line: bytes = self.rfile.readline(MAX_REQUEST_LINE + 1)
        finally:
            self.server.idle.discard(self)
        if len(line) > MAX_REQUEST_LINE:
            # pywsgi would answer its own plain-text 414; hand read_request a marker
            # so the 414 comes from _handle_client_error, as JSON.
            return _TOO_LONG
        return line.decode("latin-1")

    def read_request(self, raw_requestline: str) -> bool:
        if raw_requestline == _TOO_LONG:
            raise URITooLong("request line is too long")
        match = _REQUEST_LINE.fullmatch(raw_requestline)
        if match is None:
            raise BadRequest(f"invalid request line {raw_requestline.rstrip()[:100]!r}")
        self.requestline = raw_requestline.rstrip("\r\n")
        self.command, self.path, self.request_version = match.groups()
        self.headers = self._read_headers()
        self._check_framing()
        if self.request_version == "HTTP/1.1":
            self.close_connection = self.headers.get("Connection", "").lower() == "close"
        else:
            self.close_connection = self.headers.get("Connection", "").lower() != "keep-alive"
        return True

    def _read_headers(self) -> Any:
        headers = pywsgi.OldMessage()  # what pywsgi's own parser returns
        total = 0
        while True:
            line: bytes = self.rfile.readline(MAX_HEADER_LINE_BYTES + 1)
            if len(line) > MAX_HEADER_LINE_BYTES:
                raise HeadersTooLarge("a header line is over 8 KiB")
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise HeadersTooLarge("request header section is over 64 KiB")
            if line == b"\r\n":
                return headers
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise BadRequest("header line not ended by CRLF")
            if line[:1] in (b" ", b"\t"):
                raise BadRequest("obsolete line folding in headers")
            text = line[:-2].decode("latin-1")
            name, colon, value = text.partition(":")
            if not colon or not _TOKEN.fullmatch(name):
                raise BadRequest(f"invalid header name {name[:60]!r}")
            value = value.strip(" \t")
            if not FIELD_VALUE.fullmatch(value):
                raise BadRequest(f"invalid character in header {name}")
            headers[name] = value

    def _check_framing(self) -> None:
        """RFC 9112 §6: one unambiguous body length, or refuse the request."""
        lengths = self.headers.get_all("Content-Length") or []
        codings = self.headers.get_all("Transfer-Encoding") or []
        if len(lengths) > 1:
            raise BadRequest("duplicated Content-Length")
        if codings:
            if lengths:
                raise BadRequest("both Content-Length and Transfer-Encoding")
            if ",".join(codings).strip(" \t").lower() != "chunked":
                raise NotImplementedByProxy(f"unsupported Transfer-Encoding {codings[0]!r}")
            if self.request_version != "HTTP/1.1":
                raise BadRequest("chunked body in an HTTP/1.0 request")
            self.content_length = None
            return
        if lengths:
            if not (lengths[0].isdigit() and lengths[0].isascii()):
                raise BadRequest(f"invalid Content-Length {lengths[0][:40]!r}")
            self.content_length = int(lengths[0])
        else:
            self.content_length = None

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
        """pywsgi's, with the head and the first body chunk in one send instead of two."""
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header + b": " + value + b"\r\n"
        towrite += b"\r\n"
        if data:
            towrite += (b"%x\r\n%s\r\n" % (len(data), data) if self.response_use_chunked
                        else data)
        self._sendall(towrite)

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
        if self.server.draining and not any(k.lower() == "connection" for k, _ in headers):
            headers = [*headers, ("Connection", "close")]  # tell the client, then close
        return super().start_response(status, headers, exc_info)

    def close_idle(self) -> None:
        """End a keep-alive connection that is waiting for its next request."""
        if self.socket is not None:
            end_idle_connection(self.socket)

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[ProxyHandler] = set()
        self.idle: set[ProxyHandler] = set()
        self.draining = False

    def drain(self, grace: float) -> bool:
        """Stop accepting and wait for in-flight requests; True if all finished in time."""
        self.draining = True
        self.close()  # the listening socket: new connections are refused from now on
        deadline = time.monotonic() + grace
        while self.connections:
            for handler in list(self.idle):
                handler.close_idle()
            if time.monotonic() > deadline:
                logger.warning("graceful timeout: %d connections still open",
                               len(self.connections))
                return False
            gevent.sleep(0.05)
        return True


def serve(app: Any, listen: Endpoint) -> ProxyServer:
    """A started pywsgi server for ``app`` on ``listen``; ``OSError`` if it cannot bind."""
    server = ProxyServer((listen.address, listen.port), app, handler_class=ProxyHandler,
                         log=None, error_log=logger)
    server.start()
    return server


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wsgiproxy",
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
    from ..handler import create_app
    from ..metrics import ReloadMetrics, exposition
    from ..reload import RoutesReloader, watch
    from .admin import AdminApp, Readiness

    args = arguments(argv)
    config = load_config_or_exit()
    settings, routes = config.settings, config.routes
    if args.check_config:
        print(f"ok: {len(routes.services)} services")
        return 0
    app = create_app(settings, routes)
    readiness = Readiness()
    # Before listening: a signal that arrives as soon as the port answers must be
    # handled, not kill the process with the signal's default action.
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    reloader = RoutesReloader(settings.configuration_filename, routes,
                              accept=lambda new, _text: app.reload(new),
                              metrics=ReloadMetrics())
    gevent.signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
    admin = None
    if settings.metrics_addr:
        admin = pywsgi.WSGIServer(settings.metrics_addr, AdminApp(readiness, exposition),
                                  log=None, error_log=logger)
        try:
            admin.start()
        except OSError as error:
            cannot_listen("METRICS_ADDR", settings.metrics_addr, error)
    try:
        server = serve(app, routes.listen)
    except OSError as error:
        cannot_listen("proxy.listen", (routes.listen.address, routes.listen.port), error)
    readiness.started()
    logger.info("wsgiproxy listening on http://%s (pywsgi), %d services, metrics on %s",
                routes.listen, len(routes.services),
                metrics_url(settings.metrics_addr))
    if settings.config_watch_seconds:
        gevent.spawn(watch, settings.configuration_filename, settings.config_watch_seconds,
                     lambda: reloader.reload("file changed"), gevent.sleep, stopping.is_set)
    stopping.wait()
    readiness.shutting_down()
    finished = server.drain(settings.graceful_timeout)
    logger.info("stopped (%s)", "all requests finished" if finished else "graceful timeout")
    if admin is not None:
        admin.stop(timeout=1)
    app.close()
    return 0
