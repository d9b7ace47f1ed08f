"""gunicorn integration, so that ``gunicorn -k gevent wsgiproxy:app`` run from the
project root (or the image's working directory, where gunicorn finds
``gunicorn.conf.py`` by itself) is the whole product (docs/running.md).

* :mod:`.hooks` — the server hooks: the master's control plane (checks, the metrics
  server, readiness, reloads) and the workers' reload;
* :mod:`.worker` — the gevent worker the proxy runs in (``-k gevent`` means it);
* :mod:`.wire` — what the proxy changes in gunicorn's HTTP handling in each worker.
"""

from __future__ import annotations

from .hooks import Hooks
from .wire import ProxyResponse, adapt_gunicorn
from .worker import GeventWorker

__all__ = ["GeventWorker", "Hooks", "ProxyResponse", "adapt_gunicorn"]
