"""New connections under a busy worker: what a name lookup per connection costs.

    python bench/new_connections.py [--count 250]

Starts one nginx and, in this process under gevent (monkey-patched, as in a worker),
keeps the hub busy with twenty greenlets (1 ms of CPU each between yields, like a worker
serving other requests) while ``--count`` greenlets each open a new connection through
one ``UpstreamConnectionPool`` and make a GET, first to ``127.0.0.1`` (no lookup), then
to ``localhost`` (a name, looked up through gevent's thread pool; docs/deployment.md).
Prints the median and the slowest request of each (docs/performance.md, "Tails").
"""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

import argparse
import sys
import time
from pathlib import Path

import gevent
from common import Processes
from inprocess import HOST, start_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsgiproxy.upstream.transport import UpstreamConnectionPool


def busy(until: list[bool]) -> None:
    """About 1 ms of CPU, then a yield, until told to stop."""
    while not until:
        total = 0
        for i in range(20000):
            total += i
        gevent.sleep(0)


def burst(host: str, port: int, count: int) -> list[float]:
    """Seconds each of ``count`` concurrent first requests through a new pool took."""
    pool = UpstreamConnectionPool(host, port, maxsize=count, block=False)
    stop: list[bool] = []
    workers = [gevent.spawn(busy, stop) for _ in range(20)]

    def one() -> float:
        started = time.perf_counter()
        response = pool.urlopen("GET", "/small", headers={"Host": HOST},
                                preload_content=False, release_conn=False)
        response.read()
        return time.perf_counter() - started

    requests = [gevent.spawn(one) for _ in range(count)]
    gevent.joinall(requests, raise_error=True)
    stop.append(True)
    gevent.joinall(workers)
    pool.close()
    return sorted(r.value for r in requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=250)
    count = parser.parse_args().count
    with Processes() as procs:
        port = start_host(procs)
        for host in ("127.0.0.1", "localhost"):
            took = burst(host, port, count)
            print(f"{host:10} {count} new requests under a busy hub: "
                  f"p50 {took[len(took) // 2] * 1000:4.0f} ms, "
                  f"slowest {took[-1] * 1000:4.0f} ms")


if __name__ == "__main__":
    main()
