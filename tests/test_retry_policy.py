"""docs/failures.md as tables, without a socket: :class:`RetryPolicy` decides whether a
failed attempt goes to another host (:meth:`~RetryPolicy.next_host`), how many attempts a
request may cost (:attr:`~RetryPolicy.max_attempts`), and what urllib3 retries on the same
host (:meth:`~RetryPolicy.same_host`). The same rules over real sockets are in
test_resilience.py."""

from __future__ import annotations

import pytest
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ReadTimeoutError
from urllib3.response import HTTPResponse

from wsgiproxy.upstream.retry import IDEMPOTENT_METHODS, Failure, RetryPolicy

NOT_SENT, AFTER_HEAD, AFTER_SEND = Failure.NOT_SENT, Failure.AFTER_HEAD, Failure.AFTER_SEND
URL = "/proxy/x"


# -- next_host: may another host be tried now? --------------------------------------------
NEXT_HOST = [
    # (MAX_HTTP_RETRIES, MAX_FORWARD_RETRIES), method, failure, resendable,
    #     hosts_tried, hosts, attempts, another host?
    # The request never left: every method goes on, each host at most once.
    pytest.param((2, 2), "GET", NOT_SENT, True, 1, 3, 1, True, id="refused GET, hosts left"),
    pytest.param((2, 2), "POST", NOT_SENT, True, 1, 3, 1, True, id="refused POST, hosts left"),
    pytest.param((2, 2), "PATCH", NOT_SENT, True, 2, 3, 2, True,
                 id="refused PATCH, a second time"),
    pytest.param((2, 2), "POST", NOT_SENT, False, 1, 3, 1, True,
                 id="refused, a streamed body that never began"),
    pytest.param((2, 2), "PROPFIND", NOT_SENT, True, 1, 2, 1, True,
                 id="refused, a method of its own"),
    pytest.param((2, 2), "GET", NOT_SENT, True, 2, 2, 2, False, id="refused, no host left"),
    pytest.param((2, 2), "GET", NOT_SENT, True, 1, 1, 1, False, id="refused, the only host"),
    pytest.param((2, 2), "GET", NOT_SENT, True, 3, 5, 3, False,
                 id="refused, forward retries used up"),
    pytest.param((2, 0), "GET", NOT_SENT, True, 1, 3, 1, False,
                 id="refused, MAX_FORWARD_RETRIES=0"),
    pytest.param((2, 2), "GET", NOT_SENT, True, 2, 5, 8, True,
                 id="refused, one attempt left of the bound"),
    pytest.param((2, 2), "GET", NOT_SENT, True, 2, 5, 9, False,
                 id="refused, the attempt bound reached"),
    pytest.param((0, 2), "GET", NOT_SENT, True, 2, 5, 3, False,
                 id="refused, the bound of (1 + 0) x (1 + 2) reached"),
    # A response head, then nothing: nothing reached the client, so only a request that
    # may be sent twice, with a body that can be sent again, goes on.
    *[pytest.param((2, 2), method, AFTER_HEAD, True, 1, 3, 1, True,
                   id=f"after head, {method}") for method in sorted(IDEMPOTENT_METHODS)],
    pytest.param((2, 2), "POST", AFTER_HEAD, True, 1, 3, 1, False, id="after head, POST"),
    pytest.param((2, 2), "PATCH", AFTER_HEAD, True, 1, 3, 1, False, id="after head, PATCH"),
    pytest.param((2, 2), "PUT", AFTER_HEAD, False, 1, 3, 1, False,
                 id="after head, PUT with a half-streamed body"),
    pytest.param((2, 2), "GET", AFTER_HEAD, True, 1, 1, 1, True,
                 id="after head, the only host: round-robin picks it again"),
    pytest.param((2, 2), "GET", AFTER_HEAD, True, 3, 5, 3, False,
                 id="after head, forward retries used up"),
    pytest.param((2, 2), "GET", AFTER_HEAD, True, 2, 5, 9, False,
                 id="after head, the attempt bound reached"),
    # Sent, and the same-host retries are used up: the host's answer stands.
    pytest.param((2, 2), "GET", AFTER_SEND, True, 1, 3, 3, False, id="after send, GET"),
    pytest.param((2, 2), "POST", AFTER_SEND, True, 1, 3, 1, False, id="after send, POST"),
    pytest.param((0, 2), "DELETE", AFTER_SEND, True, 1, 3, 1, False,
                 id="after send, no same-host retries"),
]


@pytest.mark.parametrize(("retries", "method", "failure", "resendable", "hosts_tried", "hosts",
                          "attempts", "expected"), NEXT_HOST)
def test_next_host(retries, method, failure, resendable, hosts_tried, hosts, attempts,
                   expected):
    policy = RetryPolicy(*retries)
    assert policy.next_host(method=method, failure=failure, resendable=resendable,
                            hosts_tried=hosts_tried, hosts=hosts, attempts=attempts) is expected


def test_next_host_walks_every_host_once_when_each_refuses():
    """MAX_FORWARD_RETRIES=2 and three hosts, each refusing: three attempts, then stop."""
    policy, hosts = RetryPolicy(2, 2), 3
    attempts = 1
    while policy.next_host(method="POST", failure=NOT_SENT, resendable=True,
                           hosts_tried=attempts, hosts=hosts, attempts=attempts):
        attempts += 1
    assert attempts == hosts


# -- max_attempts: (1 + MAX_HTTP_RETRIES) x (1 + MAX_FORWARD_RETRIES) ----------------------
@pytest.mark.parametrize(("http", "forward", "bound"), [
    pytest.param(0, 0, 1, id="no retries: one attempt"),
    pytest.param(2, 2, 9, id="the defaults: 9"),
    pytest.param(2, 0, 3, id="same host only"),
    pytest.param(0, 2, 3, id="other hosts only"),
    pytest.param(1, 3, 8, id="1 x 3: 8"),
])
def test_max_attempts(http, forward, bound):
    assert RetryPolicy(http, forward).max_attempts == bound


# -- same_host: urllib3's Retry for the same host -----------------------------------------
def test_same_host_retries_reads_and_statuses_but_not_connects():
    retry = RetryPolicy(http_retries=2, forward_retries=1).same_host()
    assert (retry.total, retry.connect, retry.read, retry.status, retry.other,
            retry.redirect) == (2, 0, 2, 2, 0, 0)
    assert set(retry.allowed_methods) == set(IDEMPOTENT_METHODS) == {
        "GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
    assert set(retry.status_forcelist) == {502, 503, 504}
    assert retry.raise_on_status is False  # the client gets the host's last answer


@pytest.mark.parametrize(("method", "status", "retry_after", "retried"), [
    *[pytest.param(m, 503, False, True, id=f"{m} 503") for m in sorted(IDEMPOTENT_METHODS)],
    pytest.param("GET", 502, False, True, id="GET 502"),
    pytest.param("GET", 504, False, True, id="GET 504"),
    pytest.param("POST", 503, False, False, id="POST 503: never sent twice"),
    pytest.param("PATCH", 502, False, False, id="PATCH 502: never sent twice"),
    pytest.param("GET", 500, False, False, id="GET 500: the host's answer"),
    pytest.param("GET", 404, False, False, id="GET 404"),
    pytest.param("GET", 503, True, True, id="GET 503 with Retry-After"),
    pytest.param("GET", 429, True, False, id="GET 429 with Retry-After: the client's call"),
    pytest.param("PUT", 413, True, False, id="PUT 413 with Retry-After: the client's call"),
])
def test_same_host_retries_idempotent_methods_on_502_503_504(method, status, retry_after,
                                                             retried):
    retry = RetryPolicy(http_retries=2, forward_retries=2).same_host()
    assert retry.is_retry(method, status, has_retry_after=retry_after) is retried


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_same_host_never_retries_a_connect_failure(method):
    """connect=0: a refused or timed-out connection is next_host's, at once."""
    retry = RetryPolicy(http_retries=2, forward_retries=2).same_host()
    with pytest.raises(MaxRetryError):
        retry.increment(method, URL, error=ConnectTimeoutError("timed out"))


@pytest.mark.parametrize(("method", "retried"), [
    *[pytest.param(m, True, id=m) for m in sorted(IDEMPOTENT_METHODS)],
    pytest.param("POST", False, id="POST"),
    pytest.param("PATCH", False, id="PATCH"),
])
def test_same_host_retries_a_read_timeout_for_idempotent_methods_only(method, retried):
    retry = RetryPolicy(http_retries=2, forward_retries=2).same_host()
    error = ReadTimeoutError(None, URL, "read timed out")
    if retried:
        assert retry.increment(method, URL, error=error).read == 1
    else:
        with pytest.raises(ReadTimeoutError):
            retry.increment(method, URL, error=error)


@pytest.mark.parametrize("http", [
    pytest.param(0, id="MAX_HTTP_RETRIES=0: the first answer stands"),
    pytest.param(1, id="MAX_HTTP_RETRIES=1: one more"),
    pytest.param(3, id="MAX_HTTP_RETRIES=3: three more"),
])
def test_same_host_gives_up_after_max_http_retries(http):
    retry = RetryPolicy(http_retries=http, forward_retries=0).same_host()
    for _ in range(http):
        retry = retry.increment("GET", URL, response=HTTPResponse(status=503))
    with pytest.raises(MaxRetryError):
        retry.increment("GET", URL, response=HTTPResponse(status=503))


@pytest.mark.parametrize(("failures", "seconds"), [
    pytest.param(1, 0.0, id="first retry at once"),
    pytest.param(2, 0.1, id="then 0.1 s"),
    pytest.param(3, 0.2, id="then 0.2 s"),
    pytest.param(6, 1.0, id="at most 1 s"),
])
def test_same_host_backoff(failures, seconds):
    retry = RetryPolicy(http_retries=10, forward_retries=0).same_host()
    for _ in range(failures):
        retry = retry.increment("GET", URL, response=HTTPResponse(status=503))
    assert retry.get_backoff_time() == pytest.approx(seconds)
