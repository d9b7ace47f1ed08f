"""docs/running.md: what gunicorn's master says at start-up and at a reload, and the
process title the reload example of docs/reload.md finds."""

from __future__ import annotations

import re
import subprocess

import pytest

from support.net import wait_until


@pytest.mark.timeout(60)
def test_gunicorn_names_its_address_and_a_file_change_is_no_signal(backend, start_proxy):
    b = backend()
    proxy = start_proxy({"a.test": [b.port]}, server="gunicorn", workers=1,
                        env={"CONFIG_WATCH_SECONDS": "0.2"},
                        extra_args=["--no-control-socket", "-n", "wsgiproxy-title-test"])
    log = proxy.wait_log("wsgiproxy listening on")
    assert f"[INFO] Listening at: http://127.0.0.1:{proxy.port} ({proxy.pid})" in log
    assert "Listening at:  (" not in log

    # The title docs/reload.md's `pgrep -f 'gunicorn: master'` finds (setproctitle).
    found = subprocess.run(["pgrep", "-f", r"^gunicorn: master \[wsgiproxy-title-test\]"],
                           capture_output=True, text=True, check=False).stdout.split()
    assert found == [str(proxy.pid)]

    mark = proxy.log_mark()
    proxy.write_routes({"a.test": [b.port], "b.test": [b.port]})
    wait_until(lambda: "routes reloaded (file changed)" in proxy.log_since(mark), 15,
               message="the reload of the changed file")
    assert "Handling signal: hup" not in proxy.log_since(mark)

    mark = proxy.log_mark()
    proxy.reload()  # a SIGHUP from outside is still gunicorn's news
    text = wait_until(lambda: "routes reloaded (SIGHUP)" in proxy.log_since(mark)
                      and proxy.log_since(mark), 15, message="the SIGHUP reload")
    assert re.search(r"Handling signal: hup", text)
