"""``make test-matrix``: the tests on each Python the package supports (3.11, 3.12, 3.13).

Outside CI, which runs ``make test`` on the image's Python (3.11) alone. For each version
the ``tests`` session makes a venv, installs requirements.txt (the same exact pins as
``make install``) and runs:

* every test except those marked ``slow`` (``pytest -m "not slow"``), so tests that need
  a tool this machine lacks (promtool, hadolint...) skip there as they do in ``make test``;
* then tests/test_distribution.py, which is marked slow but is the point of a matrix: the
  wheel, installed on that Python, gives a working ``wsgiproxy`` command.

``make test-matrix ARGS="tests/test_router.py -x"`` runs pytest with those arguments
instead. A version with no interpreter here is reported as skipped, not failed
(``error_on_missing_interpreters = False``; nox's default is an error), and nothing is
downloaded to get one (``download_python = "never"``). Interpreters are looked for on
PATH, then among pyenv's installed versions, which pyenv's shims hide unless selected.
The venvs live in ``.venv/nox`` (ignored, removed by ``make clean``) and are reused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = ["tests"]
nox.options.envdir = ".venv/nox"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = False
nox.options.download_python = "never"


def _runs(command: str) -> bool:
    """True if ``command`` on PATH is an interpreter that starts (a pyenv shim for a
    version that is not selected is on PATH, but exits 127)."""
    path = shutil.which(command)
    if path is None:
        return False
    try:
        return subprocess.run([path, "-c", ""], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pyenv_python(version: str) -> Path | None:
    """The newest pyenv-installed ``pythonX.Y`` of ``version`` (X.Y), if any."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = []
    for python in root.glob(f"versions/{version}.*/bin/python{version}"):
        patch = re.fullmatch(rf"{re.escape(version)}\.(\d+)", python.parent.parent.name)
        if patch is not None:
            found.append((int(patch.group(1)), python))
    return max(found)[1] if found else None


def _put_pythons_on_path(versions: list[str]) -> None:
    extra = []
    for version in versions:
        if not _runs(f"python{version}") and (python := _pyenv_python(version)) is not None:
            extra.append(str(python.parent))
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])


_put_pythons_on_path(PYTHONS)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The tests (all but the slow ones, then the distribution's) on one Python."""
    session.install("--quiet", "-r", "requirements.txt")
    if session.posargs:
        session.run("python", "-m", "pytest", *session.posargs)
        return
    session.run("python", "-m", "pytest", "-q", "-m", "not slow")
    session.run("python", "-m", "pytest", "-q", "tests/test_distribution.py")
