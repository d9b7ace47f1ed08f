"""TLS to hosts against plain HTTP (docs/tls.md): the same nginx, the same proxy, two
services, one reached over TLS. Connections to hosts are pooled either way, so a
handshake is paid once per connection, not per request.

    python bench/tls.py [--seconds 8] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import trustme
from common import (
    Processes,
    nginx_config,
    require,
    reserve_port,
    routes_yaml,
    start_wsgiproxy,
    wait_port,
    wrk,
)

NGINX_HTTP = """\
  server {{
    listen 127.0.0.1:{plain} backlog=4096;
    listen 127.0.0.1:{tls} ssl backlog=4096;
    ssl_certificate {dir}/host.pem;
    ssl_certificate_key {dir}/host.key;
    location = /small {{ add_header Cache-Control no-store; return 200 "{body}"; }}
  }}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    nginx = require("nginx", "nginx")
    ca = trustme.CA()
    with Processes() as procs:
        work = procs.workdir
        (work / "tmp").mkdir()
        leaf = ca.issue_cert("hosts.bench")
        leaf.private_key_pem.write_to_path(str(work / "host.key"))
        with open(work / "host.pem", "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        plain, tls, proxy = reserve_port(), reserve_port(), reserve_port()
        (work / "nginx.conf").write_text(nginx_config(
            work, "tls-nginx", NGINX_HTTP.format(dir=work, plain=plain, tls=tls,
                                                 body="x" * 100)))
        procs.start("nginx", [nginx, "-c", str(work / "nginx.conf"), "-p", str(work)],
                    port=plain)
        wait_port(tls)
        routes = work / "routes.yaml"
        routes.write_text(routes_yaml(proxy, {
            "plain.bench": {"hosts": [plain], "name": "plain"},
            "tls.bench": {"hosts": [tls], "name": "tls",
                          "tls": {"ca_file": str(work / "ca.pem"), "server_name": "hosts.bench"}},
        }))
        start_wsgiproxy(procs, "wsgiproxy", proxy, routes, workers=args.workers)
        url = f"http://127.0.0.1:{proxy}/proxy/small"
        results: dict[str, list] = {"plain": [], "tls": []}
        for _ in range(args.rounds):
            for name in results:
                results[name].append(wrk(url, seconds=args.seconds, connections=50,
                                         headers={"Host": f"{name}.bench"}))
        rps = {n: statistics.median(r.rps for r in rs) for n, rs in results.items()}
        p99 = {n: statistics.median(r.p99_ms for r in rs) for n, rs in results.items()}
        errors = sum(r.failures for rs in results.values() for r in rs)
        print(f"wsgiproxy (gunicorn, {args.workers} workers) -> nginx, 100 B no-store, "
              f"wrk -c50, medians of {args.rounds} x {args.seconds:g} s:")
        for name in results:
            print(f"  {name:5} {rps[name]:8.0f} req/s  p99 {p99[name]:7.2f} ms")
        print(f"  TLS / plain: {rps['tls'] / rps['plain']:.2f} of the requests per second; "
              f"{errors} failed requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
