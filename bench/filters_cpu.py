"""CPU per request of the filter machinery, in-process (docs/performance.md, "Filters").

    .venv/bin/python bench/filters_cpu.py [--n 50000]

Runs what the app does around a filter chain for one request, with the fields of a
typical proxied GET: the request view, the request hooks, the fields for the host, the
response view, the response hooks and the client's fields. Compare with the whole
request's CPU (`make bench`'s cores per 1 000 req/s) to see its share.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsgiproxy.filters import Headers, Request, Response, testing
from wsgiproxy.filters.builtin.headers import HeaderRules
from wsgiproxy.filters.builtin.rate_limit import RateLimit
from wsgiproxy.filters.chain import Chain
from wsgiproxy.headers import client_headers_after_filters, upstream_headers_after_filters

TO_HOST = {"Host": "bench.test", "User-Agent": "wrk", "Accept": "*/*",
           "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": "bench.test",
           "X-Forwarded-Proto": "http", "X-Request-ID": "0" * 32}
FROM_HOST = [("Server", "nginx"), ("Date", "Thu, 03 Dec 2026 10:00:00 GMT"),
             ("Content-Type", "application/octet-stream"), ("Content-Length", "100"),
             ("Cache-Control", "no-store"), ("X-Cache", "MISS")]


def per_request(chain: Chain, n: int) -> float:
    """Microseconds of CPU per request through ``chain``."""
    start = time.process_time()
    for _ in range(n):
        request = Request("GET", "/small", Headers._of(list(TO_HOST.items())),
                          host="bench.test", client="127.0.0.1", service="bench")
        run = chain.start(request)
        run.on_request()
        upstream_headers_after_filters(request.headers, "bench.test", "0" * 32, None)
        view = Response(200, Headers._of(list(FROM_HOST)))
        run.on_response(view)
        client_headers_after_filters(FROM_HOST, view.headers)
        run.on_complete(None)  # type: ignore[arg-type]  # no hook reads it here
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    n = parser.parse_args().n
    headers = testing.build(HeaderRules, {"response": {"set": {
        "Strict-Transport-Security": "max-age=31536000"}}})
    limit = testing.build(RateLimit, {"limit": "1000000/second"})
    for name, chain in (("headers", Chain("bench", [headers])),
                        ("rate_limit (memory)", Chain("bench", [limit])),
                        ("headers + rate_limit", Chain("bench", [headers, limit]))):
        per_request(chain, n // 10)  # warm
        print(f"{name:22} {per_request(chain, n):6.1f} µs CPU per request")


if __name__ == "__main__":
    main()
