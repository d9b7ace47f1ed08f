"""CPU per request of the proxy's bookkeeping, in-process: metrics and the access line.

    .venv/bin/python bench/bookkeeping.py [--n 50000] [--rounds 5]

For a miss answered by the first host (one attempt, a cache result): the metrics of
one request (``Metrics.started`` and ``Metrics.finished``) in prometheus-client's
multiprocess mode, as under gunicorn (a temporary PROMETHEUS_MULTIPROC_DIR, set before
prometheus_client is imported, as gunicorn.conf.py does), and one access line
(``AccessLog``, into memory). Medians over rounds; ``PYTHONPATH=<checkout>`` measures
another checkout's code (the venv's .pth file puts this one on the path too, last).
Compare with a whole request's CPU (``make bench``'s cores per 1 000 req/s).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wsgiproxy-bookkeeping-")
# Last: PYTHONPATH=<a worktree> measures that checkout's code instead.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from wsgiproxy.exchange import Exchange
from wsgiproxy.logs import AccessLog
from wsgiproxy.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Callable


def a_miss() -> Exchange:
    exchange = Exchange("4bf92f3577b34da6a3ce929d0e0e4736", "GET", "/small",
                        client="127.0.0.1")
    exchange.service, exchange.status, exchange.cache = "bench", 200, "miss"
    exchange.attempted("127.0.0.1:8001", "response", 200)
    exchange.sent(time.perf_counter())
    exchange.answered(time.perf_counter())
    return exchange


def per_call(work: Callable[[], object], n: int, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            work()
        runs.append((time.process_time() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    metrics, log, exchange = Metrics((), CollectorRegistry()), AccessLog(io.StringIO()), a_miss()

    def count() -> None:
        metrics.started()
        metrics.finished(exchange, time.perf_counter())

    rows = {"metrics, multiprocess (started + finished)": count,
            "access line (AccessLog)": lambda: log(exchange, time.perf_counter())}
    for work in rows.values():
        per_call(work, 1000, 1)  # every series exists, every file is mapped
    print(f"CPU per request, medians of {args.rounds} x {args.n}:")
    for name, work in rows.items():
        print(f"  {name:45} {per_call(work, args.n, args.rounds):6.1f} µs")


if __name__ == "__main__":
    main()
