"""The adapter of one service: its hosts' connection pools, and the loop that moves a
request on from a host that failed.

A :class:`ServiceAdapter` is mounted on the shared ``requests.Session`` at
``http://<domain>/`` for each service. It is a requests ``HTTPAdapter`` (its pool
manager, and ``Session.send`` through it works as with any adapter) whose connection
comes from the host :class:`~wsgiproxy.balancer.RoundRobin` picks, not from the URL.

:meth:`ServiceAdapter.forward` is what the proxy calls: it sends to the next host in
turn, lets urllib3's ``Retry`` repeat on that host what may be repeated, and asks the
service's :class:`~wsgiproxy.upstream.retry.RetryPolicy` whether another host may be
tried after a failure. It returns once the first body bytes have arrived: until then
nothing has reached the client, so a host that dies between its response head and its
body is an ordinary failure. Every transport exception becomes a
:class:`~wsgiproxy.errors.ProxyError` here (:func:`translate_error`), and nowhere else.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, UnrewindableBodyError

from ..bodies import ClientBodyError
from ..errors import BadGateway, BadRequest, NoHostReachable, ProxyError, UpstreamTimeout
from ..exchange import Outcome
from .retry import CONNECT_FAILURES, Failure
from .transport import UpstreamConnectionPool, UpstreamHTTPSConnectionPool, classify_error

if TYPE_CHECKING:
    from collections.abc import Mapping

    from requests import PreparedRequest
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse
    from urllib3.util import Timeout

    from ..balancer import RoundRobin
    from ..routes_file import Backend, Service
    from .retry import RetryPolicy
    from .transport import AttemptLog

__all__ = ["CHUNK_BYTES", "Forwarded", "ServiceAdapter", "translate_error"]

logger = logging.getLogger(__name__)

#: Response bytes read per step; read1() returns what has arrived, up to this.
CHUNK_BYTES: Final = 64 * 1024
#: Idle connections kept per host, per worker: as many as a worker can have requests in
#: flight (gunicorn's worker_connections), so a burst does not end with connections
#: thrown away and opened again (with a 64 limit, 500 concurrent slow requests churned
#: most of their connections). Extra ones are opened under load, as urllib3 does.
POOL_MAXSIZE: Final = 1000

_TRANSPORT_ERRORS: Final = (HTTPError, OSError, http.client.HTTPException)


def _cause(error: BaseException) -> BaseException:
    """The socket or protocol error under urllib3's wrappers."""
    if isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, ProtocolError) and len(error.args) > 1:
        error = error.args[1]
    return error


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


def translate_error(error: BaseException, service: str) -> ProxyError:
    """The one place where a transport exception becomes a proxy error."""
    cause = _cause(error)
    if isinstance(cause, ClientBodyError):
        return BadRequest(str(cause))
    if isinstance(cause, UnrewindableBodyError):
        return BadGateway(f"service {service!r}: the host failed while the request body "
                          "was being streamed, and a streamed body cannot be resent")
    outcome = classify_error(cause)
    if outcome == Outcome.TLS_ERROR:
        return NoHostReachable(f"service {service!r}: no host could be reached: TLS "
                               f"handshake failed: {_tls_reason(cause)}")
    if outcome in CONNECT_FAILURES:
        return NoHostReachable(f"service {service!r}: no host could be reached")
    if outcome == Outcome.READ_TIMEOUT:
        return UpstreamTimeout(f"service {service!r}: the host did not answer in time")
    if outcome == Outcome.INVALID_RESPONSE:
        return BadGateway(f"service {service!r}: the host sent an invalid response")
    return BadGateway(f"service {service!r}: the host closed the connection")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A host's answer: the response, body unread past ``first``."""

    response: BaseHTTPResponse
    first: bytes  # the first body bytes (empty for HEAD and empty bodies)


def _tls_pool_kwargs(service: Service) -> dict[str, Any] | None:
    """urllib3's HTTPS pool settings for the service's ``tls`` (docs/tls.md): the name sent
    as SNI and checked against the certificate, the CA file, the client certificate."""
    tls = service.tls
    if tls is None:
        return None
    name = tls.server_name or service.domain
    return {"cert_reqs": "CERT_REQUIRED" if tls.verify else "CERT_NONE",
            "ca_certs": tls.ca_file if tls.verify else None,
            "server_hostname": name, "assert_hostname": name if tls.verify else False,
            "cert_file": tls.cert_file, "key_file": tls.key_file}


class _CountingLog:
    """An :class:`AttemptLog` that passes every entry on and counts the attempts."""

    __slots__ = ("attempts", "log")

    def __init__(self, log: AttemptLog) -> None:
        self.log = log
        self.attempts = 0

    def attempted(self, host: str, outcome: str, status: int = 0) -> None:
        self.attempts += 1
        self.log.attempted(host, outcome, status)

    def sent(self, at: float) -> None:
        self.log.sent(at)

    def answered(self, at: float) -> None:
        self.log.answered(at)

    def broke_off(self) -> None:
        self.log.broke_off()


class ServiceAdapter(HTTPAdapter):
    """The hosts of one service behind one requests adapter.

    :param service: from the routes file.
    :param balancer: picks the host of each attempt.
    :param policy: same-host retries (urllib3 ``Retry``) and when to try another host.
    :param timeout: connect and read timeouts per attempt.

    Usage::

        adapter = ServiceAdapter(service, RoundRobin(service.hosts, 10), policy, timeout)
        session.mount(f"http://{service.domain}/", adapter)
        forwarded = adapter.forward("GET", "/x?y", {"Host": service.domain}, None, log)
    """

    def __init__(self, service: Service, balancer: RoundRobin, policy: RetryPolicy,
                 timeout: Timeout, pool_maxsize: int = POOL_MAXSIZE) -> None:
        self.service = service
        self.balancer = balancer
        self.policy = policy
        self.timeout = timeout
        self._scheme = "https" if service.tls is not None else "http"
        self._tls_kwargs = _tls_pool_kwargs(service)
        self._pools: dict[Backend, HTTPConnectionPool] = {}
        # One pool per host: pool_connections = number of hosts, so none is evicted.
        super().__init__(pool_connections=len(service.hosts), pool_maxsize=pool_maxsize,
                         max_retries=policy.same_host())

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        """Only for subclassing: swaps in the proxy's pool class (see :mod:`.transport`)."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self._pools = {}
        self.poolmanager.pool_classes_by_scheme = {"http": UpstreamConnectionPool,
                                                   "https": UpstreamHTTPSConnectionPool}

    def pool(self, host: Backend) -> HTTPConnectionPool:
        """Only for subclassing: the connection pool of ``host``, made once."""
        pool = self._pools.get(host)
        if pool is None:
            pool = self._pools[host] = self.poolmanager.connection_from_host(
                host.address, host.port, scheme=self._scheme, pool_kwargs=self._tls_kwargs)
        return pool

    def get_connection_with_tls_context(self, request: PreparedRequest, verify: Any,
                                        proxies: Any = None, cert: Any = None) -> Any:
        """Only for subclassing: ``Session.send`` reaches the next host in turn."""
        return self.pool(self.balancer.pick())

    def forward(self, method: str, target: str, headers: Mapping[str, str], body: Any,
                log: AttemptLog, upgrade: bool = False) -> Forwarded:
        """Send the request to the service and return the response with its first
        body bytes, or raise the :class:`ProxyError` of the last failure.

        :param target: the raw target, sent byte-for-byte.
        :param body: ``bytes``, a read-once stream, or None.
        :param log: every attempt is written there.
        :param upgrade: the request asks to switch protocols (a WebSocket handshake):
            a ``101`` is the answer, returned at once with its connection.
        """
        counted = _CountingLog(log)
        tried: set[Backend] = set()
        resendable = body is None or isinstance(body, bytes)
        while True:
            host = self.balancer.pick()
            tried.add(host)
            try:
                response = self.pool(host).urlopen(
                    method, target, body=body, headers=headers, retries=self.max_retries,
                    redirect=False, assert_same_host=False, preload_content=False,
                    decode_content=False, release_conn=False, timeout=self.timeout,
                    target=target, log=counted)
            except _TRANSPORT_ERRORS as exc:
                if isinstance(_cause(exc), ClientBodyError):
                    raise translate_error(exc, self.service.name) from exc
                failure = Failure.AFTER_SEND
                if classify_error(_cause(exc)) in CONNECT_FAILURES:
                    self.balancer.eject(host)
                    failure = Failure.NOT_SENT
                error: BaseException = exc
            else:
                self.balancer.mark_up(host)
                if response.status == 101:
                    if upgrade:
                        return Forwarded(response, b"")
                    response.close()
                    raise BadGateway(f"service {self.service.name!r}: the host switched "
                                     "protocols unasked")
                if method == "HEAD":
                    return Forwarded(response, b"")
                try:
                    return Forwarded(response, response.read1(CHUNK_BYTES,
                                                              decode_content=False))
                except _TRANSPORT_ERRORS as exc:
                    # A head, then nothing: the client has seen none of it yet.
                    response.close()
                    response.release_conn()
                    counted.broke_off()
                    failure, error = Failure.AFTER_HEAD, exc
            if not self.policy.next_host(method=method, failure=failure,
                                         resendable=resendable, hosts_tried=len(tried),
                                         hosts=len(self.balancer.hosts),
                                         attempts=counted.attempts):
                raise translate_error(error, self.service.name) from error
            logger.debug("%s %s: %s failed (%s, %s); trying the next host", method, target,
                         host, failure, error)

    def send(self, request: PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> Any:
        """requests' entry point, for ``Session.send``: one host in turn, urllib3 retries,
        no failover (the proxy itself calls :meth:`forward`)."""
        return super().send(request, stream, timeout or self.timeout,  # type: ignore[arg-type]
                            verify, cert, proxies)
