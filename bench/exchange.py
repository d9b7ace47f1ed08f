"""The exchange with a host, alone: CPU per keep-alive GET of 100 bytes, by client stack.

    python bench/exchange.py [--count 20000] [--rounds 3] [--profile]

Starts one nginx (one worker) answering ``GET /small`` with 100 bytes, and, in this
process under gevent (monkey-patched, as in a worker), sends it ``--count`` GETs on one
kept-alive connection with each client below, round after round, interleaved. Prints
the median over rounds of this process's CPU time (user + system, so gevent's and the
kernel's share of the client side are in it; nginx's are not) and wall time per
exchange. What a proxy's miss spends talking to its host, without the proxy around it:

* ``wsgiproxy pool``: the proxy's own ``UpstreamConnectionPool.urlopen`` (raw target,
  attempt log, interim responses skipped, its header parser), called as the adapter
  calls it, then the body read and the connection released;
* ``urllib3``: a stock ``HTTPConnectionPool.urlopen``, the same keywords;
* ``http.client``: ``HTTPConnection.request`` / ``getresponse`` / ``read``;
* ``socket + httptools``: a prepared request head in one ``sendall``, the response fed
  to llhttp (the parser aiohttp and uvicorn use) through ``httptools``.

``--profile`` then runs the proxy's pool once more under cProfile with a CPU clock
(time spent waiting for the host is not counted) and prints its self time by layer,
as bench/layers.py groups py-spy's samples. Stops nginx by PID on exit.
"""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

# The imports below must see the patched socket module, as a gunicorn worker's do.
import http.client
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httptools
from common import Processes
from inprocess import HOST, arguments, self_time, start_host
from urllib3 import HTTPConnectionPool
from urllib3.util import Retry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsgiproxy.upstream.transport import UpstreamConnectionPool

URLOPEN = {"redirect": False, "assert_same_host": False, "preload_content": False,
           "decode_content": False, "release_conn": False}


class _Log:
    """An attempt log that keeps nothing (the proxy's Exchange records into a list)."""

    def attempted(self, host: str, outcome: str, status: int = 0) -> None: ...

    def sent(self, at: float) -> None: ...

    def answered(self, at: float) -> None: ...

    def broke_off(self, outcome: str) -> None: ...


def wsgiproxy_pool(port: int) -> Callable[[], bytes]:
    pool = UpstreamConnectionPool("127.0.0.1", port, maxsize=1)
    retries, log = Retry(total=2, redirect=False, raise_on_status=False), _Log()

    def exchange() -> bytes:
        r = pool.urlopen("GET", "/small", headers={"Host": HOST}, retries=retries,
                         target="/small", log=log, **URLOPEN)
        body = r.read()
        r.release_conn()
        return body
    return exchange


def urllib3_pool(port: int) -> Callable[[], bytes]:
    pool = HTTPConnectionPool("127.0.0.1", port, maxsize=1)
    retries = Retry(total=2, redirect=False, raise_on_status=False)

    def exchange() -> bytes:
        r = pool.urlopen("GET", "/small", headers={"Host": HOST}, retries=retries,
                         **URLOPEN)
        body = r.read()
        r.release_conn()
        return body
    return exchange


def stdlib(port: int) -> Callable[[], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def exchange() -> bytes:
        conn.request("GET", "/small", headers={"Host": HOST})
        return conn.getresponse().read()
    return exchange


class _Message:
    """httptools' callbacks for one response: its status, fields and body."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def socket_httptools(port: int) -> Callable[[], bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"GET /small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode("latin-1")

    def exchange() -> bytes:
        message = _Message()
        parser = httptools.HttpResponseParser(message)
        sock.sendall(head)
        while not message.complete:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the host closed the connection")
            parser.feed_data(data)
        parser.get_status_code()
        return b"".join(message.body)
    return exchange


CLIENTS = {"wsgiproxy pool": wsgiproxy_pool, "urllib3": urllib3_pool,
           "http.client": stdlib, "socket + httptools": socket_httptools}


def measure(exchange: Callable[[], bytes], count: int) -> tuple[float, float]:
    """CPU and wall microseconds per exchange over ``count`` exchanges."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        exchange()
    return ((time.process_time() - cpu) / count * 1e6,
            (time.perf_counter() - wall) / count * 1e6)


def profile(exchange: Callable[[], bytes], count: int) -> str:
    """Self CPU time per exchange by layer, under cProfile."""
    layers, _functions, total = self_time(exchange, count)
    return "".join([f"\nwsgiproxy pool under cProfile (CPU clock), self time by layer, "
                    f"{total / count * 1e6:.0f} µs per exchange profiled:\n",
                    *(f"  {name:46} {100 * seconds / total:5.1f}%\n"
                      for name, seconds in layers.most_common())])


def main() -> None:
    args = arguments(__doc__, 20000)
    with Processes() as procs:
        port = start_host(procs)
        clients = {name: make(port) for name, make in CLIENTS.items()}
        for name, exchange in clients.items():  # warm up, and check what comes back
            body = exchange()
            assert body == b"s" * 100, (name, body)
            measure(exchange, 500)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, exchange in clients.items():
                results[name].append(measure(exchange, args.count))
        profiled = profile(clients["wsgiproxy pool"], args.count) if args.profile else ""
    print(f"\n{args.count} keep-alive GETs of 100 B to nginx per client and round, "
          f"medians of {args.rounds} rounds, under gevent\n")
    print(f"{'client':20} {'CPU µs':>8} {'wall µs':>8} {'÷ urllib3':>9}")
    base = statistics.median(c for c, _ in results["urllib3"])
    for name, runs in results.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:20} {cpu:8.1f} {wall:8.1f} {cpu / base:9.2f}")
    print(profiled, end="")


if __name__ == "__main__":
    main()
