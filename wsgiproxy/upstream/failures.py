"""Every way talking to a host can fail, classified once (docs/failures.md).

An exception raised by urllib3, http.client or a socket while a request is sent or its
response read is, here and nowhere else:

* an attempt :class:`Outcome` (the ``outcome`` label of
  ``proxy_upstream_attempts_total`` and the access log's ``upstream_attempts``);
* a :class:`Failure`: where it failed, which decides whether another host may be tried
  (:meth:`~wsgiproxy.upstream.retry.RetryPolicy.next_host`);
* and, when no host is left, the :class:`~wsgiproxy.errors.ProxyError` the client gets
  (:func:`translate`): 502 when no host could be reached or a host broke the exchange,
  504 when a host did not answer in time, 400 when it was the client's body that failed.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Final

from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
    UnrewindableBodyError,
)

from ..bodies import ClientBodyError
from ..errors import BadGateway, BadRequest, NoHostReachable, ProxyError, UpstreamTimeout

__all__ = ["CONNECT_FAILURES", "TRANSPORT_ERRORS", "Failure", "Outcome", "cause",
           "classify", "failure_of", "translate"]

#: What talking to a host can raise: the exceptions :func:`classify` knows.
TRANSPORT_ERRORS: Final = (HTTPError, OSError, http.client.HTTPException)


class Outcome:
    """Labels of ``proxy_upstream_attempts_total{outcome}``: a small, fixed set."""

    RESPONSE: Final = "response"  # the host answered (any status but those below)
    RETRYABLE_STATUS: Final = "retryable_status"  # 502/503/504 from the host
    REFUSED: Final = "refused"  # connection refused: the request never left
    CONNECT_TIMEOUT: Final = "connect_timeout"  # likewise never sent
    TLS_ERROR: Final = "tls_error"  # TLS handshake or certificate check failed: never sent
    READ_TIMEOUT: Final = "read_timeout"
    RESET: Final = "reset"  # connection broken after the request was sent
    INVALID_RESPONSE: Final = "invalid_response"  # not HTTP, or not parseable
    CLIENT_ABORTED: Final = "client_aborted"  # the client's body failed (timeout, too
    # large, cut short): the host is not to blame


class Failure:
    """Where an attempt failed, as :meth:`RetryPolicy.next_host` weighs it."""

    NOT_SENT: Final = "not_sent"  # refused, timed out connecting, TLS failed: never sent
    AFTER_HEAD: Final = "after_head"  # a response head, then a failure before its body
    AFTER_SEND: Final = "after_send"  # read timeout, reset, garbage, after urllib3's retries


#: Outcomes that mean the request never left: safe to send anywhere, for every method.
CONNECT_FAILURES: Final = frozenset({Outcome.REFUSED, Outcome.CONNECT_TIMEOUT,
                                     Outcome.TLS_ERROR})


def cause(error: BaseException) -> BaseException:
    """The socket or protocol error under urllib3's wrappers."""
    if isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, ProtocolError) and len(error.args) > 1:
        error = error.args[1]
    return error


def classify(error: BaseException) -> str:
    """The attempt :class:`Outcome` of an exception raised while talking to a host."""
    error = cause(error)
    if isinstance(error, (ClientBodyError, ProxyError)):
        return Outcome.CLIENT_ABORTED
    if isinstance(error, (SSLError, ssl.SSLError, ssl.CertificateError)):
        return Outcome.TLS_ERROR
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


def failure_of(error: BaseException) -> str:
    """The :class:`Failure` of an attempt that raised ``error`` before any response."""
    return Failure.NOT_SENT if classify(error) in CONNECT_FAILURES else Failure.AFTER_SEND


def is_client_body_error(error: BaseException) -> bool:
    """Whether it was the client's request body, not the host, that failed."""
    return isinstance(cause(error), ClientBodyError)


def _tls_reason(error: BaseException) -> str:
    """What went wrong in a handshake, in the words of OpenSSL or of the name check:
    ``certificate verify failed: unable to get local issuer certificate``."""
    while not isinstance(error, ssl.SSLError) and error.args \
            and isinstance(error.args[0], BaseException):
        error = error.args[0]
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    return str(error)


def translate(error: BaseException, service: str) -> ProxyError:
    """The error the client gets when ``error`` ended the last attempt at ``service``."""
    underlying = cause(error)
    if isinstance(underlying, ClientBodyError):
        return BadRequest(str(underlying))
    if isinstance(underlying, UnrewindableBodyError):
        return BadGateway(f"service {service!r}: the host failed while the request body "
                          "was being streamed, and a streamed body cannot be resent")
    outcome = classify(underlying)
    if outcome == Outcome.TLS_ERROR:
        return NoHostReachable(f"service {service!r}: no host could be reached: TLS "
                               f"handshake failed: {_tls_reason(underlying)}")
    if outcome in CONNECT_FAILURES:
        return NoHostReachable(f"service {service!r}: no host could be reached")
    if outcome == Outcome.READ_TIMEOUT:
        return UpstreamTimeout(f"service {service!r}: the host did not answer in time")
    if outcome == Outcome.INVALID_RESPONSE:
        return BadGateway(f"service {service!r}: the host sent an invalid response")
    return BadGateway(f"service {service!r}: the host closed the connection")
