"""``make bench``: wsgiproxy side by side with nginx, in one run, on one machine.

    python bench/bench.py [--quick] [--rounds 3] [--seconds 10]

Starts three nginx backends serving fixed responses, nginx as the reference reverse
proxy (and nginx with proxy_cache for the hit path), a hello-world WSGI app under the
proxy's gunicorn config (the stack's ceiling), and wsgiproxy under its production
gunicorn config and under ``python -m wsgiproxy``. Drives each with wrk, interleaved,
round after round, and prints one table of medians, with ratios to nginx measured in
the same round. Stops everything it started, by PID.

Needs nginx, libnginx-mod-http-echo and wrk (Debian packages of those names).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil
from common import (
    PYTHON,
    Processes,
    WrkResult,
    free_port,
    require,
    routes_file,
    start_wsgiproxy,
    wait_port,
    wrk,
)

if TYPE_CHECKING:
    from pathlib import Path

DOMAIN = "bench.test"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"

BACKEND_CONF = """
{load}
worker_processes 1;
daemon off;
pid {dir}/backend-{port}.pid;
error_log {dir}/backend-{port}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /small  {{ add_header Cache-Control no-store; return 200 "{small}"; }}
    location = /cached {{ add_header Cache-Control "public, max-age=60"; return 200 "{kb}"; }}
    location = /big    {{ add_header Cache-Control no-store; alias {dir}/big.bin; }}
    location = /slow   {{ add_header Cache-Control no-store; echo_sleep 0.1; echo "slow"; }}
  }}
}}
"""

PROXY_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=60s
                   use_temp_path=off;
  upstream backends {{
    {servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_buffering on;
    }}
  }}
  server {{
    listen 127.0.0.1:{cache_port} backlog=4096;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"""


@dataclass
class Scenario:
    name: str
    path: str
    connections: int
    targets: tuple[str, ...]
    note: str


SCENARIOS = (
    Scenario("small", "/small", 50, ("nginx", "hello", "wsgiproxy", "wsgiproxy-pywsgi"),
             "100 B no-store (miss path)"),
    Scenario("cached", "/cached", 50, ("nginx-cache", "wsgiproxy"),
             "1 KB public, max-age=60 (hit path)"),
    Scenario("big", "/big", 50, ("nginx", "wsgiproxy"), "1 MiB"),
    Scenario("slow", "/slow", 500, ("nginx", "wsgiproxy"), "backend answers after 100 ms"),
    Scenario("failover", "/small", 50, ("nginx", "wsgiproxy"),
             "one of three backends down"),
)
TARGETS = {  # scenario: (metric, minimum ratio to the reference)
    "small": ("rps", 0.12), "cached": ("rps", 0.18), "big": ("mib", 0.8),
    "slow": ("rps", 0.9), "failover": ("rps", None),
}


@dataclass
class Run:
    result: WrkResult
    cpu: float  # cores used by the target's processes
    rss_mib: float  # peak RSS of the target's processes (summed)


@dataclass
class Row:
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r.result, attr) if hasattr(r.result, attr)
                                 else getattr(r, attr) for r in self.runs)


class Watcher:
    """Samples CPU time and RSS of a process tree while a run goes on."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _cpu(self) -> float:
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            rss = 0
            for p in self._tree():
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, rss / 2**20)

    def __enter__(self) -> Watcher:
        self.cpu0, self.t0 = self._cpu(), time.monotonic()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.cores = (self._cpu() - self.cpu0) / (time.monotonic() - self.t0)


def nginx_conf(procs: Processes, name: str, text: str) -> Path:
    path = procs.workdir / f"{name}.conf"
    path.write_text(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="scenarios to run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    nginx = require("nginx", "nginx")
    require("wrk", "wrk")
    if not os.path.exists(ECHO_MODULE):
        raise SystemExit("the nginx echo module is missing: "
                         "apt-get install -y libnginx-mod-http-echo")
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]

    with Processes() as procs:
        work = procs.workdir
        os.chmod(work, 0o755)  # nginx workers may run as another user
        (work / "tmp").mkdir()
        (work / "big.bin").write_bytes(os.urandom(1024 * 1024))
        os.chmod(work / "big.bin", 0o644)
        backend_ports = [free_port() for _ in range(3)]

        def start_backend(port: int) -> None:
            conf = nginx_conf(procs, f"backend-{port}", BACKEND_CONF.format(
                load=f"load_module {ECHO_MODULE};", dir=work, port=port,
                small="s" * 100, kb="k" * 1024))
            procs.start(f"backend-{port}", [nginx, "-c", str(conf), "-p", str(work)],
                        port=port)

        for port in backend_ports:
            start_backend(port)

        ports = {name: free_port() for name in
                 ("nginx", "nginx-cache", "hello", "wsgiproxy", "wsgiproxy-pywsgi")}
        servers = "\n    ".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;"
                                for p in backend_ports)
        conf = nginx_conf(procs, "proxy", PROXY_CONF.format(
            workers=args.workers, dir=work, servers=servers, port=ports["nginx"],
            cache_port=ports["nginx-cache"]))
        procs.start("nginx", [nginx, "-c", str(conf), "-p", str(work)], port=ports["nginx"])
        wait_port(ports["nginx-cache"])
        routes = routes_file(work, ports["wsgiproxy"], DOMAIN, backend_ports)
        start_wsgiproxy(procs, "wsgiproxy", ports["wsgiproxy"], routes, workers=args.workers)
        start_wsgiproxy(procs, "wsgiproxy-pywsgi", ports["wsgiproxy-pywsgi"],
                        routes_file(work, ports["wsgiproxy-pywsgi"], DOMAIN, backend_ports),
                        server="pywsgi")
        # The ceiling: the same command (and gunicorn.conf.py) serving a hello-world app.
        procs.start("hello", [PYTHON, "-m", "gunicorn", "-k", "gevent", "-w",
                              str(args.workers), "-b", f"127.0.0.1:{ports['hello']}",
                              "bench.hello:app"],
                    env={"CONFIGURATION_FILENAME": str(routes), "METRICS_ADDR": ""},
                    port=ports["hello"])

        def url(target: str, path: str) -> str:
            prefix = "/proxy" if target.startswith("wsgiproxy") else ""
            return f"http://127.0.0.1:{ports[target]}{prefix}{path}"

        results: dict[tuple[str, str], Row] = {}
        for scenario in scenarios:  # warm every pool and cache once
            for target in scenario.targets:
                wrk(url(target, scenario.path), seconds=1, connections=10,
                    headers={"Host": DOMAIN})
        for rnd in range(args.rounds):
            for scenario in scenarios:
                if scenario.name == "failover":
                    procs.stop(f"backend-{backend_ports[2]}", signal.SIGKILL)
                for target in scenario.targets:
                    print(f"round {rnd + 1}/{args.rounds}: {scenario.name:8} {target}",
                          file=sys.stderr, flush=True)
                    process = "nginx" if target == "nginx-cache" else target
                    with Watcher(procs.procs[process].pid) as watch:
                        result = wrk(url(target, scenario.path), seconds=args.seconds,
                                     connections=scenario.connections,
                                     headers={"Host": DOMAIN})
                    results.setdefault((scenario.name, target), Row()).runs.append(
                        Run(result, watch.cores, watch.peak))
                if scenario.name == "failover":
                    start_backend(backend_ports[2])

    report(scenarios, results, args)
    return 0


def report(scenarios: list[Scenario], results: dict[tuple[str, str], Row],
           args: argparse.Namespace) -> None:
    print(f"\nwsgiproxy vs nginx: medians of {args.rounds} round(s) of {args.seconds:g} s, "
          f"wrk -t1, gunicorn/nginx with {args.workers} workers, {os.cpu_count()} cores\n")
    head = (f"{'scenario':9} {'target':17} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>8} "
            f"{'MiB/s':>7} {'non2xx':>6} {'sockerr':>7} {'CPU':>5} {'RSS MiB':>7} "
            f"{'ratio':>6}")
    print(head)
    print("-" * len(head))
    verdicts = []
    for scenario in scenarios:
        metric, minimum = TARGETS[scenario.name]
        reference = "nginx-cache" if scenario.name == "cached" else "nginx"
        ref = results[(scenario.name, reference)]
        for target in scenario.targets:
            row = results[(scenario.name, target)]
            ratios = []
            for run, ref_run in zip(row.runs, ref.runs, strict=False):
                if scenario.name == "slow":
                    base = 500 / 0.1  # the ideal: every connection once per 100 ms
                    ratios.append(run.result.rps / base)
                else:
                    attr = "mib_s" if metric == "mib" else "rps"
                    ratios.append(getattr(run.result, attr) / max(1e-9, getattr(
                        ref_run.result, attr)))
            ratio = statistics.median(ratios)
            print(f"{scenario.name:9} {target:17} {row.median('rps'):8.0f} "
                  f"{row.median('p50_ms'):7.2f} {row.median('p99_ms'):8.2f} "
                  f"{row.median('mib_s'):7.1f} {sum(r.result.non_2xx for r in row.runs):6d} "
                  f"{sum(r.result.socket_errors for r in row.runs):7d} "
                  f"{row.median('cpu'):5.2f} {max(r.rss_mib for r in row.runs):7.0f} "
                  f"{ratio:6.3f}")
            if target == "wsgiproxy":
                verdicts.append(verdict(scenario, row, ratio, minimum, results))
    print("\nratio: to nginx in the same round (cached: nginx proxy_cache; big: MiB/s;"
          " slow: to the ideal 5000 req/s)")
    print("\n".join(verdicts))


def verdict(scenario: Scenario, row: Row, ratio: float, minimum: float | None,
            results: dict[tuple[str, str], Row]) -> str:
    failures = sum(r.result.failures for r in row.runs)
    checks = []
    if minimum is not None:
        checks.append((f"{ratio:.3f} >= {minimum}", ratio >= minimum))
    if scenario.name == "cached":
        p50, p99 = row.median("p50_ms"), row.median("p99_ms")
        checks.append((f"p99 {p99:.2f} <= 5 x p50 {p50:.2f}", p99 <= 5 * p50))
    if scenario.name == "slow":
        checks.append((f"p99 {row.median('p99_ms'):.0f} ms < 150 ms",
                       row.median("p99_ms") < 150))
    if scenario.name == "failover":
        checks.append((f"{failures} failed", failures == 0))
        up = results.get(("small", "wsgiproxy"))
        if up:
            share = row.median("rps") / up.median("rps")
            checks.append((f"{share:.2f} x all-up rate >= 0.9", share >= 0.9))
    ok = all(passed for _, passed in checks)
    return f"  {scenario.name:9} {'met' if ok else 'NOT met'}: " + "; ".join(
        f"{text} {'ok' if passed else 'no'}" for text, passed in checks)


if __name__ == "__main__":
    raise SystemExit(main())
