"""docs/writing-a-filter.md, as a reader follows it: the page's files are written out,
its tests pass, mypy --strict passes, and a real proxy routes through the filter by the
entry point its pyproject.toml declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from support.backends import HTTPBackend
from support.client import get
from support.proxy import REPO, ProxyProcess

PAGE = REPO / "docs" / "writing-a-filter.md"


def page_files() -> dict[str, str]:
    """Every fenced block with a ``title="path"``: its path and text."""
    blocks = re.findall(r'^```\w+ title="([^"]+)"\n(.*?)^```$', PAGE.read_text(), re.M | re.S)
    return dict(blocks)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The reader's acme-filters directory, 'installed' the way pip would leave it: on
    the path, with a .dist-info that carries the entry points."""
    root = tmp_path_factory.mktemp("acme-filters")
    for path, text in page_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    info = root / f"acme_filters-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\n"
                                   f"Version: {meta['version']}\n")
    points = meta["entry-points"]["wsgiproxy.filters"]
    (info / "entry_points.txt").write_text(
        "[wsgiproxy.filters]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return root


def test_the_page_shows_every_file_it_uses():
    assert set(page_files()) == {"acme_filters/__init__.py", "tests/test_json_only.py",
                                 "pyproject.toml", "routes.yaml"}


def test_the_pages_tests_pass(project):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                           "-p", "no:cacheprovider", "tests"], cwd=project,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{project}:{REPO}"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_the_pages_filter_passes_mypy_strict(project):
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "acme_filters"],
                          cwd=project, env={"PATH": "/usr/bin:/bin",
                                            "MYPYPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_proxy_routes_through_it_by_its_entry_point(project, tmp_path):
    routes = yaml.safe_load(page_files()["routes.yaml"])
    [service] = routes["proxy"]["services"]
    with HTTPBackend() as host:
        services = {service["domain"]: {"hosts": [host.port], "filters": service["filters"]}}
        with ProxyProcess(tmp_path, services, env={"PYTHONPATH": str(project)}) as proxy:
            refused = get(proxy, "/proxy/orders", host="api.localhost", method="POST",
                          data=b"hi", headers={"Content-Type": "text/plain"})
            assert refused.status_code == 415
            assert refused.json() == {"error": "request bodies must be application/json"}
            assert host.count == 0
            passed = get(proxy, "/proxy/orders", host="api.localhost", method="POST",
                         data=b"{}", headers={"Content-Type": "application/json"})
            assert passed.status_code == 200
            assert host.count == 1
