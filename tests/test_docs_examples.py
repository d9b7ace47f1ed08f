"""docs/development.md: every shell example of the README and docs/ runs, against the
demo in a workspace of its page's own, and prints what its page shows."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from support.doc_examples import Workspace, matches, read_page, report
from support.proxy import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    try:
        yield ws
    finally:
        ws.close()


def run_page(path, workspace) -> None:
    for example in read_page(path).examples:
        actual, why = workspace.run(example)
        assert not why, report(example, workspace, actual, why)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", [p for p in PAGES if read_page(p).examples],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_prints_what_its_page_shows(path, workspace):
    run_page(path, workspace)


def test_every_shell_block_runs_or_says_why_not():
    unmarked = [where for p in PAGES for where in read_page(p).unmarked]
    assert not unmarked, ("shell blocks that are neither `console` examples nor marked "
                          f"<!-- not run: why -->: {unmarked}")


@pytest.mark.parametrize(("expected", "actual", "ok"), [
    pytest.param(["a", "b"], ["a", "b"], True, id="same"),
    pytest.param(["a"], ["a", "b"], False, id="a line more"),
    pytest.param(["a ... c"], ["a bbb c"], True, id="... within a line"),
    pytest.param(["...", "c"], ["a", "b", "c"], True, id="... lines"),
    pytest.param(["...", "c"], ["c"], True, id="... as no line"),
    pytest.param(["a", "..."], ["a"], True, id="... at the end"),
    pytest.param(["a (1)"], ["a (1)"], True, id="regex characters are literal"),
    pytest.param(["X-Cache: HIT"], ["X-Cache: MISS"], False, id="different"),
])
def test_the_wildcards(expected, actual, ok):
    assert matches(expected, actual) is ok


@pytest.mark.timeout(120)
def test_the_old_wrong_examples_fail(tmp_path, workspace):
    """What the pages used to claim: ``ok: 1 services``, and a HIT for a lifetime longer
    than HTTP_CACHE_TTL_SECONDS keeps an entry (here both scaled down: a 1 s setting, a
    5 s lifetime), which is a MISS once the setting has run out."""
    page = tmp_path / "old.md"
    page.write_text(textwrap.dedent("""\
        ```console
        $ .venv/bin/python -m wsgiproxy --check-config
        ok: 1 services
        $ HTTP_CACHE_TTL_SECONDS=1 make demo
        ...
        $ curl -si -H 'Host: my-service.my-company.com' \\
            'http://127.0.0.1:8080/proxy/cacheable?cdn-max-age=5' | grep X-Cache
        X-Cache: MISS
        $ sleep 2
        $ curl -si -H 'Host: my-service.my-company.com' \\
            'http://127.0.0.1:8080/proxy/cacheable?cdn-max-age=5' | grep X-Cache
        X-Cache: HIT
        ```
        """))
    results = [workspace.run(example) for example in read_page(page).examples]
    assert results[0][0][0] == "ok: 3 services"
    assert results[0][1] == "output differs"
    assert [why for _, why in results[1:4]] == ["", "", ""]
    assert results[4] == (["X-Cache: MISS"], "output differs")


def test_the_routes_file_is_tracked_and_not_ignored():
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "config/proxyConfig.yaml"],
                             cwd=REPO, capture_output=True, check=False)
    ignored = subprocess.run(["git", "check-ignore", "-q", "config/proxyConfig.yaml"],
                             cwd=REPO, check=False)
    assert (tracked.returncode, ignored.returncode) == (0, 1)
