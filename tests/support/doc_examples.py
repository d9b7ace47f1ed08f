"""The shell examples of the Markdown pages, read and run as a newcomer would run them
(docs/development.md, "Examples that run").

A page's examples are fenced ``console`` blocks: a line starting with ``$ `` is a
command (a trailing ``\\`` continues it on the next line), the lines after it, up to
the next command, are what it prints (stdout and stderr together). In what it prints,
``...`` stands for any text within a line, and a line of just ``...`` for any number
of lines. A command must exit 0: a page that shows a failure writes
``...; echo "exit $?"``.

Blocks in ``sh`` (or ``bash``, ``shell``) are not run, and each must follow a comment
that says why: ``<!-- not run: needs a Docker engine -->``.

``make demo``, with any ``NAME=value`` settings before it, starts the demo (stopping the
one before) rather than running make: what it shows is matched against the demo's
output up to its ``demo: ready`` lines. A page that uses 127.0.0.1:8080 without
starting the demo itself gets one with the default settings. Each page runs in a
workspace of its own, which links to everything in the project but ``config/`` (a
copy, so a page may edit the routes file), with the demo's ports (8080, 8090,
9091-9094) moved to free ones in the commands, the output and the routes file alike.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .net import reserve_port, wait_until
from .proxy import REPO

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Example", "Page", "Workspace", "matches", "read_page"]

RUN, NOT_RUN = ("console",), ("sh", "bash", "shell")
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
_DEMO = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)*)make demo\s*(?:#.*)?$")
#: The demo's ports, as the pages write them (ascending, like their replacements).
DEMO_PORTS = ("8080", "8090", "9091", "9092", "9093", "9094")


@dataclass
class Example:
    """One command of a page and what the page says it prints."""

    path: Path
    line: int
    command: str
    expected: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass
class Page:
    path: Path
    examples: list[Example]
    unmarked: list[str]  # file:line of sh blocks that do not say why they are not run


def read_page(path: Path) -> Page:
    """The page's ``console`` examples, and the ``sh`` blocks without a reason."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    unmarked: list[str] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(2), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"),
                   len(lines))
        body = [line[len(fence.group(1)):] for line in lines[start + 1:end]]
        if lang in RUN:
            examples += _parse_console(path, start + 2, body)
        elif lang in NOT_RUN:
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            if not _NOT_RUN.search(before):
                unmarked.append(f"{path.relative_to(REPO)}:{start + 1}")
        i = end + 1
    return Page(path, examples, unmarked)


def _parse_console(path: Path, first_line: int, body: list[str]) -> list[Example]:
    out: list[Example] = []
    k = 0
    while k < len(body):
        line = body[k]
        if line.startswith("$ "):
            command, number = line[2:], first_line + k
            while command.endswith("\\") and k + 1 < len(body):
                k += 1
                command = command + "\n" + body[k]
            out.append(Example(path, number, command))
        elif out:
            out[-1].expected.append(line.rstrip())
        k += 1
    return out


def _line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is what ``expected`` shows, with its ``...`` wildcards."""
    patterns = [None if e.strip() == "..." else _line_pattern(e) for e in expected]
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(patterns):
                memo[i, j] = j == len(actual)
            elif patterns[i] is None:
                memo[i, j] = match(i + 1, j) or (j < len(actual) and match(i, j + 1))
            else:
                pattern = patterns[i]
                assert pattern is not None
                memo[i, j] = (j < len(actual) and pattern.fullmatch(actual[j]) is not None
                              and match(i + 1, j + 1))
        return memo[i, j]

    return match(0, 0)


class Workspace:
    """A page's own copy of the project to run its examples in, and its demo."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for entry in REPO.iterdir():
            if entry.name not in ("config", ".git", ".env") and not entry.name.startswith(
                    ".pytest"):
                (root / entry.name).symlink_to(entry)
        free = sorted(reserve_port() for _ in DEMO_PORTS[2:])
        self.ports = dict(zip(DEMO_PORTS, [str(reserve_port()), str(reserve_port()),
                                           *map(str, free)], strict=True))
        shutil.copytree(REPO / "config", root / "config", symlinks=True)
        routes = root / "config" / "proxyConfig.yaml"
        routes.write_text(self.moved(routes.read_text()))
        self.env = {**{k: v for k, v in os.environ.items()
                       if k in ("PATH", "HOME", "LANG", "TMPDIR")},
                    "PYTHONUNBUFFERED": "1", "METRICS_ADDR": f":{self.ports['8090']}"}
        self.demo: subprocess.Popen[bytes] | None = None
        self.demo_log = root / "demo.log"

    def moved(self, text: str) -> str:
        """``text`` with the demo's ports replaced by this workspace's."""
        return re.sub(r"(?<![\d.])(" + "|".join(DEMO_PORTS) + r")(?!\d)",
                      lambda m: self.ports[m.group(1)], text)

    # -- the demo ----------------------------------------------------------------------
    def start_demo(self, settings: dict[str, str]) -> list[str]:
        """Start the demo with ``settings``; its output up to its ``ready`` lines."""
        self.stop_demo()
        log = open(self.demo_log, "wb")  # noqa: SIM115 - the demo owns it
        self.demo = subprocess.Popen([sys.executable, "scripts/demo.py"], cwd=self.root,
                                     env={**self.env, **settings}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def ready() -> list[str] | None:
            assert self.demo is not None
            lines = self.demo_output()
            for n, line in enumerate(lines):
                if line.startswith("demo: ready") and len(lines) > n + 1:
                    return lines[:n + 2]
            if self.demo.poll() is not None:
                raise AssertionError("the demo exited:\n" + "\n".join(lines))
            return None

        return wait_until(ready, 60, 0.05, "the demo's ready lines")

    def demo_output(self) -> list[str]:
        return self.demo_log.read_text(errors="replace").splitlines()

    def stop_demo(self) -> None:
        if self.demo is None:
            return
        if self.demo.poll() is None:
            self.demo.send_signal(signal.SIGTERM)  # the demo stops its backends and proxy
            try:
                self.demo.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.demo.pid, signal.SIGKILL)
                self.demo.wait(5)
        self.demo = None

    # -- examples ----------------------------------------------------------------------
    def run(self, example: Example, timeout: float = 60) -> tuple[list[str], str]:
        """Run one example: what it printed, and why it failed ("" if it did not)."""
        command = self.moved(example.command)
        expected = [self.moved(e) for e in example.expected]
        demo = _DEMO.match(command.strip())
        if demo:
            settings = dict(part.split("=", 1) for part in shlex.split(demo.group(1)))
            actual = self.start_demo(settings)
        else:
            if self.demo is None and ("127.0.0.1:" + self.ports["8080"]) in command:
                self.start_demo({})
            # On stdin, not as `bash -c`: a `pkill -f PATTERN` must not match its own shell.
            done = subprocess.run(["bash"], input=command.encode(), cwd=self.root,
                                  env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
            actual = [line.rstrip() for line in
                      done.stdout.decode(errors="replace").splitlines()]
            if done.returncode != 0:
                return actual, f"exit status {done.returncode}"
        if not matches(expected, actual):
            return actual, "output differs"
        return actual, ""

    def close(self) -> None:
        self.stop_demo()


def report(example: Example, workspace: Workspace, actual: list[str], why: str) -> str:
    """What a failed example printed against what its page shows."""
    return (f"{example.where}: {why}\n$ {workspace.moved(example.command)}\n"
            "--- the page shows:\n" + "\n".join(workspace.moved(e) for e in example.expected)
            + "\n--- it printed:\n" + "\n".join(actual) + "\n--- the demo printed:\n"
            + "\n".join(workspace.demo_output()[-30:] if workspace.demo_log.exists() else []))

