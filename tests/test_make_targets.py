"""docs/running.md, "make targets": the demo keeps running when a backend stops and says
which; a target that lacks something says what in one line, without a traceback; system
packages are never installed without saying so first."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import psutil
import pytest
import requests

from support.doc_examples import Workspace
from support.net import wait_until
from support.proxy import REPO


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    try:
        yield ws
    finally:
        ws.close()


@pytest.mark.timeout(90)
def test_the_demo_says_which_backend_stopped_and_keeps_serving(workspace):
    workspace.start_demo({})
    port = workspace.ports["9092"]
    assert workspace.demo is not None
    backend = next(p for p in psutil.Process(workspace.demo.pid).children()
                   if f"--port {port}" in " ".join(p.cmdline()))
    os.kill(backend.pid, signal.SIGTERM)
    line = (f"demo: backend-{port} stopped (by signal 15); the proxy and 3 other backends "
            "keep running")
    wait_until(lambda: line in workspace.demo_output(), 15, message=line)
    url = f"http://127.0.0.1:{workspace.ports['8080']}/proxy/"
    answers = [requests.get(url, headers={"Host": "my-service.my-company.com"}, timeout=10)
               for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert workspace.demo.poll() is None


@pytest.mark.timeout(60)
def test_a_taken_port_stops_the_demo_with_one_line(workspace):
    port = int(workspace.ports["9093"])
    with socket.socket() as taken:  # reserved ports wait in TIME_WAIT: reuse it
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        demo = subprocess.run([sys.executable, "scripts/demo.py"], cwd=workspace.root,
                              env=workspace.env, capture_output=True, text=True, timeout=50,
                              check=False)
    assert demo.returncode == 2
    assert "Traceback" not in demo.stdout + demo.stderr
    assert demo.stderr.splitlines() == [f"demo: cannot listen on 127.0.0.1:{port} (Address "
                                        "already in use): is a demo running already?"]


def test_a_sample_backend_on_a_taken_port_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "wsgiproxy.sample_backend", "--port",
                               str(port), "--name", "b"], cwd=REPO, capture_output=True,
                              text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"sample backend 'b': cannot listen on 127.0.0.1:"
                                        f"{port}: Address already in use"]


def test_cache_tests_without_the_network_is_one_line(tmp_path):
    if (REPO / ".cache-tests" / "package.json").exists():
        pytest.skip("the suite is cloned already: nothing to fetch")
    done = subprocess.run([sys.executable, "scripts/cache_tests.py"], cwd=REPO,
                          env={**os.environ, "CACHE_TESTS_REPO": str(tmp_path / "nowhere")},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"make cache-tests: cannot clone the cache test suite from {tmp_path / 'nowhere'}; "
        "without the network, set CACHE_TESTS_REPO to a clone of it (fatal: repository "
        f"'{tmp_path / 'nowhere'}' does not exist)"]


def test_system_packages_are_announced_before_apt_get():
    """Each recipe that runs apt-get install says so in an echo before it, and honours
    NO_SYSTEM_PACKAGES."""
    recipes = re.split(r"\n(?=[\w-]+:)", (REPO / "Makefile").read_text())
    with_apt = [r for r in recipes if "apt-get install -y" in r]
    assert len(with_apt) >= 2  # test-tools and bench-tools
    for recipe in with_apt:
        target = recipe.split(":", 1)[0]
        announce = recipe.find("installing the Debian packages")
        assert 0 < announce < recipe.find("apt-get install -y"), target
        assert "NO_SYSTEM_PACKAGES" in recipe[:recipe.find("apt-get install -y")], target
