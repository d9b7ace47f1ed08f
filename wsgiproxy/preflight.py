"""A check that must run before gunicorn's own code, at interpreter start-up.

gunicorn reads ``WEB_CONCURRENCY`` with ``int()`` when its config module is imported,
before it reads ``gunicorn.conf.py``: a bad value would be a traceback, not the one
line and exit 2 every other setting gives. A ``.pth`` file in the environment
(``wsgiproxy-preflight.pth``, written by ``make install`` and by the image's build)
imports this module when Python starts; for a ``gunicorn`` command it checks the
variable with the settings' own parser, and does nothing for any other program.
"""

from __future__ import annotations

import os
import sys


def check(argv: list[str]) -> None:
    if not argv or os.path.basename(argv[0]) != "gunicorn" \
            or "WEB_CONCURRENCY" not in os.environ:
        return
    from .errors import ConfigError
    from .settings import SETTINGS

    setting = next(s for s in SETTINGS if s.name == "WEB_CONCURRENCY")
    try:
        setting.parse(setting.name, os.environ["WEB_CONCURRENCY"])
    except ConfigError as error:
        print(f"wsgiproxy: {error}", file=sys.stderr, flush=True)
        os._exit(2)  # site.py would print and carry on after an exception


check(sys.argv)
