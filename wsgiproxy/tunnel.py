"""Relaying an upgraded connection (docs/websocket.md): after the host's ``101 Switching
Protocols``, bytes flow unchanged between the client's connection and the host's until
either side closes, or neither has sent anything for TUNNEL_IDLE_TIMEOUT_SECONDS.

One greenlet per direction. When one side closes its end, the other side's
writing end is shut down (a half-close, so a WebSocket closing handshake can finish),
and the tunnel ends once both directions have. The WSGI server writes the 101 head
(:class:`TunnelBody` flushes it through the ``write`` callable ``start_response``
returned: pywsgi skips an empty piece of a body) and closes the client's connection
afterwards; nothing else is ever written on it.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Final, Protocol

import gevent

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .exchange import Exchange

__all__ = ["Relay", "SocketEnd", "TunnelBody", "UpstreamEnd"]

logger = logging.getLogger(__name__)

CHUNK_BYTES: Final = 64 * 1024


class UpstreamEnd(Protocol):
    """The host's side (:class:`wsgiproxy.upstream.upgraded.UpgradedConnection`)."""

    def read(self, size: int) -> bytes: ...

    def sendall(self, data: bytes) -> None: ...

    def settimeout(self, seconds: float | None) -> None: ...

    def end_writing(self) -> None: ...

    def close(self) -> None: ...


class SocketEnd:
    """What both ends of a tunnel do the same way: write to, time and half-close the
    socket ``_sock`` (set by the subclass)."""

    _sock: socket.socket

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)

    def end_writing(self) -> None:
        """Half-close: the other side reads an end of file, and may still answer."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _ClientEnd(SocketEnd):
    """The client's side: its socket, as the WSGI server handed it over."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, size: int) -> bytes:
        return self._sock.recv(size)

    def close(self) -> None:
        pass  # the server's: it closes the connection when the response is over


class Relay:
    """Bytes both ways between the client and the host, until both directions end.

    :param idle_seconds: the tunnel ends when no byte has passed either way this long.
    """

    def __init__(self, client: socket.socket, host: UpstreamEnd, idle_seconds: float) -> None:
        self._client = _ClientEnd(client)
        self._host = host
        self._idle = idle_seconds
        self._last = time.monotonic()
        self.to_host = 0  # bytes from the client to the host
        self.to_client = 0
        self.idle_timeout = False

    def close_host(self) -> None:
        """For a tunnel that never started: let go of the host's connection."""
        self._host.close()

    def run(self) -> None:
        """Relay until both directions end. The request's own greenlet carries the
        host-to-client direction, one more the other: a greenlet per idle tunnel fewer."""
        up = gevent.spawn(self._pump, self._client, self._host, "to_host")
        try:
            self._pump(self._host, self._client, "to_client")
            up.join()
        finally:
            up.kill()  # at shutdown the server kills this greenlet: end the other too
            self._host.close()

    def _pump(self, source: UpstreamEnd | _ClientEnd, sink: UpstreamEnd | _ClientEnd,
              counter: str) -> None:
        while True:
            waited = time.monotonic() - self._last
            if waited >= self._idle:
                self.idle_timeout = True
                break
            source.settimeout(self._idle - waited)
            try:
                data = source.read(CHUNK_BYTES)
            except TimeoutError:
                continue  # the other direction may have been busy: look again
            except OSError:
                break
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
            setattr(self, counter, getattr(self, counter) + len(data))
            self._last = time.monotonic()
        if self.idle_timeout:  # both directions end now
            self._client.end_writing()
            self._host.end_writing()
        else:
            sink.end_writing()


class TunnelBody:
    """The WSGI response body of a tunnel: the 101 head sent, then the relay, run in the
    request's greenlet until the tunnel ends; it yields no bytes itself.

    :param write: the server's ``write`` callable, to send the head before relaying.
    :param on_open: called when the relay starts (the tunnel gauge goes up);
        ``on_close`` with whether it had started, when the response is over (the gauge
        goes down, the access log line is written).
    """

    __slots__ = ("_done", "_exchange", "_on_close", "_on_open", "_opened", "_relay", "_write")

    def __init__(self, relay: Relay, exchange: Exchange, write: Callable[[bytes], object],
                 on_open: Callable[[], None], on_close: Callable[[bool], None]) -> None:
        self._relay = relay
        self._write = write
        self._exchange = exchange
        self._on_open = on_open
        self._on_close = on_close
        self._opened = self._done = False

    def __iter__(self) -> Iterator[bytes]:
        self._write(b"")  # the 101 head, now: the client waits for it before sending
        self._opened = True
        self._on_open()
        try:
            self._relay.run()
        finally:
            self._done = True
            relay, exchange = self._relay, self._exchange
            exchange.bytes_sent, exchange.bytes_received = relay.to_client, relay.to_host
            logger.debug("request %s: tunnel closed (%s), %d bytes to the host, %d to the "
                         "client", exchange.request_id,
                         "idle timeout" if relay.idle_timeout else "closed", relay.to_host,
                         relay.to_client)
        yield from ()

    def close(self) -> None:
        if not self._done:  # the 101 never went out: the host's side is still open
            self._relay.close_host()
            self._exchange.complete = False
        self._on_close(self._opened)
