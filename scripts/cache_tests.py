"""``make cache-tests``: the public HTTP cache test suite (http-tests/cache-tests, the
suite behind cache-tests.fyi) against wsgiproxy, and a one-line summary of its required
tests.

    python scripts/cache_tests.py [--id test-id] [--server gunicorn|pywsgi]

The suite is cloned into ``.cache-tests/`` (git-ignored; never part of this repository)
from CACHE_TESTS_REPO (default: its GitHub repository) and its npm dependencies are
installed there; it needs node and npm. Its origin server runs on loopback, wsgiproxy in
front of it (one worker, MAX_HTTP_RETRIES=0 so that retries add no requests the suite
counts), and its command-line client runs through the proxy. The results are written to
``reports/cache-tests.json``; the failing required tests are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from common import REPO, Processes, reserve_port, start_wsgiproxy, wait_port

SUITE = REPO / ".cache-tests"
DEFAULT_SOURCE = "https://github.com/http-tests/cache-tests.git"

# Counts the required tests by result, as cache-tests.fyi does (dependencies honoured).
SUMMARY = """
import tests from './tests/index.mjs'
import { determineTestResult, resultTypes } from './test-engine/lib/results.mjs'
import fs from 'fs'
const results = JSON.parse(fs.readFileSync(process.argv.at(-1), 'utf8'))
const names = Object.fromEntries(Object.entries(resultTypes).map(([k, v]) => [v[2], k]))
const tally = {}
const failed = []
for (const suite of tests) {
  for (const test of suite.tests) {
    if (test.kind !== undefined && test.kind !== 'required') continue
    if (test.browser_only) continue
    const kind = names[determineTestResult(tests, test.id, results)[2]]
    tally[kind] = (tally[kind] || 0) + 1
    if (kind === 'fail') failed.push(test.id)
  }
}
console.log(JSON.stringify({ tally, failed }))
"""


def _step(argv: list[str], failed: str, cwd: Path | None = None) -> None:
    """Run one set-up step; if it fails, one line saying what is missing, no traceback."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()
                 if line.strip()]
        raise SystemExit(f"make cache-tests: {failed} ({lines[-1] if lines else argv[0]})")


def suite() -> Path:
    if not (SUITE / "package.json").exists():
        source = os.environ.get("CACHE_TESTS_REPO", DEFAULT_SOURCE)
        print(f"cloning the cache test suite from {source} into {SUITE}", flush=True)
        _step(["git", "clone", "--quiet", "--depth", "1", source, str(SUITE)],
              f"cannot clone the cache test suite from {source}; without the network, "
              "set CACHE_TESTS_REPO to a clone of it")
    if not (SUITE / "node_modules").exists():
        _step(["npm", "install", "--no-audit", "--no-fund", "--silent"],
              f"cannot install the suite's npm dependencies in {SUITE}", cwd=SUITE)
    return SUITE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", default="", help="run one test, with its exchanges shown")
    parser.add_argument("--server", choices=["gunicorn", "pywsgi"], default="gunicorn")
    args = parser.parse_args()
    for tool in ("node", "npm", "git"):
        if not shutil.which(tool):
            raise SystemExit(f"make cache-tests needs {tool}")
    root = suite()
    with Processes() as procs:
        origin, port = reserve_port(), reserve_port()
        procs.start("origin", ["node", "test-engine/server/server.mjs"], cwd=root,
                    env={"npm_config_port": str(origin), "npm_config_protocol": "http",
                         "npm_config_pidfile": str(procs.workdir / "origin.pid")})
        wait_port(origin)
        routes = procs.workdir / "routes.yaml"
        routes.write_text(f"""proxy:
  listen: {{address: 127.0.0.1, port: {port}}}
  services:
    - name: cache-tests
      domain: 127.0.0.1
      hosts: [{{address: 127.0.0.1, port: {origin}}}]
""")
        start_wsgiproxy(procs, "wsgiproxy", port, routes, server=args.server, workers=1,
                        env={"MAX_HTTP_RETRIES": "0"})
        client = subprocess.run(
            ["node", "--no-warnings", "test-engine/cli.mjs"], cwd=root, text=True,
            capture_output=True,
            # what "npm run cli" would set from the suite's package.json
            env={**os.environ, "npm_config_base": f"http://127.0.0.1:{port}/proxy",
                 "npm_package_config_id": "", **({"npm_config_id": args.id} if args.id
                                                 else {})})
    if args.id:
        print(client.stdout, client.stderr)
        return client.returncode
    if client.returncode != 0:
        print(client.stdout[-2000:], client.stderr[-2000:])
        return client.returncode
    out = REPO / "reports"
    out.mkdir(exist_ok=True)
    results_file = out / "cache-tests.json"
    results_file.write_text(client.stdout)
    summary = json.loads(subprocess.run(
        ["node", "--input-type=module", "-e", SUMMARY, str(results_file)], cwd=root,
        capture_output=True, text=True, check=True).stdout)
    tally = summary["tally"]
    total = sum(tally.values())
    others = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(tally.items())
                       if k not in ("pass", "fail"))
    for test_id in summary["failed"]:
        print(f"  failed: {test_id}")
    print(f"cache-tests: {tally.get('pass', 0)} of {total} required tests passed, "
          f"{tally.get('fail', 0)} failed ({others or 'no others'}); "
          f"results in {results_file.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
