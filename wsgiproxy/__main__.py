"""``python -m wsgiproxy``: the proxy on gevent's pywsgi server, in one process.

The standard library is monkey-patched before anything else is imported, so the
sockets, locks and DNS lookups of requests, urllib3 and redis all yield to the hub.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from wsgiproxy.servers.pywsgi import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
