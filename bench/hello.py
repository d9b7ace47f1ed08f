"""The stack's ceiling: a WSGI app that answers what the benchmark's hosts answer, from
memory, under the same gunicorn command and configuration as the proxy. Nothing built
on this stack can serve those responses faster; a proxy does the same work plus the
exchange with a host."""

import os

import gevent

BIG = os.urandom(1024 * 1024)


def _response(body: bytes, cache_control: str) -> tuple[list[tuple[str, str]], bytes]:
    return [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body))),
            ("Cache-Control", cache_control)], body


PATHS = {
    "/small": _response(b"s" * 100, "no-store"),
    "/cached": _response(b"k" * 1024, "public, max-age=60"),
    "/big": _response(BIG, "no-store"),
    "/slow": _response(b"slow\n", "no-store"),
    "/sleep1": _response(b"slept\n", "no-store"),
}
SLEEP = {"/slow": 0.1, "/sleep1": 1.0}


def app(environ, start_response):
    path = environ["PATH_INFO"].removeprefix("/proxy")
    headers, body = PATHS.get(path, PATHS["/small"])
    if path in SLEEP:
        gevent.sleep(SLEEP[path])
    start_response("200 OK", headers)
    return [body]
