"""The whole app in-process: CPU per request of a miss and a hit, and where it goes.

    python bench/app_cpu.py [--count 10000] [--rounds 3] [--profile] > /dev/null

Starts one nginx (one worker) answering ``/small`` (100 B, ``no-store``) and ``/cached``
(1 KB, ``public, max-age=60``), builds the app as a worker does (``create_app``, under
gevent, monkey-patched), and calls it as a WSGI server would, with the environ of a
wrk GET, reading the whole body and closing it. Prints the median CPU time per request
(user + system of this process: the host's side is nginx's) over rounds, interleaved,
for the hit, the miss, and the miss's layers from the socket up, each called as the
layer above calls it:

* ``pool``: the service's ``UpstreamConnectionPool.urlopen``, body read, released;
* ``adapter``: ``ServiceAdapter.forward`` (host choice, attempts, the host's response
  wrapped for streaming) and the body;
* ``upstream client``: ``UpstreamClient.send`` (the cache step: key, lookup, whether
  the response may be stored) and the body;
* ``whole app``: the WSGI call (routing, header rules, the response, log, metrics).

No server and no client socket: compare with ``make bench``'s CPU per request to see
the server's share.

``--profile`` runs each path once more under cProfile with a CPU clock and prints its
self time by layer and the functions with the most of it (cProfile adds its own cost to
every call: shares mean more than the sum). The access log goes to stdout, as in a
worker: send it to /dev/null (``> /dev/null``); the figures are printed on stderr.
"""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

import io
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from common import Processes
from inprocess import HOST, arguments, cpu_per_call, self_time, start_host
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsgiproxy.exchange import Exchange
from wsgiproxy.handler import create_app
from wsgiproxy.policy import resolve_policy
from wsgiproxy.routes_file import parse_routes
from wsgiproxy.settings import load_settings
from wsgiproxy.upstream import UpstreamRequest


def environ(path: str) -> dict:
    """What gunicorn hands the app for wrk's ``GET <path>``."""
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": "", "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40000", "HTTP_HOST": HOST, "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "wsgi.version": (1, 0)}


def caller(app, path: str) -> Callable[[], bytes]:
    def start_response(status, headers, exc_info=None):
        return None

    def request() -> bytes:
        body = app(environ(path), start_response)
        try:
            return b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
    return request


#: What the handler sends a host for wrk's GET (the forwarding headers it adds).
TO_HOST = {"Host": HOST, "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": HOST,
           "X-Forwarded-Proto": "http", "X-Request-ID": "0" * 32}


def layers(app, routes, settings) -> dict[str, Callable[[], bytes]]:
    """The miss's layers below the app, each called as the one above calls it."""
    service = routes.services[0]
    channel = app.upstream.channel(service, resolve_policy(service, settings))
    adapter = channel.adapter
    pool = adapter.pool(adapter.balancer.pick())

    def read(response) -> bytes:
        try:
            return b"".join(response.body)
        finally:
            response.body.close()

    def via_pool() -> bytes:
        raw = pool.urlopen("GET", "/small", headers=TO_HOST, retries=adapter.max_retries,
                           redirect=False, assert_same_host=False, preload_content=False,
                           decode_content=False, release_conn=False,
                           timeout=adapter.timeout, target="/small", log=Exchange("r", "GET", "/"))
        body = raw.read()
        raw.release_conn()
        return body

    def via_adapter() -> bytes:
        return read(adapter.forward("GET", "/small", TO_HOST, None, Exchange("r", "GET", "/")))

    def via_client() -> bytes:
        return read(app.upstream.send(channel, HOST, UpstreamRequest("GET", "/small", TO_HOST),
                                      Exchange("r", "GET", "/")))
    return {"  pool": via_pool, "  adapter": via_adapter, "  upstream client": via_client}


def profile(name: str, request: Callable[[], bytes], count: int) -> str:
    layers, functions, total = self_time(request, count)
    out = [f"\n{name} under cProfile, {total / count * 1e6:.0f} µs per request profiled; "
           "self time by layer:\n"]
    out += [f"  {layer:46} {100 * s / total:5.1f}%\n" for layer, s in layers.most_common()]
    out.append("  functions with the most self time:\n")
    out += [f"    {100 * s / total:5.1f}%  {fn}\n" for fn, s in functions.most_common(25)]
    return "".join(out)


def main() -> None:
    args = arguments(__doc__, 10000)
    with Processes() as procs:
        port = start_host(procs)
        routes = parse_routes({"proxy": {
            "listen": {"address": "127.0.0.1", "port": 8080},
            "services": [{"name": "bench", "domain": HOST,
                          "hosts": [{"address": "127.0.0.1", "port": port}]}]}})
        settings = load_settings(lambda name, default=None: default)
        app = create_app(settings, routes, CollectorRegistry())
        paths = {"hit (/cached)": caller(app, "/proxy/cached"),
                 "miss (/small)": caller(app, "/proxy/small"),
                 **layers(app, routes, settings),
                 "  whole app": caller(app, "/proxy/small")}
        for name, request in paths.items():
            assert request(), name
            cpu_per_call(request, 500)
        results: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, request in paths.items():
                results[name].append(cpu_per_call(request, args.count))
        profiled = "".join(profile(name, paths[name], args.count)
                           for name in ("hit (/cached)", "miss (/small)")) if args.profile else ""
    out = sys.stderr
    print(f"\n{args.count} requests per path and round, medians of {args.rounds} rounds, "
          "in-process under gevent\n", file=out)
    for name, runs in results.items():
        print(f"{name:20} {statistics.median(runs):7.1f} µs CPU per request", file=out)
    print(profiled, end="", file=out)


if __name__ == "__main__":
    main()
