"""A small backend to put behind the proxy: ``make demo``, the load test and the benchmark.

Not part of the proxy. Each instance says which one answered (``X-Instance`` header and
``"instance"`` in the JSON), so round-robin can be seen with curl::

    python -m wsgiproxy.sample_backend --port 9001 --name a

Endpoints (any method):

* ``/cacheable`` — JSON, ``Cache-Control: public, max-age=60`` and an ETag;
  ``?max-age=N``, ``&stale-if-error=N`` and ``&stale-while-revalidate=N`` say otherwise;
  ``?cdn-max-age=N``: ``CDN-Cache-Control: max-age=N`` and ``Cache-Control: no-store``
* ``/uncacheable`` — JSON, ``Cache-Control: no-store``
* ``/slow?ms=100`` — answers after that many milliseconds
* ``/large?bytes=N`` — N bytes, streamed in 64 KiB pieces
* ``/status/<code>`` — that status
* ``/echo`` with a WebSocket handshake — a WebSocket echo (``wsgiproxy.sample_websocket``)
* anything else — echoes method, path, query, headers and body size as JSON

docs/try-it.md lists them with examples that go through the demo.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import gevent
import gevent.socket
from gevent import pywsgi

from .sample_websocket import serve_echo

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["EchoingHandler", "SampleBackend", "main"]

_CHUNK = 64 * 1024


def _int_arg(environ: WSGIEnvironment, name: str, default: int) -> int:
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    try:
        return int(values[0]) if values else default
    except ValueError:
        return default


def _cache_control(environ: WSGIEnvironment) -> list[tuple[str, str]]:
    """``Cache-Control: public, max-age=60``, or what the query asks for."""
    cdn = _int_arg(environ, "cdn-max-age", -1)
    if cdn >= 0:  # for shared caches only (RFC 9213): browsers store nothing
        return [("Cache-Control", "no-store"), ("CDN-Cache-Control", f"max-age={cdn}")]
    value = f"public, max-age={_int_arg(environ, 'max-age', 60)}"
    for name in ("stale-if-error", "stale-while-revalidate"):
        seconds = _int_arg(environ, name, -1)
        if seconds >= 0:
            value += f", {name}={seconds}"
    return [("Cache-Control", value)]


class SampleBackend:
    """The WSGI app of one sample instance.

    :param name: reported in every answer, so you can tell instances apart.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        path = environ.get("PATH_INFO", "/")
        base = [("X-Instance", self.name)]
        if path == "/cacheable":
            return self._json(start_response, {"instance": self.name, "cacheable": True},
                              [*base, *_cache_control(environ)], etag=True)
        if path == "/uncacheable":
            return self._json(start_response, {"instance": self.name, "cacheable": False},
                              [*base, ("Cache-Control", "no-store")])
        if path == "/slow":
            gevent.sleep(_int_arg(environ, "ms", 100) / 1000)
            return self._json(start_response, {"instance": self.name, "slow": True},
                              [*base, ("Cache-Control", "no-store")])
        if path == "/large":
            size = _int_arg(environ, "bytes", 1024 * 1024)
            start_response("200 OK", [*base, ("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(size)),
                                      ("Cache-Control", "no-store")])
            return self._bytes(size)
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1]) if path.rsplit("/", 1)[1].isdigit() else 500
            try:
                phrase = HTTPStatus(code).phrase
            except ValueError:
                phrase = "Unknown"
            return self._json(start_response, {"instance": self.name, "status": code},
                              base, status=f"{code} {phrase}")
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        return self._json(start_response, {
            "instance": self.name,
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "query": environ.get("QUERY_STRING", ""),
            "headers": headers,
            "body_bytes": len(body),
        }, [*base, ("Cache-Control", "no-store")])

    @staticmethod
    def _bytes(size: int) -> Iterator[bytes]:
        block = b"x" * _CHUNK
        while size > 0:
            piece = block[:size]
            size -= len(piece)
            yield piece

    @staticmethod
    def _json(start_response: StartResponse, data: dict[str, Any],
              headers: list[tuple[str, str]], *, status: str = "200 OK",
              etag: bool = False) -> list[bytes]:
        out = json.dumps(data).encode()
        headers = [*headers, ("Content-Type", "application/json"),
                   ("Content-Length", str(len(out)))]
        if etag:
            headers.append(("ETag", '"' + hashlib.sha1(out).hexdigest()[:16] + '"'))
        start_response(status, headers)
        return [out]


class EchoingHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler, plus a WebSocket echo on ``/echo``: a WSGI app cannot take its
    connection over, so the handshake is answered here, before the app."""

    def handle_one_response(self) -> None:
        env = self.environ
        key = env.get("HTTP_SEC_WEBSOCKET_KEY")
        if (env.get("PATH_INFO") == "/echo" and key
                and env.get("HTTP_UPGRADE", "").lower() == "websocket"):
            self.status = "101 Switching Protocols"
            serve_echo(self.rfile, self.socket, key,
                       [f"X-Instance: {self.application.name}"])
            self.close_connection = True
            return
        super().handle_one_response()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default=None, help="instance name (default: the port)")
    args = parser.parse_args(argv)
    name = args.name or str(args.port)
    # TCP_NODELAY on the listener (accepted sockets inherit it): pywsgi writes the head
    # and the body in two sends, and Nagle would hold the body for the client's delayed
    # ACK, tens of milliseconds per response.
    listener = gevent.socket.socket()
    listener.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
    listener.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
    try:
        listener.bind((args.address, args.port))
    except OSError as exc:  # one line, as the proxy says it (docs/running.md)
        raise SystemExit(f"sample backend {name!r}: cannot listen on {args.address}:"
                         f"{args.port}: {exc.strerror or exc}") from None
    listener.listen(1024)
    server = pywsgi.WSGIServer(listener, SampleBackend(name), log=None,
                               handler_class=EchoingHandler)
    print(f"sample backend {name!r} on http://{args.address}:{args.port}/", flush=True)
    try:
        # Ctrl-C in the demo's terminal: stop quietly (gevent's hub would print the
        # KeyboardInterrupt); SIGTERM keeps its default, which the demo reports.
        gevent.signal_handler(signal.SIGINT, server.stop)
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
