"""The servers wsgiproxy runs under, and the metrics/health server beside them.

* :mod:`.gunicorn` — gunicorn's gevent worker and hooks (``gunicorn.conf.py``);
* :mod:`.pywsgi` — ``python -m wsgiproxy`` on gevent's pywsgi, with a strict parser;
* :mod:`.admin` — ``/metrics``, ``/healthz``, ``/readyz`` on METRICS_ADDR.
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

from ..errors import ConfigError
from ..routes_file import Routes, read_routes
from ..settings import Settings, load_settings

__all__ = ["Config", "cannot_listen", "check_can_listen", "end_idle_connection", "load_config",
           "load_config_or_exit", "metrics_url"]


@dataclass(frozen=True, slots=True)
class Config:
    """What a server starts from: the settings, the routes file and its text."""

    settings: Settings
    routes: Routes
    routes_text: str


def load_config() -> Config:
    """The settings (environment, ``.env``) and the routes file they name."""
    settings = load_settings()
    routes, text = read_routes(settings.configuration_filename)
    return Config(settings, routes, text)


def load_config_or_exit() -> Config:
    """:func:`load_config`, or one line on stderr and exit status 2: how every way of
    starting the proxy refuses a bad setting or routes file, before anything listens."""
    try:
        return load_config()
    except ConfigError as error:
        print(f"wsgiproxy: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cannot_listen(what: str, addr: tuple[str, int], error: OSError) -> NoReturn:
    """One line on stderr and exit status 2: the port is taken, or not ours to bind."""
    reason = "address already in use" if error.errno == errno.EADDRINUSE \
        else error.strerror or str(error)
    print(f"wsgiproxy: cannot listen on {addr[0]}:{addr[1]} ({what}): {reason}",
          file=sys.stderr)
    raise SystemExit(2)


def check_can_listen(what: str, addr: tuple[str, int]) -> None:
    """Bind ``addr`` (with SO_REUSEADDR, never SO_REUSEPORT) and let it go again, or
    :func:`cannot_listen`. gunicorn's workers each bind their own SO_REUSEPORT socket,
    which would quietly share a port with another process of the same user; this check
    in the master makes a taken port a start-up error instead."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as error:
            cannot_listen(what, addr, error)


def metrics_url(addr: tuple[str, int] | None) -> str:
    """Where the metrics/health server answers, for the start-up line."""
    return f"http://{addr[0]}:{addr[1]}/" if addr else "nothing (METRICS_ADDR is empty)"


def end_idle_connection(sock: socket.socket) -> None:
    """End a keep-alive connection that waits for its next request, at shutdown.

    Shuts down the OS socket under gevent's: the greenlet waiting on it then reads a
    plain end of file and finishes quietly. gevent's own ``shutdown()`` would first
    cancel that wait with EBADF ("closed in another greenlet"), which servers log as a
    socket error with a traceback.
    """
    try:
        getattr(sock, "_sock", sock).shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
