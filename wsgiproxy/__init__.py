"""wsgiproxy: an HTTP reverse proxy as a WSGI application under gevent.

``wsgiproxy:app`` is the application, built from the environment and the routes file
the first time it is accessed (PEP 562). Importing the package or any submodule builds
nothing, opens nothing and reads no file: under gunicorn the app is built in each worker
after gevent has monkey-patched the standard library, and tests can build their own
with :func:`wsgiproxy.handler.create_app`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "app":
        from .handler import create_app

        application = create_app()
        globals()["app"] = application  # built once; later lookups skip __getattr__
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
