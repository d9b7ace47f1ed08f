"""Memory of the in-process cache under many distinct cacheable URLs.

    python bench/cache_memory.py [--urls 100000] [--max-entries 10000]

One sample backend, ``python -m wsgiproxy`` (one process, so its RSS is the proxy's),
and N requests for distinct cacheable URLs (``/cacheable?i=<n>``, ``public,
max-age=60``). Prints the proxy's RSS every N/10 requests: with CACHE_MAX_ENTRIES
bounding the LRU it levels off instead of growing with N.
"""

from __future__ import annotations

import argparse
import http.client
import threading

from common import Processes, reserve_port, routes_file, sample_backend, start_wsgiproxy

DOMAIN = "bench.test"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--max-entries", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    with Processes() as procs:
        backend = reserve_port()
        sample_backend(procs, "backend", backend)
        listen = reserve_port()
        proxy = start_wsgiproxy(procs, "wsgiproxy", listen,
                                routes_file(procs.workdir, listen, DOMAIN, [backend]),
                                server="pywsgi",
                                env={"CACHE_MAX_ENTRIES": str(args.max_entries),
                                     "HTTP_CACHE_TTL_SECONDS": "3600"})
        step = args.urls // 10
        print(f"{'requests':>9} {'proxy RSS MiB':>14}")
        print(f"{0:9d} {rss_mib(proxy.pid):14.1f}")
        next_url = iter(range(args.urls))
        lock = threading.Lock()
        errors = []

        def client(limit: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=30)
            for _ in range(limit):
                with lock:
                    i = next(next_url, None)
                if i is None:
                    return
                conn.request("GET", f"/proxy/cacheable?i={i}", headers={"Host": DOMAIN})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(resp.status)

        for n in range(10):
            threads = [threading.Thread(target=client, args=(step // args.threads,))
                       for _ in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"{(n + 1) * step:9d} {rss_mib(proxy.pid):14.1f}", flush=True)
        print(f"CACHE_MAX_ENTRIES={args.max_entries}; failed requests: {len(errors)}")
        return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
