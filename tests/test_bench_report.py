"""``make bench`` ends by judging its figures against the targets and drawing them: both
checked here on a made-up run, so a ten-minute benchmark cannot fail at its last step.
(The benchmark itself is not run by the tests: speed is measured, not asserted.)"""

from __future__ import annotations

import json
import sys

import pytest

from support.proxy import REPO

sys.path.insert(0, str(REPO / "bench"))
bench = pytest.importorskip("bench")
chart = pytest.importorskip("chart")


def target(rps: float, p99: float, *, mib: float = 0.0, failures: int = 0, **ratios) -> dict:
    return {"rps": rps, "p50_ms": p99 / 4, "p99_ms": p99, "mib_s": mib, "cpu": 1.0,
            "requests": int(rps * 8), "rss_mib": 100.0, "failures": failures,
            "cores_per_1000_rps": 1000 / rps, **ratios}


def scenario(name: str, targets: dict, metric: str = "rps") -> dict:
    return {"name": name, "note": name, "path": "/x", "connections": 50, "metric": metric,
            "reference": "nginx", "targets": targets,
            "checks": bench.checks(name, targets, {})}


def met(s: dict) -> list[bool]:
    return [c["met"] for c in s["checks"]]


def test_small_and_cached_are_judged_against_the_ceiling():
    hello = target(10_000, 80, to_ceiling=1.0)
    assert met(scenario("small", {"hello": hello, "wsgiproxy": target(
        5_000, 160, to_ceiling=0.5)})) == [True, True, True]
    assert met(scenario("small", {"hello": hello, "wsgiproxy": target(
        4_900, 161, to_ceiling=0.49)})) == [False, False, True]
    assert met(scenario("cached", {"hello": hello, "wsgiproxy": target(
        9_000, 100, failures=1, to_ceiling=0.9)})) == [True, True, False]


def test_big_and_c1000_are_judged_against_nginx():
    nginx = target(800, 140, mib=800, to_nginx=1.0)
    assert met(scenario("big", {"nginx": nginx, "wsgiproxy": target(
        640, 280, mib=640, to_nginx=0.8)}, "mib_s")) == [True, True, True]
    assert met(scenario("c1000", {"nginx": nginx, "wsgiproxy": target(
        700, 1301, to_nginx=0.95)})) == [True, False, True]


def test_failover_needs_no_errors():
    [no_errors] = bench.checks("failover", {"wsgiproxy": target(3000, 100, failures=2)}, {})
    assert no_errors == {"check": "2 failed", "met": False}


def test_the_chart_is_a_png_of_every_scenario(tmp_path):
    summary = {"when": "now", "rounds": 3, "seconds": 8, "workers": 2,
               "machine": {"cpu": "test CPU", "cores": 2},
               "scenarios": [scenario("small", {"nginx": target(30_000, 5),
                                                "hello": target(10_000, 80),
                                                "wsgiproxy": target(3_000, 300,
                                                                    to_ceiling=0.3)}),
                             scenario("big", {"nginx": target(800, 140, mib=800),
                                              "wsgiproxy": target(700, 200, mib=700,
                                                                  to_nginx=0.9)}, "mib_s")]}
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(summary))
    out = tmp_path / "bench.png"
    chart.draw(json.loads(source.read_text()), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # two rows of plots, not an empty canvas


def test_the_aiohttp_peer_must_be_beaten_with_a_tail_within_twice_its_own():
    nginx, peer = target(30_000, 5, to_nginx=1.0), target(9_000, 13, to_peer=1.0)
    hello = target(10_000, 80, to_ceiling=1.0)
    ahead = scenario("small", {"nginx": nginx, "hello": hello, "aiohttp": peer,
                               "wsgiproxy": target(9_500, 26, to_ceiling=0.95, to_peer=1.05)})
    assert met(ahead) == [True, True, True, True, True]
    behind = scenario("slow", {"nginx": nginx, "hello": hello, "aiohttp": peer,
                               "wsgiproxy": target(2_700, 27, to_peer=0.3)})
    assert met(behind)[:2] == [False, False]
