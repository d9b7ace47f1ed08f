"""What a client socket's timeout costs while a big response is written, in-process.

    .venv/bin/python bench/send_timeout.py [--mib 200] [--rounds 5]

Both servers give the client socket a timeout while the app runs (the body timeout:
no pause longer than it while a response is written), so each ``sendall`` that finds
the socket buffer full waits with a gevent timer armed. This writes ``--mib`` MiB in
64 KiB ``sendall`` calls (the proxy's piece size) to a reader in another process on
loopback, with and without a timeout, round after round, and prints this process's
CPU per MiB, median over rounds.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

READER = """
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
view = memoryview(bytearray(256 * 1024))
while conn.recv_into(view):
    pass
"""
PIECE = b"x" * 65536


def per_mib(conn: socket.socket, timeout: float | None, mib: int) -> float:
    conn.settimeout(timeout)
    start = time.process_time()
    for _ in range(mib * 16):
        conn.sendall(PIECE)
    return (time.process_time() - start) / mib * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with socket.create_server(("127.0.0.1", 0)) as server:
        reader = subprocess.Popen([sys.executable, "-c", READER,
                                   str(server.getsockname()[1])])
        conn, _ = server.accept()
        runs: dict[float | None, list[float]] = {None: [], 60.0: []}
        try:
            per_mib(conn, None, 20)  # warm up
            for _ in range(args.rounds):
                for timeout in runs:
                    runs[timeout].append(per_mib(conn, timeout, args.mib))
        finally:
            conn.close()
            reader.wait(10)
    print(f"CPU per MiB written in 64 KiB sendall calls, medians of {args.rounds} x "
          f"{args.mib} MiB:")
    for timeout, values in runs.items():
        label = "no timeout" if timeout is None else f"settimeout({timeout:g})"
        print(f"  {label:16} {statistics.median(values):6.0f} µs")


if __name__ == "__main__":
    main()
