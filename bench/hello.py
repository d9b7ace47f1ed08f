"""The stack's ceiling: a WSGI app that answers 100 bytes, run under the same gunicorn
configuration as the proxy. Nothing built on this stack can be faster."""

BODY = b"x" * 100
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "100"),
           ("Cache-Control", "no-store")]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
