"""``make bench``'s Python peer: a small aiohttp reverse proxy, not part of the product.

    python bench/aiohttp_peer.py --port 8080 [--processes 2] HOST_PORT [HOST_PORT ...]

What a team would write by hand in an afternoon, so wsgiproxy is measured against it in
the same run: each process keeps one pooled, keep-alive ``ClientSession`` to the hosts
on 127.0.0.1 (round-robin), streams both bodies, drops hop-by-hop headers and nothing
else (no cache, no retries, no metrics, no access log). Processes share the port through
``SO_REUSEPORT``, as gunicorn's workers do.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
       "trailer", "transfer-encoding", "upgrade", "host"}


def make_app(ports: list[int]) -> web.Application:
    hosts = itertools.cycle(f"http://127.0.0.1:{p}" for p in ports)
    app = web.Application()

    async def session(app: web.Application):
        app["client"] = ClientSession(
            connector=TCPConnector(limit=0, keepalive_timeout=75),
            auto_decompress=False, timeout=ClientTimeout(total=None, sock_connect=5))
        yield
        await app["client"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = request.content if request.body_exists else None
        async with request.app["client"].request(
                request.method, next(hosts) + request.rel_url.raw_path_qs, headers=headers,
                data=body, allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def serve(port: int, ports: list[int]) -> None:
    web.run_app(make_app(ports), host="127.0.0.1", port=port, reuse_port=True,
                access_log=None, print=None, backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("hosts", type=int, nargs="+", help="the hosts' ports on 127.0.0.1")
    args = parser.parse_args()
    workers = [multiprocessing.Process(target=serve, args=(args.port, args.hosts))
               for _ in range(args.processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
