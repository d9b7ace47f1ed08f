"""docs/running.md and docs/reload.md: the documented commands are the whole product.
Real processes: the
bare ``gunicorn -k gevent wsgiproxy:app`` from the project root and ``python -m
wsgiproxy``, their ports, their readiness, their command line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from support.net import reserve_port, wait_until
from support.proxy import REPO, SERVERS, ProxyProcess, routes_yaml

DOMAIN = "svc.test"


def run(argv, env, timeout=30):
    """Run a command from the project root with only ``env`` (and PATH)."""
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": os.environ["PATH"], **env})


@pytest.fixture
def routes(tmp_path, backend):
    path = tmp_path / "routes.yaml"
    path.write_text(routes_yaml(reserve_port(), {DOMAIN: [backend().port]}))
    return path


# -- the bare gunicorn command ---------------------------------------------------------
def test_bare_gunicorn_command_has_metrics_of_every_process(backend, start_proxy):
    p = start_proxy({DOMAIN: [backend().port]}, server="gunicorn", workers=2)
    assert p.argv[1:] == ["-m", "gunicorn", "-k", "gevent", "-w", "2", "-b",
                          f"127.0.0.1:{p.port}", "wsgiproxy:app"]  # the bare command
    with requests.Session() as s:
        for _ in range(10):
            assert s.get(p.url("/proxy/x"), headers={"Host": DOMAIN}).ok
    workers = p.worker_pids()
    assert len(workers) == 2

    def scraped():
        text = requests.get(p.metrics_url()).text
        total = re.search(r'proxy_requests_total\{code="200",method="GET",service="svc-test"\}'
                          r" (\S+)", text)
        return text if total and float(total.group(1)) == 10 else None

    text = wait_until(scraped, 10, 0.05, "the requests of both workers in one scrape")
    for pid, role in [(p.pid, "master"), *[(w, "worker") for w in workers]]:
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds"):
            assert re.search(rf'{name}\{{pid="{pid}",role="{role}"\}} [0-9.e+]+', text), \
                (name, pid)
    assert requests.get(p.metrics_url("/healthz")).status_code == 200
    assert requests.get(p.metrics_url("/readyz")).status_code == 200


def test_only_the_gevent_worker_runs_the_proxy(routes):
    result = run([sys.executable, "-m", "gunicorn", "-k", "sync", "-b",
                  f"127.0.0.1:{reserve_port()}", "wsgiproxy:app"],
                 {"CONFIGURATION_FILENAME": str(routes), "METRICS_ADDR": ""})
    assert result.returncode == 2
    assert "wsgiproxy: needs gunicorn's gevent worker (-k gevent), not 'sync'" in result.stderr
    assert "Traceback" not in result.stderr


GUNICORN = str(Path(sys.executable).parent / "gunicorn")  # the script, as the docs run it


@pytest.mark.parametrize(("name", "value", "message"), [
    pytest.param("WEB_CONCURRENCY", "lots", "WEB_CONCURRENCY: must be a whole number >= 1",
                 id="WEB_CONCURRENCY (read by gunicorn itself at import)"),
    pytest.param("WORKER_CONNECTIONS", "0", "WORKER_CONNECTIONS: must be a whole number >= 1",
                 id="WORKER_CONNECTIONS"),
    pytest.param("KEEPALIVE_SECONDS", "-1", "KEEPALIVE_SECONDS: must be a whole number >= 1",
                 id="KEEPALIVE_SECONDS"),
    pytest.param("PORT", "99999", "PORT: must be empty or a port from 1 to 65535",
                 id="PORT"),
    pytest.param("TRUSTED_PROXIES", "10.0.0.0/8, lb", "TRUSTED_PROXIES: 'lb' is not an IP",
                 id="TRUSTED_PROXIES"),
])
def test_a_bad_server_setting_is_one_line_and_exit_2(routes, name, value, message):
    result = run([GUNICORN, "-k", "gevent", "wsgiproxy:app"],
                 {"CONFIGURATION_FILENAME": str(routes), "METRICS_ADDR": "", name: value})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"wsgiproxy: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_gunicorn_conf_reads_settings_not_the_environment():
    assert "os.environ" not in (REPO / "gunicorn.conf.py").read_text()


# -- ports -------------------------------------------------------------------------------
@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("which", ["proxy", "metrics"])
def test_a_taken_port_stops_startup_with_one_line(tmp_path, backend, server, which):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    proxy_port = taken if which == "proxy" else reserve_port()
    metrics_port = taken if which == "metrics" else reserve_port()
    path = tmp_path / "routes.yaml"
    path.write_text(routes_yaml(proxy_port, {DOMAIN: [backend().port]}))
    argv = [sys.executable, "-m", "wsgiproxy"] if server == "pywsgi" else \
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "wsgiproxy:app"]
    try:
        result = run(argv, {"CONFIGURATION_FILENAME": str(path),
                            "METRICS_ADDR": f"127.0.0.1:{metrics_port}"})
    finally:
        holder.close()
    assert result.returncode == 2
    what = "the proxy" if server == "gunicorn" and which == "proxy" else \
        "proxy.listen" if which == "proxy" else "METRICS_ADDR"
    ours = [line for line in result.stderr.splitlines() if line.startswith("wsgiproxy:")]
    assert ours == [f"wsgiproxy: cannot listen on 127.0.0.1:{taken} ({what}): "
                    "address already in use"]
    assert "Traceback" not in result.stderr


def test_a_second_instance_does_not_share_the_port(backend, start_proxy):
    first = start_proxy({DOMAIN: [backend().port]}, server="gunicorn")
    result = run([sys.executable, "-m", "gunicorn", "-k", "gevent", "-b",
                  f"127.0.0.1:{first.port}", "wsgiproxy:app"],
                 {"CONFIGURATION_FILENAME": str(first.routes),
                  "METRICS_ADDR": f"127.0.0.1:{reserve_port()}"})
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{first.port} (the proxy): address already in use" \
        in result.stderr
    assert requests.get(first.url("/proxy/x"), headers={"Host": DOMAIN}).ok


def test_the_startup_line_names_the_address(backend, start_proxy):
    p = start_proxy({DOMAIN: [backend().port]}, server="gunicorn")
    p.wait_log(f"wsgiproxy listening on http://127.0.0.1:{p.port} (1 gevent worker,")


# -- readiness ---------------------------------------------------------------------------
def test_readyz_is_503_until_a_worker_serves_and_while_none_does(backend, tmp_path):
    p = ProxyProcess(tmp_path, {DOMAIN: [backend().port]}, server="gunicorn")
    p.start(wait=False)
    seen = []

    def ready_status():
        try:
            seen.append(requests.get(p.metrics_url("/readyz"), timeout=2).status_code)
        except requests.ConnectionError:
            return None
        return seen[-1] == 200

    try:
        wait_until(ready_status, 30, 0.005, "/readyz to turn 200")
        assert seen[0] == 503  # the master answered before any worker had booted
        [worker] = p.worker_pids()
        os.kill(worker, signal.SIGKILL)  # the only worker: none serves until it is replaced
        seen.clear()
        wait_until(lambda: ready_status() is False, 10, 0.005, "/readyz to turn 503")
        wait_until(ready_status, 30, 0.01, "/readyz to turn 200 again")
        assert p.worker_pids() != [worker]
        assert requests.get(p.url("/proxy/x"), headers={"Host": DOMAIN}).ok
    finally:
        p.stop()


# -- the command line --------------------------------------------------------------------
def test_check_config_says_ok_or_names_the_problem(routes, tmp_path):
    ok = run([sys.executable, "-m", "wsgiproxy", "--check-config"],
             {"CONFIGURATION_FILENAME": str(routes)})
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ok: 1 service\n", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text(routes.read_text().replace("port: ", "port: 7000", 1))
    refused = run([sys.executable, "-m", "wsgiproxy", "--check-config"],
                  {"CONFIGURATION_FILENAME": str(bad)})
    assert refused.returncode == 2
    assert refused.stderr == (f"wsgiproxy: {bad}: proxy.listen.port: must be an integer "
                              "from 1 to 65535\n")


def test_help_and_version_do_not_start_the_server():
    helped = run([sys.executable, "-m", "wsgiproxy", "--help"], {}, timeout=10)
    assert helped.returncode == 0
    assert "--check-config" in helped.stdout
    assert "SIGHUP reloads the routes file" in " ".join(helped.stdout.split())
    version = run([sys.executable, "-m", "wsgiproxy", "--version"], {}, timeout=10)
    assert (version.returncode, version.stdout) == (0, "wsgiproxy 0.1.0\n")
