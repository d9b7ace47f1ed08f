"""Failover under load: wrk against the proxy (production gunicorn config) in front of
three sample backends, once with every host up and once with one host killed (SIGKILL)
a third of the way in and started again two thirds of the way in.

    python bench/failover.py [--seconds 10] [--connections 50]

Prints one row per run: requests/s, p50 and p99 latency, failed requests.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

from common import Processes, reserve_port, routes_file, sample_backend, start_wsgiproxy, wrk

DOMAIN = "bench.test"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with Processes() as procs:
        ports = [reserve_port() for _ in range(3)]
        for i, port in enumerate(ports):
            sample_backend(procs, f"backend{i}", port)
        listen = reserve_port()
        start_wsgiproxy(procs, "wsgiproxy", listen,
                        routes_file(procs.workdir, listen, DOMAIN, ports),
                        workers=args.workers)
        url = f"http://127.0.0.1:{listen}/proxy/echo"
        headers = {"Host": DOMAIN}
        wrk(url, seconds=2, connections=args.connections, headers=headers)  # warm-up

        rows = [("all hosts up", wrk(url, seconds=args.seconds,
                                     connections=args.connections, headers=headers))]

        def chaos() -> None:
            time.sleep(args.seconds / 3)
            procs.stop("backend1", signal.SIGKILL)
            time.sleep(args.seconds / 3)
            sample_backend(procs, "backend1", ports[1])

        killer = threading.Thread(target=chaos)
        killer.start()
        rows.append(("one host killed and restarted",
                     wrk(url, seconds=args.seconds, connections=args.connections,
                         headers=headers)))
        killer.join()

    print(f"\n{args.connections} connections, {args.seconds:g} s per run, "
          f"gunicorn -w {args.workers} -k gevent, 3 sample backends\n")
    print(f"{'run':32} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for name, r in rows:
        print(f"{name:32} {r.rps:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.failures:7d}")
    return 1 if any(r.failures for _, r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
