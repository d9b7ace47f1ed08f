"""A real wsgiproxy in a subprocess: ``python -m wsgiproxy`` or gunicorn.

Usage::

    with ProxyProcess(tmp_path, {"svc.test": [backend.port]}) as proxy:
        requests.get(proxy.url("/proxy/x"), headers={"Host": "svc.test"})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .backends import HTTPBackend, echo
from .net import reserve_port, wait_until

__all__ = ["REPO", "SERVERS", "ProxyProcess", "proxy_in_front", "routes_yaml", "server_argv"]

REPO = Path(__file__).resolve().parents[2]
#: The two ways the proxy is run (docs/running.md): tests parametrized over both.
SERVERS = ["pywsgi", "gunicorn"]


def routes_yaml(listen_port: int, services: dict[str, list | dict]) -> str:
    """A routes file: {domain: hosts} or {domain: {"hosts": hosts, **other keys}};
    a host is a port, an (address, port) pair or a mapping; names are the domains."""
    def host(h):
        if isinstance(h, dict):
            return {"address": "127.0.0.1", **h}
        if isinstance(h, tuple):
            return {"address": h[0], "port": h[1]}
        return {"address": "127.0.0.1", "port": h}

    out = []
    for domain, spec in services.items():
        spec = spec if isinstance(spec, dict) else {"hosts": spec}
        out.append({"name": domain.replace(".", "-"), "domain": domain,
                    "hosts": [host(h) for h in spec["hosts"]],
                    **{k: v for k, v in spec.items() if k != "hosts"}})
    return yaml.safe_dump({"proxy": {"listen": {"address": "127.0.0.1", "port": listen_port},
                                     "services": out}}, sort_keys=False)


def server_argv(server: str, *, workers: int = 1, bind: str | None = None,
                extra_args: list[str] | None = None, app: str = "wsgiproxy:app") -> list[str]:
    """The documented command for ``server`` (one of :data:`SERVERS`), to run from the
    project root: ``python -m wsgiproxy``, or ``gunicorn -k gevent -w N [-b bind]
    wsgiproxy:app`` (gunicorn reads gunicorn.conf.py from there by itself; without
    ``bind`` it listens where the routes file says)."""
    if server == "pywsgi":
        return [sys.executable, "-m", "wsgiproxy"]
    if server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
                *(["-b", bind] if bind else []), *(extra_args or []), app]
    raise ValueError(f"server must be one of {SERVERS}, not {server!r}")


class ProxyProcess:
    """Start wsgiproxy on a reserved port and wait until it answers.

    :param server: "pywsgi" (``python -m wsgiproxy``) or "gunicorn"
        (``gunicorn -k gevent -w N -b ... wsgiproxy:app`` from the project root).
    :param env: settings (docs/settings.md) for the process; METRICS_ADDR defaults to a free port.
    :param workers: gunicorn workers.
    """

    def __init__(self, workdir: Path, services: dict[str, list], *, server: str = "pywsgi",
                 env: dict[str, str] | None = None, workers: int = 1,
                 extra_args: list[str] | None = None, app: str = "wsgiproxy:app") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.port = reserve_port()
        self.metrics_port = reserve_port()
        self.routes = self.workdir / f"routes-{self.port}.yaml"
        self.routes.write_text(routes_yaml(self.port, services))
        self.log_path = self.workdir / f"proxy-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
            "PYTHONUNBUFFERED": "1",
            "CONFIGURATION_FILENAME": str(self.routes),
            "METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            **(env or {}),
        }
        self.argv = server_argv(server, workers=workers, bind=f"127.0.0.1:{self.port}",
                                extra_args=extra_args, app=app)
        self.proc: subprocess.Popen | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self, wait: bool = True) -> ProxyProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode}:\n{self.log}")
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
            except OSError:
                return False  # not listening yet
            # Connected: wait for the answer rather than probe again, so that exactly
            # one probe (an unrouted request, in the metrics) is ever served.
            with s:
                s.settimeout(timeout)
                s.sendall(b"GET /__ready HTTP/1.1\r\nHost: ready\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.1")

        wait_until(up, timeout, 0.02, f"proxy on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------------
    def write_routes(self, services: dict[str, list], *, text: str | None = None) -> None:
        """Replace the routes file (atomically, as an editor's save does): ``services``
        in the usual form, or ``text`` as it is."""
        staging = self.routes.with_suffix(".tmp")
        staging.write_text(text if text is not None else routes_yaml(self.port, services))
        os.replace(staging, self.routes)

    def reload(self) -> None:
        """SIGHUP to the process the README says to signal (pywsgi, or gunicorn's master)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics_url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """Where the log ends now; :meth:`log_since` reads what comes after. A proxy
        shared by a module's tests keeps one log: a test reads only its own part."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        """The log written after ``mark`` (a :meth:`log_mark`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes (children of the master); [pid] for pywsgi."""
        if self.server == "pywsgi":
            return [self.pid]
        import psutil

        return [c.pid for c in psutil.Process(self.pid).children()]

    def access_log(self) -> list[dict]:
        """The JSON access lines written so far (stdout and stderr share the file)."""
        out = []
        # Only whole lines: the proxy may be writing the last one as we read.
        for line in self.log.splitlines(keepends=True):
            if line.startswith("{") and '"attempts"' in line and line.endswith("\n"):
                out.append(json.loads(line))
        return out

    def access(self, request_id: str, timeout: float = 10.0) -> dict:
        """The access line of one request, waiting for it to be written."""
        def find():
            hits = [e for e in self.access_log() if e["request_id"] == request_id]
            return hits[-1] if hits else None
        return wait_until(find, timeout, message=f"access line of {request_id}")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_until(lambda: text in self.log and self.log, timeout,
                          message=f"{text!r} in the proxy log")


@contextlib.contextmanager
def proxy_in_front(workdir: Path, domain: str, respond=None, *, backends: int = 3,
                   server: str = "pywsgi", env: dict[str, str] | None = None):
    """``backends`` recording HTTP backends and a proxy routing ``domain`` to them;
    the proxy's ``.backends`` lists them. Everything is stopped on exit."""
    started = [HTTPBackend(respond or echo, name=f"b{i}").start() for i in range(backends)]
    proxy = ProxyProcess(workdir, {domain: [b.port for b in started]}, server=server, env=env)
    proxy.backends = started
    try:
        yield proxy.start()
    finally:
        proxy.stop()
        for b in started:
            b.stop()


def wait_closed(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still running")
