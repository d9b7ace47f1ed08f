"""``make demo``: a sample backend for every host of the routes file, and the proxy in
front of them (docs/try-it.md). Ctrl-C stops everything.

The routes file is the proxy's (CONFIGURATION_FILENAME, ``config/proxyConfig.yaml`` by
default): each host on this machine gets a sample backend named ``backend-<port>``, so
``config/proxyConfig.yaml`` gives 9091-9093 for ``my-service`` and 9094 for ``chat`` (its
WebSocket echo). The proxy listens where the file says (127.0.0.1:8080), metrics on
METRICS_ADDR (:8090). Everything runs in the current directory, with its environment.

A backend that stops (``pkill -f 'sample_backend --port 9092'``) is reported and the rest
keep running, so failover can be watched; the demo ends when the proxy does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOCAL = ("127.0.0.1", "localhost", "::1")
TRY = ("curl -s -H 'Host: my-service.my-company.com' "
       "'http://{listen}/proxy/api/v1/users?a=1'")


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def backend_ports(routes_file: Path) -> tuple[list[int], str]:
    """The ports of the routes file's hosts on this machine, and the proxy's address."""
    import yaml

    proxy = yaml.safe_load(routes_file.read_text(encoding="utf-8"))["proxy"]
    ports = sorted({h["port"] for s in proxy["services"] for h in s["hosts"]
                    if str(h["address"]) in LOCAL})
    return ports, f"{proxy['listen']['address']}:{proxy['listen']['port']}"


def wait_listening(address: str, proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether ``proc`` accepts connections on ``address`` within ``seconds``."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def taken(address: str) -> str | None:
    """Why ``address`` cannot be listened on (a demo already running?), or None."""
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def how(code: int) -> str:
    return f"by signal {-code}" if code < 0 else f"with exit status {code}"


def main() -> int:
    routes_file = Path(os.environ.get("CONFIGURATION_FILENAME", "config/proxyConfig.yaml"))
    try:
        ports, listen = backend_ports(routes_file)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        print(f"demo: cannot read the hosts of {routes_file}: {exc}", file=sys.stderr)
        return 2
    for address in [f"127.0.0.1:{port}" for port in ports] + [listen]:
        reason = taken(address)
        if reason:
            print(f"demo: cannot listen on {address} ({reason}): is a demo running "
                  "already?", file=sys.stderr)
            return 2
    procs: dict[str, subprocess.Popen[bytes]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the rest too
    # Ctrl-C stops everything even when started in the background of a script, which
    # starts its children with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for port in ports:
            name = f"backend-{port}"
            procs[name] = subprocess.Popen([sys.executable, "-m", "wsgiproxy.sample_backend",
                                            "--port", str(port), "--name", name])
        for port in ports:  # their lines first, then the proxy's
            if not wait_listening(f"127.0.0.1:{port}", procs[f"backend-{port}"], 30):
                say(f"backend-{port} did not start (is port {port} taken?); stopping")
                return 1
        proxy = procs["the proxy"] = subprocess.Popen([sys.executable, "-m", "wsgiproxy"])
        if not wait_listening(listen, proxy, 30):
            say("the proxy did not start; stopping the backends")
            return 1
        say(f"ready: {len(ports)} sample backends and the proxy on http://{listen}/ "
            "(Ctrl-C stops everything); try")
        print("  " + TRY.format(listen=listen), flush=True)
        running = dict(procs)
        while proxy.poll() is None:
            for name, p in list(running.items()):
                if name != "the proxy" and p.poll() is not None:
                    del running[name]
                    others = len(running) - 1
                    say(f"{name} stopped ({how(p.returncode)}); the proxy and {others} "
                        f"other backend{'' if others == 1 else 's'} keep running")
            time.sleep(0.2)
        say(f"the proxy stopped ({how(proxy.returncode)}); stopping the backends")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
