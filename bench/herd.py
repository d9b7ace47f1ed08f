"""The thundering herd (docs/cache.md): N concurrent requests for a popular entry the moment
it expires, with a host that takes 200 ms. With coalescing, the host sees one request per
worker and every client waits about the host's time.

    python bench/herd.py [--clients 200] [--workers 2] [--host-ms 200] [--rounds 3]

The clients are raw keep-alive connections opened beforehand (asyncio, one thread), so
that the requests leave together; each latency is from its request's send to the end of
its response.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import Processes, reserve_port, routes_yaml, start_wsgiproxy

DOMAIN = "herd.bench"


class Host(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    delay = 0.2

    def log_message(self, *args):
        pass

    def do_GET(self):
        Host.count += 1
        time.sleep(Host.delay)
        body = b"popular" * 100
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


REQUEST = f"GET /proxy/popular HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
PROBE = (f"GET /proxy/popular HTTP/1.1\r\nHost: {DOMAIN}\r\n"
         "Cache-Control: only-if-cached\r\n\r\n").encode()


async def exchange(reader, writer, request: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return int(head.split(b" ")[1]), time.perf_counter() - started


async def herd(port: int, clients: int) -> tuple[list[float], int, list[float]]:
    """The latencies at expiry, the host's requests then, and the latencies of the same
    requests answered from the fresh entry right after (the floor: answering N clients)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    reader, writer = conns[0]
    while (await exchange(reader, writer, PROBE))[0] != 504:  # until the entry is stale
        await asyncio.sleep(0.005)
    before = Host.count
    results = await asyncio.gather(*(exchange(r, w, REQUEST) for r, w in conns))
    host_requests = Host.count - before
    hits = await asyncio.gather(*(exchange(r, w, REQUEST) for r, w in conns))
    for _, w in conns:
        w.close()
    assert {status for status, _ in results + hits} == {200}, results[:5]
    return [t for _, t in results], host_requests, [t for _, t in hits]


def percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host-ms", type=float, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    Host.delay = args.host_ms / 1000
    host = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    host.daemon_threads = True
    threading.Thread(target=host.serve_forever, daemon=True).start()
    with Processes() as procs:
        port = reserve_port()
        routes = procs.workdir / "routes.yaml"
        routes.write_text(routes_yaml(port, {DOMAIN: {"hosts": [host.server_address[1]],
                                                       "name": "herd"}}))
        start_wsgiproxy(procs, "wsgiproxy", port, routes, workers=args.workers,
                        env={"WORKER_CONNECTIONS": str(args.clients + 50)})
        for round_ in range(1, args.rounds + 1):
            latencies, host_requests, hits = asyncio.run(herd(port, args.clients))
            print(f"round {round_}: {args.clients} clients at expiry, {args.workers} workers, "
                  f"host {args.host_ms:g} ms: host saw {host_requests} requests; client "
                  f"{percentiles(latencies)}; the same from the fresh entry: "
                  f"{percentiles(hits)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
