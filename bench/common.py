"""Shared pieces of the benchmarks: processes started and stopped by PID, wrk runs.

Everything listens on 127.0.0.1 on reserved ports; every process a benchmark starts is
stopped by the PID it was given, whatever happens (``Processes`` is a context manager).

The loopback helpers are the tests' own (tests/support/): ``reserve_port`` and
``wait_port`` from support.net, the routes file from ``routes_yaml`` and the documented
commands from ``server_argv`` in support.proxy. One implementation, kept right by the
test suite, which runs far more often than the benchmarks do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# tests/ is not a package: put it on the path, as pytest's pythonpath does for the tests.
sys.path.insert(0, str(REPO / "tests"))
from support.net import reserve_port, wait_port  # noqa: E402
from support.proxy import routes_yaml, server_argv  # noqa: E402

__all__ = ["PYTHON", "REPO", "Processes", "WrkResult", "nginx_config", "require",
           "reserve_port", "routes_file", "routes_yaml", "sample_backend", "start_wsgiproxy",
           "wait_port", "wrk"]


NGINX_CONF = """{load}
worker_processes {workers};
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
{http}}}
"""


def nginx_config(workdir: Path, name: str, http: str, *, workers: int = 1,
                 load: str = "") -> str:
    """An nginx config for a benchmark server: in the foreground, its pid, error log and
    temporary files under ``workdir``, no access log, keep-alive without a request
    limit; ``http`` is the rest of the ``http`` block (servers, upstreams, caches)."""
    return NGINX_CONF.format(load=load, workers=workers, dir=workdir, name=name, http=http)


def require(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}")
                                  else None)
    if not path:
        raise SystemExit(f"{tool} is missing: install it with `apt-get install -y {package}`")
    return path


class Processes:
    """Start processes in their own session; stop them all (by PID) on exit."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="wsgiproxy-bench-"))

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              port: int | None = None, cwd: Path = REPO) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        if port:
            wait_port(port)
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)
        shutil.rmtree(self.workdir, ignore_errors=True)


def sample_backend(procs: Processes, name: str, port: int) -> None:
    procs.start(name, [PYTHON, "-m", "wsgiproxy.sample_backend", "--port", str(port),
                       "--name", name], port=port)


def routes_file(workdir: Path, listen: int, domain: str, ports: list[int],
                more: dict[str, dict] | None = None) -> Path:
    """A routes file listening on ``listen``: one service, "bench", for ``domain``, and
    ``more`` services ({domain: {"name": ..., "filters": ...}}) on the same hosts."""
    path = workdir / f"routes-{listen}.yaml"
    services = {domain: {"hosts": ports, "name": "bench"}}
    services.update({d: {"hosts": ports, **spec} for d, spec in (more or {}).items()})
    path.write_text(routes_yaml(listen, services))
    return path


def start_wsgiproxy(procs: Processes, name: str, port: int, routes: Path, *,
                    server: str = "gunicorn", workers: int = 2,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {"CONFIGURATION_FILENAME": str(routes), "METRICS_ADDR": "", **(env or {})}
    # The documented command, from the project root; it listens where the routes say.
    return procs.start(name, server_argv(server, workers=workers), env=env, port=port)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    mib_s: float
    requests: int
    non_2xx: int
    socket_errors: int
    raw: str

    @property
    def failures(self) -> int:
        return self.non_2xx + self.socket_errors


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def _mib(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMG]?B)", value)
    if not m:
        return 0.0
    return float(m.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(2)]


def wrk(url: str, *, seconds: float, connections: int, threads: int = 1,
        headers: dict[str, str] | None = None, timeout: str = "10s") -> WrkResult:
    argv = [require("wrk", "wrk"), "--latency", "-t", str(threads), "-c", str(connections),
            "-d", f"{seconds:g}s", "--timeout", timeout]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    mib = _mib(re.search(r"Transfer/sec:\s+(\S+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    return WrkResult(rps, p50, p99, mib, total, int(non2xx.group(1)) if non2xx else 0,
                     sum(map(int, sock.groups())) if sock else 0, out)
