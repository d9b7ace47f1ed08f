"""gunicorn settings for wsgiproxy, read by gunicorn from the working directory.

    gunicorn -k gevent wsgiproxy:app        # from the project root, or the image's /app

is the whole product: gunicorn finds this file by itself there (``-c gunicorn.conf.py``
says the same). Command-line options (``-w``, ``-b``, ``-k gevent``, ...) win over what
is set here. Every value below comes from the proxy's settings (the environment or
``.env``, validated: a bad one is one line and exit 2), see docs/settings.md.
"""

from wsgiproxy.servers.gunicorn import conf

conf.use_multiprocess_dir()  # before anything imports prometheus_client

from wsgiproxy.servers.gunicorn import Hooks  # noqa: E402

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
# WEB_CONCURRENCY (gunicorn's own variable, declared with the proxy's settings).
workers = _settings.web_concurrency
# Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections
# over the workers (on one shared socket, whichever worker woke first took them, and one
# worker could hold all of a benchmark's connections). The master checks the port is
# free first, so a second instance cannot join this one's port by accident. The cost:
# connections queued at a worker that crashes are reset.
reuse_port = True
# Greenlets per worker: concurrent client connections a worker will hold.
worker_connections = _settings.worker_connections

# Listen where the routes file says; a PaaS hands the port in PORT; -b wins over both.
bind = conf.bind(_settings, _routes)

# On SIGTERM: stop accepting, let requests in flight finish for up to this long.
graceful_timeout = _settings.graceful_timeout
# A worker silent this long is killed and replaced (gevent workers heartbeat from the hub).
timeout = 60
# Idle keep-alive connections from clients (or a load balancer) stay open this long.
keepalive = _settings.keepalive_seconds

# Request limits (docs/bad-input.md): gunicorn counts a line without its CRLF; the
# 64 KiB header total is checked by the app.
limit_request_line = conf.MAX_REQUEST_LINE - 2
limit_request_field_size = conf.MAX_HEADER_LINE - 2
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

# gunicorn never rewrites the request from forwarding headers (its default believes
# X-Forwarded-Proto from 127.0.0.1, so any local client could claim https): the proxy
# decides what to believe itself, from TRUSTED_PROXIES, the same under both servers.
forwarded_allow_ips = ""
