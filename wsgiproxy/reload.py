"""Reloading the routes file while the proxy serves (docs/reload.md).

:class:`RoutesReloader` reads the routes file when asked (SIGHUP, or a change of its
content): a file that does not validate is refused with one line naming the file and
the field, and the routes in use keep serving; a valid one is handed to ``accept``.
Either way ``proxy_config_*`` counts it. :func:`watch` asks whenever the file's content
changes, by reading it every CONFIG_WATCH_SECONDS: content, not modification times, so
a Kubernetes ConfigMap mounted as a directory (whose file changes by a symlink swap)
and an editor's save-by-rename are both seen.

Under ``python -m wsgiproxy`` ``accept`` reloads the app in place. Under gunicorn the
master decides (one log line, one count, whatever the number of workers), keeps the
accepted text where its workers load routes from, and tells them to reload.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from .errors import ConfigError
from .routes_file import read_routes

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .metrics import ReloadMetrics
    from .routes_file import Routes

__all__ = ["RoutesReloader", "content_digest", "watch"]

logger = logging.getLogger(__name__)


def content_digest(path: Path) -> str | None:
    """A digest of the file's bytes; None while it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class RoutesReloader:
    """Reloads the routes file on request; refuses a bad one and keeps the last good.

    :param path: the routes file (CONFIGURATION_FILENAME).
    :param current: the routes in use.
    :param accept: called with new, valid routes and the text they came from.
    :param metrics: counts reloads; None counts nothing.
    """

    def __init__(self, path: Path, current: Routes,
                 accept: Callable[[Routes, str], None],
                 metrics: ReloadMetrics | None = None) -> None:
        self.path = path
        self.current = current
        self._accept = accept
        self._metrics = metrics
        #: The digest of the file's content as last read (at start-up, or by a reload,
        #: accepted or not): a watcher reloads only when the file differs from it.
        self.digest = content_digest(path)

    def reload(self, reason: str) -> bool:
        """Read the file now; True if its routes are in use from now on."""
        self.digest = content_digest(self.path)
        try:
            routes, text = read_routes(self.path)
        except ConfigError as error:
            logger.error("routes not reloaded (%s): %s; still serving the previous routes",
                         reason, error)
            if self._metrics is not None:
                self._metrics.failed()
            return False
        if routes.listen != self.current.listen:
            logger.warning("routes reloaded, but proxy.listen changed from %s to %s: the "
                           "listening address changes only with a restart",
                           self.current.listen, routes.listen)
        self._accept(routes, text)
        self.current = routes
        if self._metrics is not None:
            self._metrics.succeeded()
        count = len(routes.services)
        logger.info("routes reloaded (%s): %d service%s", reason, count,
                    "" if count == 1 else "s")
        return True


def watch(path: Path, interval: float, changed: Callable[[], object],
          sleep: Callable[[float], object], stopped: Callable[[], bool],
          known: Callable[[], str | None]) -> None:
    """Call ``changed`` whenever the content of ``path`` differs from what was last read.

    :param sleep: waits between looks (``gevent.sleep`` or ``time.sleep``).
    :param stopped: ends the loop when true.
    :param known: the digest of the content last read (:attr:`RoutesReloader.digest`):
        a file a SIGHUP already reloaded is not reloaded again.
    """
    told = None
    while not stopped():
        sleep(interval)
        digest = content_digest(path)
        if digest is not None and digest != known() and digest != told:
            told = digest  # once per new content, even while the reload is pending
            changed()
