"""A host's connection after it answered ``101 Switching Protocols`` (docs/websocket.md): no
more HTTP on it, only bytes both ways, for :mod:`wsgiproxy.tunnel` to relay.

The connection leaves its pool for good: it is never returned, and is closed when the
tunnel ends. The bytes the host sent right after its 101 (a WebSocket server may
greet at once) may already sit in http.client's buffer: the first read takes them
from there, without waiting; later reads go to the socket itself. (Reading through the
buffered reader would hold a 64 KiB buffer for as long as a tunnel waits, most of an
idle tunnel's memory: docs/performance.md measures it with ``bench/tunnels.py``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..tunnel import SocketEnd

if TYPE_CHECKING:
    import socket

    from urllib3.response import BaseHTTPResponse

__all__ = ["UpgradedConnection"]


class UpgradedConnection(SocketEnd):
    """The host's side of a tunnel."""

    def __init__(self, response: BaseHTTPResponse) -> None:
        self._response = response
        connection: Any = response.connection  # kept out of the pool: release_conn=False
        self._connection = connection
        self._sock: socket.socket = connection.sock
        self._buffered: Any = response._fp.fp  # type: ignore[attr-defined]  # http.client's

    def read(self, size: int) -> bytes:
        """What has arrived, up to ``size`` bytes; b"" when the host has closed."""
        buffered, self._buffered = self._buffered, None
        if buffered is not None:
            self._sock.setblocking(False)  # only what is already there
            try:
                data: bytes = buffered.read1(size) or b""
            finally:
                self._sock.setblocking(True)
            if data:
                return data
        return self._sock.recv(size)

    def close(self) -> None:
        self._response.close()
        self._connection.close()
