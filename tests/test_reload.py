"""docs/reload.md: the routes file reloads while the proxy serves, on SIGHUP and when its
content changes, under both servers. A bad file is refused with one line and the routes
in use keep serving; a good one is used within seconds, with no request failing, and
services that did not change keep their ejected hosts and their cached entries."""

from __future__ import annotations

import os
import re
import threading

import pytest
import requests

from support.backends import Reply, cacheable
from support.client import session
from support.net import reserve_port, wait_until
from support.proxy import SERVERS, ProxyProcess

A, B = "a.test", "b.test"


def metric(p, name: str, **labels) -> float | None:
    text = requests.get(p.metrics_url()).text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}{{{selector}}} (\S+)$" if labels else rf"^{name} (\S+)$",
                      text, re.M)
    return float(found.group(1)) if found else None


def who(p, domain: str, path: str = "/proxy/who") -> str:
    r = requests.get(p.url(path), headers={"Host": domain})
    return f"{r.status_code} {r.headers.get('X-Backend', '')}"


def named(name: str):
    return lambda seen: Reply(200, [("X-Backend", name)], name.encode())


@pytest.mark.parametrize("server", SERVERS)
def test_sighup_reloads_the_routes(backend, start_proxy, server):
    one, two, three = backend(named("one")), backend(named("two")), backend(named("three"))
    p = start_proxy({A: [one.port]}, server=server)
    assert who(p, A) == "200 one"
    assert who(p, B).startswith("404")
    p.write_routes({A: [two.port], B: [three.port]})
    p.reload()
    wait_until(lambda: who(p, A) == "200 two" and who(p, B) == "200 three", 5, 0.05,
               "the new routes")
    p.wait_log("routes reloaded (SIGHUP): 2 services")
    assert metric(p, "proxy_config_reloads_total", result="success") == 1
    assert metric(p, "proxy_config_last_reload_successful") == 1


@pytest.mark.parametrize("server", SERVERS)
def test_a_bad_routes_file_is_refused_and_the_old_routes_keep_serving(backend, start_proxy,
                                                                       server):
    good = backend(named("good"))
    p = start_proxy({A: [good.port]}, server=server)
    p.write_routes({}, text=p.routes.read_text().replace(f"port: {good.port}", "port: 70000"))
    p.reload()
    line = p.wait_log("routes not reloaded (SIGHUP)")
    refused = [x for x in line.splitlines() if "routes not reloaded" in x]
    assert len(refused) == 1
    assert "proxy.services[0].hosts[0].port: must be an integer from 1 to 65535" in refused[0]
    assert "still serving the previous routes" in refused[0]
    wait_until(lambda: metric(p, "proxy_config_reloads_total", result="failure") == 1, 5,
               0.05, "the failure to be counted")
    assert metric(p, "proxy_config_last_reload_successful") == 0
    assert who(p, A) == "200 good"
    assert p.proc.poll() is None
    if server == "gunicorn":  # a worker started after the bad edit still boots, on good routes
        [worker] = p.worker_pids()
        os.kill(worker, 9)
        wait_until(lambda: p.worker_pids() not in ([], [worker]), 10, 0.05, "a new worker")
        wait_until(lambda: who(p, A) == "200 good", 20, 0.05, "the new worker to serve")


@pytest.mark.parametrize("server", SERVERS)
def test_a_configmap_style_symlink_swap_is_reloaded_without_a_signal(backend, server,
                                                                     tmp_path):
    one, two = backend(named("one")), backend(named("two"))
    # Kubernetes mounts a ConfigMap as a directory: the file is a symlink through
    # "..data", and an update swaps "..data" to a new timestamped directory.
    mount = tmp_path / "mount"
    first, second = mount / "..2026_12_01_1", mount / "..2026_12_01_2"
    first.mkdir(parents=True)
    p = ProxyProcess(tmp_path / "proxy", {A: [one.port]}, server=server,
                     env={"CONFIG_WATCH_SECONDS": "0.2",
                          "CONFIGURATION_FILENAME": str(mount / "routes.yaml")})
    (first / "routes.yaml").write_text(p.routes.read_text())
    (mount / "..data").symlink_to(first.name)
    (mount / "routes.yaml").symlink_to("..data/routes.yaml")
    try:
        p.start()
        assert who(p, A) == "200 one"
        second.mkdir()
        (second / "routes.yaml").write_text(p.routes.read_text().replace(str(one.port),
                                                                         str(two.port)))
        (mount / "..data_tmp").symlink_to(second.name)
        os.replace(mount / "..data_tmp", mount / "..data")
        wait_until(lambda: who(p, A) == "200 two", 5, 0.05, "the swapped routes")
        p.wait_log("routes reloaded (file changed)")
    finally:
        p.stop()


@pytest.mark.parametrize("server", SERVERS)
def test_no_request_fails_while_routes_reload_under_load(backend, start_proxy, server):
    hosts = [backend(named(f"h{i}")) for i in range(3)]
    p = start_proxy({A: [hosts[0].port, hosts[1].port]}, server=server)
    failures, served, done = [], [], threading.Event()

    def client():
        with session(A) as s:
            while not done.is_set():
                try:
                    r = s.get(p.url("/proxy/load"))
                    (served if r.ok else failures).append(r.status_code)
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            ports = [hosts[i % 3].port, hosts[(i + 1) % 3].port]
            p.write_routes({A: ports, B: ports[:1]} if i % 2 else {A: ports})
            p.reload()
            wait_until(lambda n=i + 1: metric(p, "proxy_config_reloads_total",
                                              result="success") == n,
                       5, 0.02, f"reload {i + 1}")
            count = len(served)
            wait_until(lambda c=count: len(served) > c + 20, 10, 0.01, "load after reload")
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert len(served) > 120


@pytest.mark.parametrize("server", SERVERS)
def test_a_request_in_flight_finishes_on_the_old_routes(backend, start_proxy, server):
    gate = threading.Event()

    def slow(seen):
        if seen.target == "/slow":
            gate.wait(10)
        return Reply(200, [("X-Backend", "old")], b"old host")

    old, new = backend(slow), backend(named("new"))
    p = start_proxy({A: [old.port]}, server=server)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=requests.get(
        p.url("/proxy/slow"), headers={"Host": A}, timeout=20)))
    t.start()
    wait_until(lambda: old.count == 1, 5, 0.01, "the request to reach the old host")
    p.write_routes({A: [new.port]})
    p.reload()
    wait_until(lambda: who(p, A) == "200 new", 5, 0.05, "the new routes")
    gate.set()
    t.join(20)
    assert (result["r"].status_code, result["r"].content) == (200, b"old host")


@pytest.mark.parametrize("server", SERVERS)
def test_unchanged_services_keep_ejected_hosts_and_cached_entries(backend, start_proxy, server):
    live, dead = backend(cacheable), reserve_port()
    other = backend()
    p = start_proxy({A: [dead, live.port]}, server=server, env={"HOST_EJECT_SECONDS": "60"})
    with session(A) as s:
        assert s.get(p.url("/proxy/cached")).ok  # stored; the dead host refused and is out
        assert s.get(p.url("/proxy/cached")).headers["X-Cache"] == "HIT"
        p.write_routes({A: [dead, live.port], B: [other.port]})
        p.reload()
        wait_until(lambda: who(p, B).startswith("200"), 5, 0.05, "the new service")
        before = live.count
        assert s.get(p.url("/proxy/cached")).headers["X-Cache"] == "HIT"
        for i in range(4):
            r = s.get(p.url(f"/proxy/fresh-{i}"), headers={"X-Request-ID": f"k{i}"})
            assert r.ok
    assert live.count == before + 4
    tried = [a for i in range(4) for a in p.access(f"k{i}")["upstream_attempts"]]
    assert not [a for a in tried if a.startswith(f"127.0.0.1:{dead} ")]  # still ejected


def test_a_middleware_around_the_app_keeps_reloads(backend, start_proxy):
    """gunicorn's hooks find the proxy app the worker built, not the object gunicorn
    serves: wrapped in a middleware, it still reloads."""
    one, two = backend(named("one")), backend(named("two"))
    p = start_proxy({A: [one.port]}, server="gunicorn", app="apps.wrapped:app",
                    extra_args=["--pythonpath", "tests"])
    first = requests.get(p.url("/proxy/who"), headers={"Host": A})
    assert (first.text, first.headers["X-Wrapped"]) == ("one", "yes")
    p.write_routes({A: [two.port]})
    p.reload()
    wait_until(lambda: who(p, A) == "200 two", 5, 0.05, "the wrapped app on the new routes")
