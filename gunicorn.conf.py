"""gunicorn settings for wsgiproxy, read by gunicorn from the working directory.

    gunicorn -k gevent wsgiproxy:app        # from the project root, or the image's /app

is the whole product: gunicorn finds this file by itself there (``-c gunicorn.conf.py``
says the same). Command-line options (``-w``, ``-b``, ``-k gevent``, ...) win over what
is set here. The proxy's own settings (retries, cache, GRACEFUL_TIMEOUT, ...) come from
the environment or ``.env``, as for ``python -m wsgiproxy``; see the README.
"""

import os
import tempfile

# prometheus-client picks multiprocess mode when it is first imported, so the directory
# must be in the environment before anything imports it (the workers inherit it).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wsgiproxy-metrics-")

from wsgiproxy.servers.gunicorn import Hooks

# Checks the settings and the routes file now: a mistake is one line and exit 2.
_hooks = Hooks()
_settings, _routes = _hooks.settings, _hooks.config.routes
on_starting = _hooks.on_starting
when_ready = _hooks.when_ready
post_fork = _hooks.post_fork
post_worker_init = _hooks.post_worker_init
worker_exit = _hooks.worker_exit
child_exit = _hooks.child_exit
on_exit = _hooks.on_exit

# gevent: each request is a greenlet, so a worker waits on many hosts at once. The
# proxy's subclass also closes idle keep-alive connections at shutdown; "-k gevent"
# runs it too.
worker_class = "wsgiproxy.servers.gunicorn.GeventWorker"
# One worker per core (WEB_CONCURRENCY, gunicorn's own variable, overrides).
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
# Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections
# over the workers. On one shared socket, whichever worker woke first took them: in
# benchmark runs one of two workers sometimes held all 50 connections (half the
# capacity). The master checks the port is free first, so a second instance cannot
# join this one's port by accident. The cost: connections queued at a worker that
# crashes are reset.
reuse_port = True
# Greenlets per worker: concurrent client connections a worker will hold.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", 1000))

# Listen where the routes file says; a PaaS hands the port in PORT; -b wins over both.
_port = os.environ.get("PORT")
bind = [f"0.0.0.0:{_port}"] if _port else [_routes.listen.netloc]

# On SIGTERM: stop accepting, let requests in flight finish for up to this long.
graceful_timeout = _settings.graceful_timeout
# A worker silent this long is killed and replaced (gevent workers heartbeat from the hub).
timeout = 60
# Idle keep-alive connections from clients (or a load balancer) stay open this long; keep
# it above your load balancer's idle timeout (60 s on AWS ALB, GCP LB: 600 s).
keepalive = int(os.environ.get("KEEPALIVE_SECONDS", 75))

# Request limits: 8 KiB lines (docs/bad-input.md); the 64 KiB header total is checked by the app.
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 200

# Build the app in each worker, after gevent has monkey-patched it: a Session, its
# pools and locks made before patching would block the whole worker.
preload_app = False

# wsgiproxy writes its own JSON access log; gunicorn's would say the same thing twice.
accesslog = None
errorlog = "-"

# gunicorn's control socket (gunicornc) lives under $HOME by default, shared by every
# instance of the user, and fails with a logged error on a read-only root filesystem
# (the image runs so); its "reload" would also start new workers instead of reloading
# routes in place. SIGHUP reloads routes; /metrics and /readyz tell the state.
control_socket_disable = True

# X-Forwarded-Proto is believed only from these addresses (a TLS-terminating load
# balancer in front, say). gunicorn trusts 127.0.0.1 by default, which would let any
# local client claim https; the proxy trusts no one unless told.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "")
