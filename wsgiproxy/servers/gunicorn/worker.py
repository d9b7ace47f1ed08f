"""The gunicorn worker that runs the proxy: gunicorn's gevent worker, with the proxy's
wire rules installed before it loads the app (:func:`~.wire.adapt_gunicorn`), its
client connections tracked (:class:`~wsgiproxy.servers.lifecycle.Connections`), and
the same client timeouts as under pywsgi (docs/strangers.md):

* between requests a connection may stay idle for the keep-alive time, then it is
  closed quietly (gunicorn's own rule);
* from the first byte of a request, its whole header section must arrive within
  CLIENT_HEADER_TIMEOUT_SECONDS, or the client gets 408 and is closed (gunicorn gives
  the head the keep-alive time, counted from the end of the previous request);
* within the body (and while a response is written) no pause may be longer than
  CLIENT_BODY_TIMEOUT_SECONDS: the socket's timeout while the app runs.

At shutdown gunicorn waits for every connection to end, and an idle keep-alive
connection ends only after ``keepalive`` seconds: a stop would take the whole graceful
timeout whenever a client kept a connection open. This worker ends the idle ones at
once and lets requests in flight finish.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn import util as gunicorn_util
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from ...errors import ClientTimeout, raw_error_response
from ...settings import load_settings
from ..lifecycle import ClientTimeouts, Connections, count_client_timeout
from .wire import adapt_gunicorn

if TYPE_CHECKING:
    import socket
    from types import TracebackType

__all__ = ["GeventWorker", "GunicornGeventWorker", "HeadClock"]

logger = logging.getLogger(__name__)

#: gunicorn's own class, which ``-k gevent`` names; the hooks run this one instead.
GunicornGeventWorker = _GunicornGeventWorker


class HeadClock:
    """The time the next request head on a connection may take: the keep-alive time
    until its first byte, then the header timeout for the rest. Used as gunicorn's
    ``timeout_ctx`` around the parse of each request; the parser's socket reads say
    when the first bytes came (:meth:`began`)."""

    __slots__ = ("_heads", "_idle", "_timeouts", "_timer", "started")

    def __init__(self, timeouts: ClientTimeouts, heads: dict[Any, HeadClock]) -> None:
        self._timeouts = timeouts
        self._heads = heads
        self._idle = self._timer = gevent.Timeout(timeouts.keepalive)
        self.started = False

    def __enter__(self) -> HeadClock:
        self._heads[gevent.getcurrent()] = self
        self._timer.start()
        return self

    def began(self) -> None:
        """The head's first bytes are here: the header timeout runs from now."""
        if self.started:
            return
        self.started = True
        self._timer.close()
        self._timer = gevent.Timeout(self._timeouts.header, ClientTimeout(
            "the client took too long to send its request header section"))
        self._timer.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        self._timer.close()
        self._heads.pop(gevent.getcurrent(), None)
        return error is self._idle  # idle too long: no request, gunicorn closes quietly


class GeventWorker(_GunicornGeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with the proxy's timeouts, closing idle keep-alive
    connections when it stops."""

    def init_process(self) -> None:
        self.connections = Connections()
        self._heads: dict[Any, HeadClock] = {}
        self._timeouts = ClientTimeouts.of(load_settings())
        adapt_gunicorn(self._heads)  # before super() loads the app and starts serving
        super().init_process()

    def timeout_ctx(self) -> HeadClock:
        return HeadClock(self._timeouts, self._heads)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self.connections.opened(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self.connections.closed(client)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket,
                       addr: Any) -> Any:
        self.connections.busy(sock)
        sock.settimeout(self._timeouts.body)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # A client that stopped reading the response: drop it, count it, quietly.
            logger.info("dropped a client that stopped reading its response: %s", addr)
            count_client_timeout("response")
            raise StopIteration from None  # gunicorn's "close this connection"
        finally:
            sock.settimeout(None)  # between requests the HeadClock decides
            self.connections.idle(sock)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, ClientTimeout):
            super().handle_error(req, client, addr, exc)
            return
        logger.info("rejected a request from %s: %s", addr, exc.message)
        count_client_timeout(exc.phase)
        try:
            gunicorn_util.write_nonblock(client, raw_error_response(exc))
        except OSError:
            pass

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # alive = False: new requests get Connection: close
        gevent.spawn(self.connections.drain, float("inf"), gevent.sleep)
