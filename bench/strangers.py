"""What hostile clients cost one worker (docs/strangers.md, docs/performance.md).

    python bench/strangers.py [--server gunicorn|pywsgi] [--max 5000]

Against one worker on loopback, a recording backend behind it, it measures:

* memory per idle connection: N connections opened (no request), the worker's RSS
  before and after, divided by N;
* stalled connections held while an ordinary client is still answered within 1 s:
  growing batches of connections that send half a header section (and one in ten a
  Content-Length and 3 bytes of body) and wait; after each batch, the time one
  ordinary GET takes;
* the RSS 40 concurrent chunked uploads of 9 MiB each add to a fresh worker.

Everything stops by itself; every connection is to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.backends import HTTPBackend, Reply
from support.proxy import ProxyProcess

DOMAIN = "app.test"


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def ordinary(proxy: ProxyProcess) -> float:
    started = time.monotonic()
    r = requests.get(proxy.url("/proxy/ok"), headers={"Host": DOMAIN}, timeout=10)
    r.raise_for_status()
    return time.monotonic() - started


def idle_connections(proxy: ProxyProcess, worker: int, n: int) -> float:
    before = rss(worker)
    conns = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(n)]
    time.sleep(2)  # let the worker accept and park every one
    after = rss(worker)
    for c in conns:
        c.close()
    return (after - before) / n


def stalled(proxy: ProxyProcess, worker: int, maximum: int, step: int) -> list[tuple]:
    rows = []
    conns: list[socket.socket] = []
    try:
        while len(conns) < maximum:
            for i in range(step):
                s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
                if i % 10:
                    s.sendall(b"GET /proxy/x HTTP/1.1\r\nHost: app.test\r\nX-Slow: ")
                else:
                    s.sendall(b"POST /proxy/x HTTP/1.1\r\nHost: app.test\r\n"
                              b"Content-Length: 10\r\n\r\nabc")
                conns.append(s)
            time.sleep(1)
            held = len(psutil.Process(worker).net_connections("tcp"))
            rows.append((len(conns), held, ordinary(proxy), rss(worker)))
            print(f"  {len(conns):5d} stalled, worker holds {held:5d} sockets, "
                  f"ordinary GET {rows[-1][2] * 1000:7.1f} ms, RSS {rows[-1][3] / 2**20:.0f} MiB",
                  flush=True)
    finally:
        for s in conns:
            s.close()
    return rows


def uploads(proxy: ProxyProcess, worker: int, count: int = 40,
            size: int = 9 * 2**20) -> tuple[int, int]:
    before = peak = rss(worker)
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss(worker))
            time.sleep(0.02)

    def upload() -> None:
        piece = b"u" * 65536
        body = (piece for _ in range(size // len(piece)))
        r = requests.post(proxy.url("/proxy/upload"), headers={"Host": DOMAIN}, data=body,
                          timeout=120)
        assert r.text == str(size), r.text[:100]

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=upload) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    return before, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="gunicorn", choices=["gunicorn", "pywsgi"])
    parser.add_argument("--max", type=int, default=5500, help="stalled connections, at most")
    parser.add_argument("--step", type=int, default=500)
    args = parser.parse_args()
    backend = HTTPBackend(lambda seen: Reply(200, [], str(len(seen.body)).encode())).start()
    env = {"CLIENT_HEADER_TIMEOUT_SECONDS": "120", "CLIENT_BODY_TIMEOUT_SECONDS": "120",
           "KEEPALIVE_SECONDS": "120", "LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        proxy = stack.enter_context(ProxyProcess(Path(tmp), {DOMAIN: [backend.port]},
                                                 server=args.server, env=env))
        worker = proxy.worker_pids()[0]
        ordinary(proxy)
        per_idle = idle_connections(proxy, worker, 2000)
        print(f"{args.server}: memory per idle connection: {per_idle / 1024:.1f} KiB "
              "(2 000 connections)", flush=True)
        print(f"{args.server}: stalled connections, {args.step} at a time:", flush=True)
        rows = stalled(proxy, worker, args.max, args.step)
        fine = [n for n, _held, took, _rss in rows if took < 1]
        print(f"{args.server}: largest number of stalled connections with an ordinary "
              f"GET under 1 s: {max(fine) if fine else 0}", flush=True)
        proxy.stop()
        # A fresh worker for the uploads: the stalled connections' memory stays mapped.
        proxy = stack.enter_context(ProxyProcess(Path(tmp) / "uploads",
                                                 {DOMAIN: [backend.port]},
                                                 server=args.server, env=env))
        worker = proxy.worker_pids()[0]
        ordinary(proxy)
        before, peak = uploads(proxy, worker)
        print(f"{args.server}: 40 x 9 MiB chunked uploads: worker RSS {before / 2**20:.0f} "
              f"-> peak {peak / 2**20:.0f} MiB (+{(peak - before) / 2**20:.1f} MiB)",
              flush=True)
    backend.stop()


if __name__ == "__main__":
    main()
