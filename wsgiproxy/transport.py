"""The urllib3 connection pool and connection the proxy uses to talk to hosts.

Three things a proxy needs that urllib3's defaults do not do:

* **Interim responses.** ``http.client`` skips ``100 Continue`` but takes any other 1xx
  (``103 Early Hints``) as the final response; the real response then stays unread in a
  pooled connection and is handed to the *next* request on it. :class:`FinalResponse`
  reads past every 1xx to the final response (CPython gh-88926 / bpo-44721).
* **Byte-exact targets.** ``HTTPConnectionPool.urlopen`` percent-normalises a target
  (``%2f`` becomes ``%2F``). The pool is handed a placeholder; :class:`UpstreamConnection`
  sends the client's raw target from the current :class:`~wsgiproxy.exchange.Exchange`.
* **A record of attempts.** urllib3 retries inside ``urlopen``; the pool writes each
  attempt and how it ended into the exchange, for the access log and the metrics.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .exchange import Outcome, current_exchange

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse

__all__ = ["RETRYABLE_STATUSES", "FinalResponse", "UpstreamConnection",
           "UpstreamConnectionPool", "classify_error"]

logger = logging.getLogger(__name__)

#: Statuses that mean "this host could not serve it now" (SPEC §6).
RETRYABLE_STATUSES = frozenset({502, 503, 504})


class FinalResponse(http.client.HTTPResponse):
    """An ``http.client`` response that never stops at an interim (1xx) response."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            # 100 is skipped by begin() itself; 101 ends HTTP on this connection and is
            # final (the proxy never asks for an upgrade, so the caller rejects it).
            if 100 < status < 200 and status != 101:
                interim = http.client.parse_headers(self.fp)
                logger.debug("skipped interim response %s (%d header lines)",
                             status, len(interim))
                continue
            return version, status, reason


class UpstreamConnection(HTTPConnection):
    """Sends the exchange's raw target and notes when the request left and was answered."""

    response_class = FinalResponse

    def request(
        self, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any
    ) -> None:
        exchange = current_exchange.get()
        if exchange is not None:
            url = exchange.target
        super().request(method, url, body=body, headers=headers, **kw)
        if exchange is not None and not exchange.forwarded_at:
            exchange.forwarded_at = time.perf_counter()

    def getresponse(self) -> Any:
        response = super().getresponse()
        exchange = current_exchange.get()
        if exchange is not None:
            exchange.answered_at = time.perf_counter()
        return response


def classify_error(error: BaseException) -> str:
    """The attempt outcome of an exception raised while talking to a host."""
    if isinstance(error, ProtocolError) and len(error.args) > 1:
        error = error.args[1]
    if isinstance(error, NewConnectionError):  # before its base class ConnectTimeoutError
        return Outcome.REFUSED
    if isinstance(error, ConnectTimeoutError):
        return Outcome.CONNECT_TIMEOUT
    if isinstance(error, (ReadTimeoutError, socket.timeout)):
        return Outcome.READ_TIMEOUT
    if isinstance(error, (ConnectionError, http.client.RemoteDisconnected)):
        return Outcome.RESET
    if isinstance(error, (http.client.HTTPException, ValueError)):
        return Outcome.INVALID_RESPONSE
    return Outcome.RESET


class UpstreamConnectionPool(HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose every attempt lands in the current exchange."""

    ConnectionCls = UpstreamConnection

    def _make_request(
        self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any
    ) -> BaseHTTPResponse:
        exchange = current_exchange.get()
        if exchange is None:
            return super()._make_request(conn, method, url, *args, **kwargs)
        try:
            response = super()._make_request(conn, method, url, *args, **kwargs)
        except BaseException as error:
            exchange.record(classify_error(error))
            raise
        outcome = Outcome.RETRYABLE_STATUS if response.status in RETRYABLE_STATUSES \
            else Outcome.RESPONSE
        exchange.record(outcome, response.status)
        return response
