"""The servers wsgiproxy runs under, and the metrics/health server beside them.

* :mod:`.gunicorn` — gunicorn's gevent worker and hooks (``gunicorn.conf.py``);
* :mod:`.pywsgi` — ``python -m wsgiproxy`` on gevent's pywsgi, with a strict parser;
* :mod:`.admin` — ``/metrics``, ``/healthz``, ``/readyz`` on METRICS_ADDR.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..routes_file import load_routes
from ..settings import load_settings

if TYPE_CHECKING:
    from ..routes_file import Routes
    from ..settings import Settings

__all__ = ["load_config", "load_config_or_exit"]


def load_config() -> tuple[Settings, Routes]:
    """The settings (environment, ``.env``) and the routes file they name."""
    settings = load_settings()
    return settings, load_routes(settings.configuration_filename)


def load_config_or_exit() -> tuple[Settings, Routes]:
    """:func:`load_config`, or one line on stderr and exit status 2: how every way of
    starting the proxy refuses a bad setting or routes file, before anything listens."""
    try:
        return load_config()
    except ConfigError as error:
        print(f"wsgiproxy: {error}", file=sys.stderr)
        raise SystemExit(2) from None
