"""docs/forwarding.md: interim responses, bodies streamed both ways, bounded memory, disconnects."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time

import pytest
import urllib3

from support.backends import Reply, read_head, read_request
from support.client import session
from support.net import raw_exchange, reserve_port, wait_until
from support.proxy import SERVERS

DOMAIN = "svc.test"


def early_hints_backend(conn: socket.socket, first: bytes) -> None:
    """Each request: a 103, a pause, then a 200 that names the request it answers."""
    data = first
    while True:
        head, _ = read_request(conn, data)
        rid = re.search(rb"(?i)x-request-id: *(\S+)", head)
        answer = rid.group(1) if rid else b"none"
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n")
        time.sleep(0.05)  # the host's think time: the 200 comes in a later segment
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        data = read_head(conn)
        if data is None:
            return


def test_stock_urllib3_takes_103_as_final_and_leaks_the_200(raw_backend):
    """Why wsgiproxy.upstream.transport.FinalResponse exists. If this fails, http.client has
    learnt to skip interim responses and FinalResponse can go."""
    backend = raw_backend(early_hints_backend)
    pool = urllib3.HTTPConnectionPool("127.0.0.1", backend.port, maxsize=1)
    first = pool.request("GET", "/", headers={"X-Request-ID": "one"})
    second = pool.request("GET", "/", headers={"X-Request-ID": "two"})
    assert first.status == 103
    assert (second.status, second.data) == (200, b"one")  # the first client's answer


@pytest.mark.parametrize("server", SERVERS)
def test_interim_responses_are_skipped_and_never_leak(raw_backend, start_proxy, server):
    backend = raw_backend(early_hints_backend)
    p = start_proxy({DOMAIN: [backend.port]}, server=server)
    with session() as s:
        for rid in ("first", "second", "third"):
            r = s.get(p.url("/proxy/x"), headers={"Host": DOMAIN, "X-Request-ID": rid})
            assert (r.status_code, r.text) == (200, rid)
    assert backend.connections == 1  # one pooled connection served all three


@pytest.mark.parametrize("server", SERVERS)
def test_response_is_streamed_as_it_arrives(backend, start_proxy, server):
    release = threading.Event()

    def slow_body(seen):
        def body():
            yield b"first-part;"
            release.wait(10)
            yield b"second-part"
        return Reply(200, [], body())

    p = start_proxy({DOMAIN: [backend(slow_body).port]}, server=server)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        sock.sendall(f"GET /proxy/s HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        received = b""
        while b"first-part;" not in received:
            received += sock.recv(65536)
        assert not release.is_set(), "the first part must arrive before the rest exists"
        release.set()
        while b"second-part" not in received:
            received += sock.recv(65536)


@pytest.mark.parametrize("server", SERVERS)
def test_request_body_is_streamed_upstream(raw_backend, start_proxy, server):
    started = threading.Event()
    total = 3 * 1024 * 1024
    got = {}

    def counting(conn, first):
        _head, _, body = first.partition(b"\r\n\r\n")
        received = len(body)
        while received == 0:
            received += len(conn.recv(65536))
        started.set()
        digest_len = received
        while digest_len < total:
            chunk = conn.recv(65536)
            if not chunk:
                break
            digest_len += len(chunk)
        got["bytes"] = digest_len
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    b = raw_backend(counting)
    p = start_proxy({DOMAIN: [b.port]}, server=server,
                    env={"MAX_REQUEST_BODY_BYTES": str(total)})
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        sock.sendall(f"POST /proxy/up HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                     f"Content-Length: {total}\r\n\r\n".encode() + b"a" * (1024 * 1024))
        wait_until(started.is_set, 10, message="the host to see the body's first bytes")
        sock.sendall(b"a" * (total - 1024 * 1024))
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert got["bytes"] == total


def _rss_and_peak(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    return rss, peak


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_a_200_mib_response_raises_memory_by_under_50_mib(backend, start_proxy, server):
    size = 200 * 1024 * 1024
    block = b"z" * 65536

    def big(seen):
        n = int(seen.target.rsplit("=", 1)[1])
        return Reply(200, [("Content-Length", str(n))], (block for _ in range(n // 65536)))

    p = start_proxy({DOMAIN: [backend(big).port]}, server=server)
    with session() as s:
        s.get(p.url("/proxy/big?n=655360"), headers={"Host": DOMAIN}).raise_for_status()
        [pid] = p.worker_pids()
        baseline, _ = _rss_and_peak(pid)
        digest = hashlib.md5()
        with s.get(p.url(f"/proxy/big?n={size}"), headers={"Host": DOMAIN}, stream=True) as r:
            for chunk in r.iter_content(1024 * 1024):
                digest.update(chunk)
        _, peak = _rss_and_peak(pid)
    assert digest.hexdigest() == hashlib.md5(block * (size // 65536)).hexdigest()
    assert peak - baseline < 50 * 1024 * 1024, f"grew {(peak - baseline) >> 20} MiB"


@pytest.mark.parametrize("server", SERVERS)
def test_client_going_away_closes_the_upstream_connection(backend, start_proxy, server):
    block = b"q" * 65536
    endless = backend(lambda seen: Reply(200, [("Content-Length", str(1 << 40))],
                                         (block for _ in range(1 << 24))))
    p = start_proxy({DOMAIN: [endless.port]}, server=server)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        sock.sendall(f"GET /proxy/endless HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        received = 0
        while received < 1024 * 1024:
            received += len(sock.recv(65536))
    wait_until(lambda: endless.aborted, 10, message="the host's write to fail")
    [after] = raw_exchange(p.port, f"GET /nope HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
    assert after.status == 404  # still serving


@pytest.mark.parametrize("server", SERVERS)
def test_unreachable_host_gives_502_json(start_proxy, server):
    p = start_proxy({DOMAIN: [reserve_port()]}, server=server)
    with session() as s:
        r = s.get(p.url("/proxy/x"), headers={"Host": DOMAIN})
    assert r.status_code == 502
    assert "svc-test" in r.json()["error"]
