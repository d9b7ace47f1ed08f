"""A WebSocket echo for the demo, and a client to try it with: the standard library only,
so ``make demo``'s run-time install has all it needs (docs/try-it.md).

Not part of the proxy. The sample backend answers a WebSocket handshake on ``/echo``
with :func:`serve_echo`; the client sends each message and prints what comes back::

    python -m wsgiproxy.sample_websocket --host chat.my-company.com \\
        ws://127.0.0.1:8080/proxy/echo hello

Only what an echo needs of RFC 6455: text, binary, ping and close frames, no
extensions, no fragmented messages.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["accept_key", "encode_frame", "main", "read_frame", "serve_echo"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Writer(Protocol):
    def sendall(self, data: bytes, /) -> None: ...


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a handshake's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; a client masks what it sends, a server does not."""
    head = bytes([0x80 | opcode])
    size, bit = len(payload), 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _exactly(reader: Reader, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = reader.read(size - len(data))
        if not piece:
            raise EOFError("the connection closed inside a frame")
        data += piece
    return data


def read_frame(reader: Reader) -> tuple[int, bytes]:
    """The next frame's opcode and (unmasked) payload."""
    first, second = _exactly(reader, 2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", _exactly(reader, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", _exactly(reader, 8))[0]
    key = _exactly(reader, 4) if second & 0x80 else b""
    payload = _exactly(reader, size)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def serve_echo(reader: Reader, writer: Writer, key: str, headers: Sequence[str] = ()) -> None:
    """Answer a handshake with 101, then send every message back until a close."""
    head = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key)}", *headers]
    writer.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    while True:
        try:
            opcode, payload = read_frame(reader)
        except (EOFError, OSError):
            return
        if opcode in (TEXT, BINARY):
            writer.sendall(encode_frame(opcode, payload, mask=False))
        elif opcode == PING:
            writer.sendall(encode_frame(PONG, payload, mask=False))
        elif opcode == CLOSE:
            writer.sendall(encode_frame(CLOSE, payload[:2], mask=False))
            return


def main(argv: list[str] | None = None) -> int:
    """The client: handshake, each message there and back, close."""
    parser = argparse.ArgumentParser(description="Send messages to a WebSocket echo and "
                                                 "print what comes back.")
    parser.add_argument("url", help="ws://host:port/path")
    parser.add_argument("messages", nargs="*", default=["hello"])
    parser.add_argument("--host", help="the Host header (default: the URL's)")
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme != "ws" or not url.hostname:
        parser.error("the URL must be ws://host[:port]/path")
    try:
        return _talk(url.hostname, url.port or 80, args.host or url.netloc,
                     f"{url.path or '/'}{'?' + url.query if url.query else ''}", args.messages)
    except (OSError, EOFError) as exc:
        print(f"{args.url}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1


def _talk(address: str, port: int, host: str, target: str, messages: list[str]) -> int:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall((f"GET {target} HTTP/1.1\r\n"
                      f"Host: {host}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        reader = sock.makefile("rb")
        status = reader.readline().decode("latin-1").strip()
        headers = {}
        while (line := reader.readline().decode("latin-1").strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if " 101 " not in f"{status} " or headers.get("sec-websocket-accept") != accept_key(key):
            print(f"no WebSocket: {status}", file=sys.stderr)
            return 1
        instance = headers.get("x-instance")
        print(status + (f" (X-Instance: {instance})" if instance else ""))
        for message in messages:
            sock.sendall(encode_frame(TEXT, message.encode(), mask=True))
            print(f"> {message}")
            _, payload = read_frame(reader)
            print(f"< {payload.decode(errors='replace')}")
        sock.sendall(encode_frame(CLOSE, struct.pack("!H", 1000), mask=True))
        read_frame(reader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
