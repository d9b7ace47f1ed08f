"""The servers wsgiproxy runs under, and what they share.

* :mod:`.lifecycle` — start-up checks, the control plane (readiness, reloads, the
  metrics server, the routes watcher) and connection draining, for both servers;
* :mod:`.gunicorn` — gunicorn's gevent worker and hooks (``gunicorn.conf.py``);
* :mod:`.pywsgi` — ``python -m wsgiproxy`` on gevent's pywsgi, with a strict parser;
* :mod:`.admin` — ``/metrics``, ``/healthz``, ``/readyz`` on METRICS_ADDR.
"""
