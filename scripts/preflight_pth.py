"""Write ``wsgiproxy-preflight.pth`` into the running Python's site-packages.

The file puts the project on ``sys.path`` and imports :mod:`wsgiproxy.preflight` when
Python starts, so that ``gunicorn -k gevent wsgiproxy:app`` refuses a bad
WEB_CONCURRENCY with one line and exit 2 before gunicorn reads it (see that module).
``make install`` runs it for ``.venv``; the Dockerfile for the image.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

project = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
target = Path(sysconfig.get_paths()["purelib"]) / "wsgiproxy-preflight.pth"
target.write_text(f"{project.resolve()}\nimport wsgiproxy.preflight\n")
print(f"wrote {target}")
