"""``make demo``: three sample backends and the proxy in front of them; Ctrl-C stops all.

The backends listen on the ports of ``config/proxyConfig.yaml`` (9091-9093), the proxy
on its ``listen`` address (127.0.0.1:8080), metrics on METRICS_ADDR (:8090).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKEND_PORTS = (9091, 9092, 9093)


def start_all(proxy_argv: list[str]) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-m", "wsgiproxy.sample_backend",
                               "--port", str(port), "--name", f"backend-{port}"], cwd=REPO)
             for port in BACKEND_PORTS]
    procs.append(subprocess.Popen(proxy_argv, cwd=REPO))
    return procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    procs = start_all([sys.executable, "-m", "wsgiproxy"])
    print("demo: try  curl -H 'Host: my-service.my-company.com' "
          "'http://127.0.0.1:8080/proxy/api/v1/users?a=1'   (Ctrl-C stops everything)",
          flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("demo: a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
