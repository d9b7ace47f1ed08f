"""The ``wsgiproxy`` command: the proxy on gevent's pywsgi server, in one process.

``wsgiproxy`` (the console script ``pip install`` makes) and ``python -m wsgiproxy`` are
the same program: both call :func:`main`. It monkey-patches the standard library before
the server is imported, so the sockets, locks and DNS lookups of requests, urllib3 and
redis all yield to the hub. Importing this module patches nothing.
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> int:
    """Patch, then run :func:`wsgiproxy.servers.pywsgi.main` with ``sys.argv``; its exit
    status (``--check-config`` exits 0, or 2 with one line for a bad setting)."""
    from gevent import monkey

    monkey.patch_all()

    from .servers import pywsgi

    return pywsgi.main()
