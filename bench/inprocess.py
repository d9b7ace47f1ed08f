"""What the in-process benchmarks share (bench/exchange.py, bench/app_cpu.py): one nginx
host to talk to, CPU time per call, and cProfile's self time grouped by layer."""

from __future__ import annotations

import argparse
import collections
import cProfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common import nginx_config, require, reserve_port
from layers import layer_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from common import Processes


HOST = "bench.test"
#: The host: ``/small``, 100 B not to be stored; ``/cached``, 1 KB fresh for a minute.
HOST_HTTP = """\
  keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{port};
    location = /small  {{ add_header Cache-Control no-store; return 200 "{small}"; }}
    location = /cached {{ add_header Cache-Control "public, max-age=60"; return 200 "{kb}"; }}
  }}
"""


def start_host(procs: Processes, http: str = HOST_HTTP, **fields: str) -> int:
    """Start one nginx (one worker) whose ``http`` block is ``http`` formatted with its
    port and ``fields`` (by default :data:`HOST_HTTP`, the bodies filled in); return
    the port."""
    if http is HOST_HTTP:
        fields = {"small": "s" * 100, "kb": "k" * 1024, **fields}
    nginx = require("nginx", "nginx")
    port = reserve_port()
    (procs.workdir / "tmp").mkdir(exist_ok=True)
    conf = procs.workdir / "host.conf"
    conf.write_text(nginx_config(procs.workdir, "host", http.format(port=port, **fields)))
    procs.start("host", [nginx, "-c", str(conf), "-p", str(procs.workdir)], port=port)
    return port


def cpu_per_call(call: Callable[[], object], count: int) -> float:
    """Microseconds of this process's CPU time (user + system) per call."""
    cpu = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - cpu) / count * 1e6


def self_time(call: Callable[[], object], count: int) -> tuple[
        collections.Counter[str], collections.Counter[str], float]:
    """cProfile (with a CPU clock) over ``count`` calls: self time by layer, by function
    (``file:line name``), and the total, in seconds. cProfile adds its own cost to every
    call, so the shares mean more than the sum."""
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(lambda: [call() for _ in range(count)])
    profiler.create_stats()
    layers: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for (filename, line, name), (_cc, _nc, tottime, _ct, _callers) in \
            profiler.stats.items():  # type: ignore[attr-defined]
        layers[layer_of(filename) if filename != "~" else
               "C functions (builtins, methods, socket calls)"] += tottime
        functions[f"{Path(filename).name}:{line} {name}"] += tottime
    return layers, functions, sum(layers.values())


def arguments(doc: str, count: int) -> argparse.Namespace:
    """The command line both take: ``--count`` calls per round, ``--rounds``,
    ``--profile``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args()
