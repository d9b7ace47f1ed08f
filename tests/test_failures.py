"""wsgiproxy.upstream.failures as tables: each transport error's outcome, where it failed
and what the client gets. The exceptions are the ones urllib3 and http.client raise."""

from __future__ import annotations

import http.client
import ssl

import pytest
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
    UnrewindableBodyError,
)

from wsgiproxy.bodies import ClientBodyError
from wsgiproxy.errors import BadGateway, BadRequest, NoHostReachable, UpstreamTimeout
from wsgiproxy.upstream.failures import Failure, Outcome, classify, failure_of, translate

REFUSED = NewConnectionError(None, "Failed to establish a new connection: refused")
READ_TIMEOUT = ReadTimeoutError(None, "/x", "Read timed out.")
RESET = ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
VERIFY = ssl.SSLCertVerificationError(1, "certificate verify failed")
VERIFY.verify_message = "unable to get local issuer certificate"


@pytest.mark.parametrize(("error", "outcome", "failure", "answer"), [
    pytest.param(REFUSED, Outcome.REFUSED, Failure.NOT_SENT, NoHostReachable, id="refused"),
    pytest.param(MaxRetryError(None, "/x", REFUSED), Outcome.REFUSED, Failure.NOT_SENT,
                 NoHostReachable, id="refused, wrapped by urllib3"),
    pytest.param(ConnectTimeoutError(None, "timed out"), Outcome.CONNECT_TIMEOUT,
                 Failure.NOT_SENT, NoHostReachable, id="connect timeout"),
    pytest.param(SSLError(VERIFY), Outcome.TLS_ERROR, Failure.NOT_SENT, NoHostReachable,
                 id="TLS verification"),
    pytest.param(READ_TIMEOUT, Outcome.READ_TIMEOUT, Failure.AFTER_SEND, UpstreamTimeout,
                 id="read timeout"),
    pytest.param(TimeoutError("timed out"), Outcome.READ_TIMEOUT, Failure.AFTER_SEND,
                 UpstreamTimeout, id="socket timeout"),
    pytest.param(RESET, Outcome.RESET, Failure.AFTER_SEND, BadGateway, id="reset"),
    pytest.param(http.client.RemoteDisconnected("closed"), Outcome.RESET, Failure.AFTER_SEND,
                 BadGateway, id="closed without a response"),
    pytest.param(http.client.BadStatusLine("garbage"), Outcome.INVALID_RESPONSE,
                 Failure.AFTER_SEND, BadGateway, id="not HTTP"),
])
def test_classify_and_translate(error, outcome, failure, answer):
    assert classify(error) == outcome
    assert failure_of(error) == failure
    proxy_error = translate(error, "svc")
    assert type(proxy_error) is answer
    assert "'svc'" in proxy_error.message


def test_a_tls_failure_names_openssls_reason():
    message = translate(SSLError(VERIFY), "pay").message
    assert message.endswith("TLS handshake failed: certificate verify failed: unable to get "
                            "local issuer certificate")


def test_the_clients_own_body_is_the_clients_error():
    error = ProtocolError("aborted", ClientBodyError("request body ended 5 bytes early"))
    assert type(translate(error, "svc")) is BadRequest


def test_a_streamed_body_that_cannot_be_resent_is_502():
    error = translate(UnrewindableBodyError("cannot rewind"), "svc")
    assert type(error) is BadGateway
    assert "cannot be resent" in error.message
