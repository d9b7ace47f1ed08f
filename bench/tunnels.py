"""Memory per idle WebSocket tunnel (docs/websocket.md): open N tunnels through the proxy and
read the RSS of the worker that holds them.

    python bench/tunnels.py [--tunnels 1000] [--server gunicorn|pywsgi]

A WebSocket echo server (websockets, asyncio, one thread) is the host; the proxy runs
with one worker; N raw clients each complete the handshake and then stay silent. The
worker's RSS is read after a warm-up of 10 tunnels and again with all N open.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import socket
import sys
import threading
import time

import psutil
from common import Processes, reserve_port, routes_file, start_wsgiproxy
from websockets.asyncio.server import serve

DOMAIN = "ws.bench"


def echo_server() -> int:
    """A WebSocket echo server in a thread of this process; its port."""
    ready: list[int] = []

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            ready.append(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    while not ready:
        time.sleep(0.01)
    return ready[0]


def open_tunnel(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /proxy/echo HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed during the handshake: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101 "):
        raise RuntimeError(f"no 101: {head[:200]!r}")
    return sock


def worker_rss(pid: int, server: str) -> float:
    proc = psutil.Process(pid)
    procs = proc.children() if server == "gunicorn" else [proc]
    return sum(p.memory_info().rss for p in procs) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--server", choices=["gunicorn", "pywsgi"], default="gunicorn")
    args = parser.parse_args()
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # clients leave unannounced
    backend = echo_server()
    with Processes() as procs:
        port = reserve_port()
        routes = routes_file(procs.workdir, port, DOMAIN, [backend])
        proc = start_wsgiproxy(procs, "wsgiproxy", port, routes, server=args.server,
                               workers=1, env={"WORKER_CONNECTIONS": str(args.tunnels + 100)})
        warm = [open_tunnel(port) for _ in range(10)]
        time.sleep(1)
        before = worker_rss(proc.pid, args.server)
        started = time.monotonic()
        tunnels = [open_tunnel(port) for _ in range(args.tunnels - len(warm))]
        took = time.monotonic() - started
        time.sleep(1)
        after = worker_rss(proc.pid, args.server)
        per = (after - before) * 1024 / len(tunnels)
        print(f"{args.server}: {len(tunnels) + len(warm)} idle tunnels open "
              f"(opened {len(tunnels)} in {took:.1f} s): worker RSS {before:.1f} MiB with "
              f"10 -> {after:.1f} MiB, {per:.1f} KiB per tunnel")
        for sock in warm + tunnels:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
