"""``make bench``: wsgiproxy side by side with its stack's ceiling and nginx, in one run.

    python bench/bench.py [--quick] [--rounds 3] [--seconds 8] [--only small cached]

Starts three nginx backends serving fixed responses, nginx as the reference reverse
proxy (and nginx with proxy_cache for the hit path), the stack's ceiling (bench/hello.py:
the same responses from memory, under the same gunicorn command and configuration as
the proxy), a Python peer (bench/aiohttp_peer.py: a small aiohttp reverse proxy, no
cache, in as many processes as gunicorn has workers), and wsgiproxy under the
documented gunicorn command and under ``python -m wsgiproxy``. Drives each with wrk,
interleaved, round after round; prints one table of medians with the ratios to the
ceiling, to nginx and to the peer measured in the same round, checks the targets, and
writes reports/bench.json and reports/bench.png (bench/chart.py).
Stops everything it started, by PID.

Needs nginx, libnginx-mod-http-echo and wrk (Debian packages of those names).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import chart
import psutil
from common import (
    PYTHON,
    REPO,
    Processes,
    WrkResult,
    nginx_config,
    require,
    reserve_port,
    routes_file,
    server_argv,
    start_wsgiproxy,
    wait_port,
    wrk,
)

DOMAIN = "bench.test"
REPORTS = REPO / "reports"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"

BACKEND_HTTP = """\
  keepalive_timeout 75s;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /small  {{ add_header Cache-Control no-store; return 200 "{small}"; }}
    location = /cached {{ add_header Cache-Control "public, max-age=60"; return 200 "{kb}"; }}
    location = /big    {{ add_header Cache-Control no-store; alias {dir}/big.bin; }}
    location = /slow   {{ add_header Cache-Control no-store; echo_sleep 0.1; echo "slow"; }}
    location = /sleep1 {{ add_header Cache-Control no-store; echo_sleep 1; echo "slept"; }}
  }}
"""

PROXY_HTTP = """\
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
"""


@dataclass
class Scenario:
    name: str
    path: str
    connections: int
    targets: tuple[str, ...]
    note: str
    reference: str = "nginx"  # the nginx target of this scenario


SCENARIOS = (
    Scenario("small", "/small", 50, ("nginx", "hello", "aiohttp", "wsgiproxy",
                                     "wsgiproxy-pywsgi"), "100 B no-store (miss path)"),
    Scenario("cached", "/cached", 50, ("nginx-cache", "hello", "aiohttp", "wsgiproxy"),
             "1 KB public, max-age=60 (hit path; the peer has no cache: a miss)",
             reference="nginx-cache"),
    Scenario("big", "/big", 50, ("nginx", "hello", "aiohttp", "wsgiproxy"),
             "1 MiB no-store"),
    Scenario("slow", "/slow", 500, ("nginx", "hello", "aiohttp", "wsgiproxy"),
             "500 connections, host answers after 100 ms"),
    Scenario("c1000", "/sleep1", 1000, ("nginx", "hello", "wsgiproxy"),
             "1 000 connections, host answers after 1 s"),
    Scenario("failover", "/small", 50, ("nginx", "wsgiproxy"),
             "one of three hosts down (killed)"),
    Scenario("filters", "/small", 50, ("hello", "wsgiproxy", "wsgiproxy-headers",
                                       "wsgiproxy-ratelimit", "wsgiproxy-ratelimit-redis"),
             "100 B miss through one filter: headers; rate_limit in memory; in Redis",
             reference="wsgiproxy"),
)
CEILING = "hello"
#: The Python peer wsgiproxy has to stay ahead of (issue #24).
PEER = "aiohttp"

#: Services of the proxy's routes file that run filters (docs/filters.md), on the same
#: hosts as the plain one; a limit no benchmark reaches, so every request is counted.
FILTERED = {
    "headers.bench.test": {"name": "headers", "filters": [{"use": "headers", "config": {
        "response": {"set": {"Strict-Transport-Security": "max-age=31536000"}}}}]},
    "limited.bench.test": {"name": "limited", "filters": [{"use": "rate_limit", "config": {
        "limit": "1000000/second", "key": "client"}}]},
}
#: target: (the process that serves it, the Host it is sent).
VIA = {"wsgiproxy-headers": ("wsgiproxy", "headers.bench.test"),
       "wsgiproxy-ratelimit": ("wsgiproxy", "limited.bench.test"),
       "wsgiproxy-ratelimit-redis": ("wsgiproxy-redis", "limited.bench.test")}
REDIS_URL = "redis://127.0.0.1:6379/15"


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
    parser.add_argument("--base", type=Path, default=None,
                        help="a checkout of an earlier commit (git worktree add ...): its "
                             "proxy runs beside this one, in the same rounds, as "
                             "wsgiproxy-base, so a change is measured on equal terms")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    nginx = require("nginx", "nginx")
    require("wrk", "wrk")
    if not os.path.exists(ECHO_MODULE):
        raise SystemExit("the nginx echo module is missing: "
                         "apt-get install -y libnginx-mod-http-echo")
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.base is not None:
        scenarios = [dataclasses.replace(s, targets=(*s.targets, "wsgiproxy-base"))
                     for s in scenarios]

    with Processes() as procs:
        work = procs.workdir
        os.chmod(work, 0o755)  # nginx workers may run as another user
        (work / "tmp").mkdir()
        (work / "big.bin").write_bytes(os.urandom(1024 * 1024))
        os.chmod(work / "big.bin", 0o644)
        backend_ports = [reserve_port() for _ in range(3)]

        def start_backend(port: int) -> None:
            name = f"backend-{port}"
            conf = nginx_conf(procs, name, nginx_config(
                work, name, BACKEND_HTTP.format(dir=work, port=port, small="s" * 100,
                                                kb="k" * 1024),
                load=f"load_module {ECHO_MODULE};"))
            procs.start(f"backend-{port}", [nginx, "-c", str(conf), "-p", str(work)],
                        port=port)

        for port in backend_ports:
            start_backend(port)

        ports = {name: reserve_port() for name in
                 ("nginx", "nginx-cache", "hello", "aiohttp", "wsgiproxy",
                  "wsgiproxy-pywsgi", "wsgiproxy-base", "wsgiproxy-redis")}
        servers = "\n    ".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;"
                                for p in backend_ports)
        conf = nginx_conf(procs, "proxy", nginx_config(
            work, "proxy", PROXY_HTTP.format(dir=work, servers=servers, port=ports["nginx"],
                                             cache_port=ports["nginx-cache"]),
            workers=args.workers))
        procs.start("nginx", [nginx, "-c", str(conf), "-p", str(work)], port=ports["nginx"])
        wait_port(ports["nginx-cache"])
        routes = routes_file(work, ports["wsgiproxy"], DOMAIN, backend_ports, FILTERED)
        start_wsgiproxy(procs, "wsgiproxy", ports["wsgiproxy"], routes, workers=args.workers)
        if any("wsgiproxy-ratelimit-redis" in s.targets for s in scenarios):
            # the same proxy with its rate limits counted in Redis (on loopback)
            start_wsgiproxy(procs, "wsgiproxy-redis", ports["wsgiproxy-redis"],
                            routes_file(work, ports["wsgiproxy-redis"], DOMAIN, backend_ports,
                                        FILTERED),
                            workers=args.workers, env={"RATE_LIMIT_URL": REDIS_URL})
        start_wsgiproxy(procs, "wsgiproxy-pywsgi", ports["wsgiproxy-pywsgi"],
                        routes_file(work, ports["wsgiproxy-pywsgi"], DOMAIN, backend_ports),
                        server="pywsgi")
        if args.base is not None:  # the earlier commit's own documented command
            # PYTHONPATH: the venv's wsgiproxy-preflight.pth imports this checkout's
            # wsgiproxy when Python starts; the base's must be found first.
            procs.start("wsgiproxy-base", server_argv("gunicorn", workers=args.workers),
                        env={"CONFIGURATION_FILENAME": str(routes_file(
                            work, ports["wsgiproxy-base"], DOMAIN, backend_ports)),
                             "METRICS_ADDR": "", "PYTHONPATH": str(args.base.resolve())},
                        port=ports["wsgiproxy-base"], cwd=args.base.resolve())
        # The ceiling: the same command (and gunicorn.conf.py) serving a hello-world app.
        procs.start("hello", [PYTHON, "-m", "gunicorn", "-k", "gevent", "-w",
                              str(args.workers), "-b", f"127.0.0.1:{ports['hello']}",
                              "bench.hello:app"],
                    env={"CONFIGURATION_FILENAME": str(routes), "METRICS_ADDR": ""},
                    port=ports["hello"])
        if any(PEER in s.targets for s in scenarios):  # as many processes as workers
            procs.start(PEER, [PYTHON, str(REPO / "bench" / "aiohttp_peer.py"), "--port",
                               str(ports[PEER]), "--processes", str(args.workers),
                               *map(str, backend_ports)], port=ports[PEER])

        def url(target: str, path: str) -> str:
            prefix = "/proxy" if target.startswith("wsgiproxy") else ""
            port = ports[VIA.get(target, (target, ""))[0]]
            return f"http://127.0.0.1:{port}{prefix}{path}"

        def host(target: str) -> dict[str, str]:
            return {"Host": VIA.get(target, ("", DOMAIN))[1]}

        results: dict[tuple[str, str], Row] = {}
        for scenario in scenarios:  # warm every pool and cache once
            for target in scenario.targets:
                wrk(url(target, scenario.path), seconds=1 if scenario.name != "c1000" else 2,
                    connections=10, headers=host(target))
        for rnd in range(args.rounds):
            for scenario in scenarios:
                if scenario.name == "failover":
                    procs.stop(f"backend-{backend_ports[2]}", signal.SIGKILL)
                for target in scenario.targets:
                    print(f"round {rnd + 1}/{args.rounds}: {scenario.name:8} {target}",
                          file=sys.stderr, flush=True)
                    process = "nginx" if target == "nginx-cache" else \
                        VIA.get(target, (target, ""))[0]
                    with Watcher(procs.procs[process].pid) as watch:
                        result = wrk(url(target, scenario.path), seconds=args.seconds,
                                     connections=scenario.connections,
                                     headers=host(target))
                    results.setdefault((scenario.name, target), Row()).runs.append(
                        Run(result, watch.cores, watch.peak))
                if scenario.name == "failover":
                    start_backend(backend_ports[2])

    summary = summarise(scenarios, results, args)
    print_table(summary)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    chart.draw(summary, REPORTS / "bench.png")
    print(f"\nreports: {REPORTS / 'bench.json'}, {REPORTS / 'bench.png'}")
    return 0


def machine() -> dict[str, object]:
    """What the figures were measured on: they mean little without it."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "nginx": _version([require("nginx", "nginx"), "-v"]),
            "wrk": _version([require("wrk", "wrk"), "-v"])}


def _version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def summarise(scenarios: list[Scenario], results: dict[tuple[str, str], Row],
              args: argparse.Namespace) -> dict:
    """Medians per target, ratios paired round by round, and the targets' verdicts."""
    out: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                 "rounds": args.rounds, "seconds": args.seconds, "workers": args.workers,
                 "scenarios": []}
    for scenario in scenarios:
        attr = "mib_s" if scenario.name == "big" else "rps"
        rows = {t: results[(scenario.name, t)] for t in scenario.targets}
        targets = {}
        for target, row in rows.items():
            entry = {k: round(row.median(k), 3) for k in
                     ("rps", "p50_ms", "p99_ms", "mib_s", "cpu", "requests")}
            entry["rss_mib"] = round(max(r.rss_mib for r in row.runs), 1)
            entry["failures"] = sum(r.result.failures for r in row.runs)
            entry["cores_per_1000_rps"] = round(1000 * entry["cpu"] / max(entry["rps"], 1e-9), 3)
            for name, base in (("to_ceiling", CEILING), ("to_nginx", scenario.reference),
                               ("to_peer", PEER)):
                if base in rows:
                    entry[name] = round(statistics.median(
                        getattr(r.result, attr) / max(1e-9, getattr(b.result, attr))
                        for r, b in zip(row.runs, rows[base].runs, strict=False)), 3)
            targets[target] = entry
        out["scenarios"].append({
            "name": scenario.name, "note": scenario.note, "path": scenario.path,
            "connections": scenario.connections, "metric": attr,
            "reference": scenario.reference, "targets": targets,
            "checks": checks(scenario.name, targets, results),
        })
    return out


def checks(name: str, targets: dict, results: dict[tuple[str, str], Row]) -> list[dict]:
    """The issue's targets for this scenario: (what, met?) for wsgiproxy."""
    ours, nginx, ceiling = targets["wsgiproxy"], targets.get("nginx"), targets.get(CEILING)
    found: list[tuple[str, bool]] = []
    peer = targets.get(PEER)
    if peer:  # ahead of the peer, with a p99 no worse than twice its own
        unit = "MiB/s" if name == "big" else "req/s"
        found.append((f"{ours['to_peer']:.3f} x {PEER} {unit} >= 1", ours["to_peer"] >= 1))
        found.append((f"p99 {ours['p99_ms']:.1f} ms <= 2 x {PEER} p99 {peer['p99_ms']:.1f}",
                      ours["p99_ms"] <= 2 * peer["p99_ms"]))
    if name in ("small", "cached"):
        minimum = 0.5 if name == "small" else 0.9
        assert ceiling
        found.append((f"{ours['to_ceiling']:.3f} x ceiling req/s >= {minimum}",
                       ours["to_ceiling"] >= minimum))
        found.append((f"p99 {ours['p99_ms']:.1f} ms <= 2 x ceiling p99 {ceiling['p99_ms']:.1f}",
                       ours["p99_ms"] <= 2 * ceiling["p99_ms"]))
    elif name == "big":
        assert nginx
        found.append((f"{ours['to_nginx']:.3f} x nginx MiB/s >= 0.8", ours["to_nginx"] >= 0.8))
        found.append((f"p99 {ours['p99_ms']:.0f} ms <= 2 x nginx p99 {nginx['p99_ms']:.0f}",
                      ours["p99_ms"] <= 2 * nginx["p99_ms"]))
    elif name == "slow":
        share = ours["rps"] / (500 / 0.1)  # the ideal: every connection once per 100 ms
        found.append((f"{share:.3f} x the ideal 5000 req/s >= 0.9", share >= 0.9))
        found.append((f"p99 {ours['p99_ms']:.0f} ms < 150", ours["p99_ms"] < 150))
    elif name == "c1000":
        found.append((f"{ours['to_nginx']:.3f} x nginx req/s >= 0.95",
                      ours["to_nginx"] >= 0.95))
        found.append((f"p99 {ours['p99_ms']:.0f} ms <= 1300", ours["p99_ms"] <= 1300))
    elif name == "filters":  # to_nginx is to wsgiproxy without filters, in this scenario
        for target, minimum in (("wsgiproxy-headers", 0.95), ("wsgiproxy-ratelimit", 0.90)):
            share = targets[target]["to_nginx"]
            found.append((f"{target} {share:.3f} x no filters >= {minimum}", share >= minimum))
    elif name == "failover":
        found.append((f"{ours['failures']} failed", ours["failures"] == 0))
        up = results.get(("small", "wsgiproxy"))
        if up:
            share = ours["rps"] / up.median("rps")
            found.append((f"{share:.2f} x all-up req/s >= 0.9", share >= 0.9))
    if name != "failover":
        found.append((f"{ours['failures']} failed", ours["failures"] == 0))
    return [{"check": text, "met": met} for text, met in found]


def print_table(summary: dict) -> None:
    print(f"\nwsgiproxy, its ceiling, the {PEER} peer and nginx: medians of "
          f"{summary['rounds']} round(s) of {summary['seconds']:g} s, wrk -t1, "
          f"gunicorn/nginx with {summary['workers']} workers; "
          f"{summary['machine']['cpu']}, {summary['machine']['cores']} cores\n")
    head = (f"{'scenario':9} {'target':17} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'MiB/s':>7} {'fail':>5} {'CPU':>5} {'RSS MiB':>7} {'/ceil':>6} {'/nginx':>6} "
            f"{'/' + PEER:>8}")
    print(head)
    print("-" * len(head))
    for scenario in summary["scenarios"]:
        for target, t in scenario["targets"].items():
            ceiling = f"{t['to_ceiling']:6.3f}" if "to_ceiling" in t else " " * 6
            nginx = f"{t['to_nginx']:6.3f}" if "to_nginx" in t else " " * 6
            peer = f"{t['to_peer']:8.3f}" if "to_peer" in t else ""
            print(f"{scenario['name']:9} {target:17} {t['rps']:8.0f} {t['p50_ms']:8.2f} "
                  f"{t['p99_ms']:8.2f} {t['mib_s']:7.1f} {t['failures']:5d} {t['cpu']:5.2f} "
                  f"{t['rss_mib']:7.0f} {ceiling} {nginx} {peer}")
    print("\n/ceil: to the ceiling (the same responses from memory under the same gunicorn "
          "command);\n/nginx: to nginx (cached: nginx proxy_cache), in the same round; big: "
          f"MiB/s;\n/{PEER}: to the aiohttp peer (bench/aiohttp_peer.py), in the same round\n")
    for scenario in summary["scenarios"]:
        met = all(c["met"] for c in scenario["checks"])
        print(f"  {scenario['name']:9} {'met' if met else 'NOT met'}: " + "; ".join(
            f"{c['check']} {'ok' if c['met'] else 'no'}" for c in scenario["checks"]))


if __name__ == "__main__":
    raise SystemExit(main())
