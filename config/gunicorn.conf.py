"""Production gunicorn settings: ``gunicorn -c config/gunicorn.conf.py wsgiproxy:app``.

Every value can be overridden on the command line or with the environment variables
named below. Settings of the proxy itself (retries, cache, ...) are read by the app
from the environment or ``.env``; see the README.
"""

import multiprocessing
import os

from wsgiproxy.gunicorn_server import check_config_or_exit

# A bad setting or routes file stops here, in the master, with one line (exit 2).
_routes = check_config_or_exit()

# gevent: each request is a greenlet, so a worker waits on many hosts at once.
worker_class = "gevent"
# One worker per core (WEB_CONCURRENCY, gunicorn's own variable, overrides).
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# Greenlets per worker: concurrent client connections a worker will hold.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", 1000))

# Listen where the routes file says; a PaaS hands the port in PORT instead; -b wins over both.
bind = [f"0.0.0.0:{os.environ['PORT']}"] if os.environ.get("PORT") else [_routes.listen.netloc]

# A request in flight when SIGTERM arrives may take this long to finish.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", 30))
# A worker silent this long is killed and replaced (gevent workers heartbeat from the hub).
timeout = 60
# Idle keep-alive connections from clients (or a load balancer) stay open this long.
keepalive = int(os.environ.get("KEEPALIVE_SECONDS", 75))

# Request limits: 8 KiB lines (SPEC §9); the 64 KiB header total is checked by the app.
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 200

# Build the app in each worker, after gevent has monkey-patched it: a Session, its
# pools and locks made before patching would block the whole worker.
preload_app = False

# wsgiproxy writes its own JSON access log; gunicorn's would say the same thing twice.
accesslog = None
errorlog = "-"

# X-Forwarded-Proto is believed only from these addresses (a TLS-terminating load
# balancer in front, say). gunicorn trusts 127.0.0.1 by default, which would let any
# local client claim https; the proxy trusts no one unless told.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "")
