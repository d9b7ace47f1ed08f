"""gunicorn integration: server hooks for ``config/gunicorn.conf.py``, and the two
places where gunicorn's own answers would differ from the proxy's.

:func:`adapt_gunicorn` runs in each worker when the app is built (so it applies to
``gunicorn -k gevent wsgiproxy:app`` as well as to the production config):

* Requests gunicorn's parser rejects (bad request line, duplicated Content-Length,
  header too large, ...) are answered with the proxy's JSON error instead of gunicorn's
  HTML page; gunicorn still decides the status.
* gunicorn drops an app's ``Date`` and ``Server`` (``gunicorn.util.hop_headers``) and
  writes its own. The host's ``Date`` matters (a cached answer must carry the stored
  ``Date`` with its ``Age``, RFC 9111 §4), so the proxy's response class keeps the
  host's ``Date`` and ``Server``, writes gunicorn's ``Date`` only when the host sent
  none, and never advertises gunicorn in ``Server``. It also honours an app's ``Connection: close``
  (gunicorn drops it as hop-by-hop), which the proxy sends when it answers without
  reading the request body.

Both are process-wide replacements of a gunicorn module attribute, made once per worker
before it serves: gunicorn offers no hook for either.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import ConfigError, raw_error_response
from .routes import Routes, load_routes
from .settings import load_settings

__all__ = ["adapt_gunicorn", "check_config_or_exit"]


def check_config_or_exit() -> Routes:
    """Validate settings and routes in the master, before any worker starts.

    A bad value then ends gunicorn with one line and exit status 2, instead of every
    worker failing to boot with a traceback.
    """
    try:
        settings = load_settings()
        return load_routes(settings.configuration_filename)
    except ConfigError as error:
        print(f"wsgiproxy: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    util.write_nonblock(sock, raw_error_response(status_int, mesg or reason))


def adapt_gunicorn() -> None:
    """Install the JSON error writer and the proxy's response class (idempotent)."""
    from gunicorn import util
    from gunicorn.http import wsgi

    if getattr(wsgi.Response, "wsgiproxy", False):
        return

    class ProxyResponse(wsgi.Response):  # type: ignore[misc]
        wsgiproxy = True
        _app_date = False

        def process_headers(self, headers: list[tuple[str, str]]) -> None:
            super().process_headers(headers)  # validates every header, drops some
            for name, value in headers:
                lname = name.lower()
                if lname in ("date", "server"):
                    self.headers.append((name, value.strip(" \t")))
                    self._app_date = self._app_date or lname == "date"
                elif lname == "connection" and "close" in value.lower():
                    self.must_close = True

        def default_headers(self) -> list[str]:
            return [line for line in super().default_headers()
                    if not line.startswith("Server:")
                    and not (self._app_date and line.startswith("Date:"))]

    wsgi.Response = ProxyResponse
    util.write_error = _write_json_error
