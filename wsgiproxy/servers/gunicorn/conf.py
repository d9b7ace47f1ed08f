"""What ``gunicorn.conf.py`` computes, so that file reads as a list of settings and
reads no environment variable itself: every value comes from the proxy's settings
(:mod:`wsgiproxy.settings`: validated, documented, one line and exit 2 when bad).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING

from ...limits import MAX_HEADER_LINE_BYTES as MAX_HEADER_LINE
from ...limits import MAX_REQUEST_LINE_BYTES as MAX_REQUEST_LINE

if TYPE_CHECKING:
    from ...routes_file import Routes
    from ...settings import Settings

__all__ = ["MAX_HEADER_LINE", "MAX_REQUEST_LINE", "bind", "use_multiprocess_dir"]


def use_multiprocess_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR for the master and its workers (a new temporary
    directory unless one is set), before anything imports prometheus_client.

    prometheus-client picks multiprocess mode when it is first imported, and the
    workers inherit the variable; set later, it would be too late for this process.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics directory "
                           "was chosen: import gunicorn.conf.py's wsgiproxy modules first")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="wsgiproxy-metrics-")
    return directory


def bind(settings: Settings, routes: Routes) -> list[str]:
    """Where gunicorn listens: ``0.0.0.0:$PORT`` on a PaaS, else ``proxy.listen``
    (``-b`` on the command line wins over both)."""
    if settings.port is not None:
        return [f"0.0.0.0:{settings.port}"]
    return [routes.listen.netloc]


