"""``wsgiproxy:app`` inside a WSGI middleware, as a team might deploy it:
``gunicorn -k gevent --pythonpath tests apps.wrapped:app``."""

from __future__ import annotations

from wsgiproxy.handler import create_app


class Stamp:
    """A middleware that adds a response header; it knows nothing of reloads."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def stamped(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Wrapped", "yes")], exc_info)
        return self.app(environ, stamped)


app = Stamp(create_app())
