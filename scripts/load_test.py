"""``make load-test``: three sample backends, the proxy under the documented gunicorn
command, and Locust headless against it; reports in reports/; non-zero if any request
failed. LOAD_TEST_USERS (default 20) and LOAD_TEST_DURATION (default 60s) override."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import (
    PYTHON,
    REPO,
    Processes,
    reserve_port,
    routes_file,
    sample_backend,
    start_wsgiproxy,
)

DOMAIN = "my-service.my-company.com"


def main() -> int:
    users = os.environ.get("LOAD_TEST_USERS", "20")
    duration = os.environ.get("LOAD_TEST_DURATION", "60s")
    reports = REPO / "reports"
    reports.mkdir(exist_ok=True)
    with Processes() as procs:
        ports = [reserve_port() for _ in range(3)]
        for i, port in enumerate(ports):
            sample_backend(procs, f"backend{i}", port)
        listen, metrics = reserve_port(), reserve_port()
        start_wsgiproxy(procs, "wsgiproxy", listen,
                        routes_file(procs.workdir, listen, DOMAIN, ports),
                        env={"METRICS_ADDR": f"127.0.0.1:{metrics}"},
                        workers=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1))
        print(f"load test: {users} users for {duration} against http://127.0.0.1:{listen} "
              f"(3 sample backends, gunicorn -k gevent)", flush=True)
        log = reports / "locust.log"
        with log.open("wb") as out:
            locust = subprocess.run(
                [PYTHON, "-m", "locust", "-f", "locustfiles/locustfile.py", "--headless",
                 "-u", users, "-r", users, "-t", duration,
                 "--host", f"http://127.0.0.1:{listen}", "--html", str(reports / "locust.html"),
                 "--csv", str(reports / "locust"), "--only-summary", "--loglevel", "WARNING"],
                cwd=REPO, env={**os.environ, "LOAD_TEST_DOMAIN": DOMAIN}, check=False,
                stdout=out, stderr=subprocess.STDOUT)
        if locust.returncode:
            print(log.read_text()[-3000:])
    failures = summary(reports / "locust_stats.csv")
    print(f"reports: {reports / 'locust.html'}, {reports}/locust_*.csv, {reports}/locust.log")
    if failures or locust.returncode:
        print(f"FAILED: {failures} failed requests (locust exit {locust.returncode})")
        return 1
    return 0


def summary(stats: Path) -> int:
    """Print one line per request type; return the number of failed requests."""
    rows = list(csv.DictReader(stats.open()))
    print(f"\n{'':14} {'requests':>9} {'failed':>7} {'req/s':>8} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7}")
    for row in rows:
        print(f"{row['Name'] or row['Type']:14} {row['Request Count']:>9} "
              f"{row['Failure Count']:>7} {float(row['Requests/s']):8.1f} "
              f"{row['50%']:>7} {row['95%']:>7} {row['99%']:>7}")
    return int(next(r for r in rows if r["Name"] == "Aggregated")["Failure Count"])


if __name__ == "__main__":
    raise SystemExit(main())
