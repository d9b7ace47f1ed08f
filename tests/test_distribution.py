"""docs/development.md, "Installing it as a package": the wheel ``pip install .`` builds,
installed in a venv of its own and run from another directory, is a working ``wsgiproxy``
command; its metadata declares what the proxy needs at run time.

No network: the wheel is built with the dev venv's hatchling (``--no-build-isolation``),
installed with ``--no-index --no-deps``, and the new venv finds the dependencies in the
running venv's site-packages through a ``.pth`` file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from wsgiproxy import __version__

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ROUTES = ("proxy: {listen: {address: 127.0.0.1, port: 8080}, services: [{name: a, "
          "domain: a.test, hosts: [{address: 127.0.0.1, port: %s}]}]}\n")
# In requirements-runtime.txt for the image, not a dependency of wsgiproxy's own: gevent's.
TRANSITIVE_PINS = {"greenlet"}


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], **env})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                 "--no-build-isolation", "--wheel-dir", str(out), str(REPO)], out)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("wsgiproxy-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel installed and nothing else but a ``.pth`` file."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               venv).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    installed = run([sys.executable, "-m", "pip", "--python", str(python), "install",
                     "--quiet", "--no-index", "--no-deps", str(wheel)], venv)
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES % 9000)
    return path


def test_the_command_checks_a_routes_file_from_any_directory(venv, routes, tmp_path):
    command = str(venv / "bin" / "wsgiproxy")
    ok = run([command, "--check-config"], tmp_path, CONFIGURATION_FILENAME=str(routes))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ok: 1 service\n", "")

    bad = tmp_path / "bad.yaml"
    bad.write_text(ROUTES % "nine")
    refused = run([command, "--check-config"], tmp_path, CONFIGURATION_FILENAME=str(bad))
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (f"wsgiproxy: {bad}: proxy.services[0].hosts[0].port: "
                              "must be an integer from 1 to 65535\n")

    version = run([command, "--version"], tmp_path)
    assert (version.returncode, version.stdout) == (0, f"wsgiproxy {__version__}\n")
    helped = run([command, "--help"], tmp_path)
    assert helped.returncode == 0
    assert "--check-config" in helped.stdout


def test_the_command_runs_the_installed_package_not_the_checkout(venv, tmp_path):
    where = run([str(venv / "bin" / "python"), "-c",
                 "import wsgiproxy.routes_file as m; print(m.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stderr


def test_the_wheel_carries_the_schema_the_type_marker_and_the_entry_point(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = whl.read(info).decode()
    assert {"wsgiproxy/routes.schema.json", "wsgiproxy/py.typed", "wsgiproxy/cli.py",
            "wsgiproxy/__main__.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    assert re.search(r"^\[console_scripts\]\nwsgiproxy = wsgiproxy\.cli:main$", entry_points,
                     re.MULTILINE), entry_points


def test_the_metadata_admits_every_runtime_pin(wheel):
    with zipfile.ZipFile(wheel) as whl:
        info = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(whl.read(info).decode())
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"
    classifiers = metadata.get_all("Classifier")
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {minor}" in classifiers
    requires = {canonicalize_name(r.name): r
                for r in map(Requirement, metadata.get_all("Requires-Dist"))}
    assert {"gevent", "requests", "urllib3", "cachecontrol"} <= requires.keys()

    pins = {}
    for line in (REPO / "requirements-runtime.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            pins[canonicalize_name(pin.name)] = pin
    assert requires.keys() == pins.keys() - TRANSITIVE_PINS
    for name, pin in pins.items():
        if name in TRANSITIVE_PINS:
            continue
        (exact,) = pin.specifier
        # A pin bumped past its range, or a range that no longer admits the image's pin.
        assert requires[name].specifier.contains(exact.version), (name, exact.version)
        assert requires[name].extras == pin.extras, name
