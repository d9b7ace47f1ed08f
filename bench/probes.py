"""How many health probes a host sees per interval, by server and worker count.

    .venv/bin/python bench/probes.py [--workers 1 4] [--interval 0.5] [--intervals 20]

For each run: one backend that counts its /healthz requests, wsgiproxy with a
``health_check`` on it (gunicorn with each worker count, and ``python -m wsgiproxy``),
then the probes counted over ``--intervals`` intervals after the first one. One prober
per instance means about one probe per interval whatever the number of workers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, REPO, reserve_port, routes_yaml, server_argv, wait_port


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    probes = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        if self.path == "/healthz":
            with _Counting.lock:
                _Counting.probes += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def measure(server: str, workers: int, interval: float, intervals: int,
            backend_port: int, workdir: Path) -> int:
    port, metrics = reserve_port(), reserve_port()
    routes = workdir / f"routes-{port}.yaml"
    routes.write_text(routes_yaml(port, {"probed.test": {
        "hosts": [backend_port], "health_check": {"interval_seconds": interval}}}))
    env = {**os.environ, "CONFIGURATION_FILENAME": str(routes),
           "METRICS_ADDR": f"127.0.0.1:{metrics}"}
    argv = server_argv(server, workers=workers, bind=f"127.0.0.1:{port}",
                       extra_args=["--no-control-socket"])
    argv[0] = PYTHON
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        deadline = time.monotonic() + 10
        while _Counting.probes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        start = _Counting.probes
        time.sleep(interval * intervals)  # the measurement window itself
        return _Counting.probes - start
    finally:
        proc.terminate()
        proc.wait(30)
        _Counting.probes = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--intervals", type=int, default=20)
    args = parser.parse_args()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    runs = [("pywsgi", 1)] + [("gunicorn", w) for w in args.workers]
    with tempfile.TemporaryDirectory() as tmp:
        for server, workers in runs:
            probes = measure(server, workers, args.interval, args.intervals,
                             backend.server_address[1], Path(tmp))
            print(f"{server:8} workers={workers}: {probes} probes in {args.intervals} "
                  f"intervals of {args.interval:g} s ({probes / args.intervals:.2f} per "
                  "interval)")
    backend.shutdown()


if __name__ == "__main__":
    main()
