"""The adapter of one service: its hosts' connection pools, and the loop that moves a
request on from a host that failed (docs/failures.md).

A :class:`ServiceAdapter` is mounted on the upstream client's ``requests.Session`` at
``http://<domain>/`` for each service. From requests' ``HTTPAdapter`` it uses the
pool manager (a pool per host, its size, TLS settings per pool), the ``Retry`` it
carries (``max_retries``) and ``close()``; it does not use ``send()``, which builds a
``requests.Response`` through cookie, redirect and hook machinery a proxy must skip.
Its connections come from the host :class:`~wsgiproxy.balancer.RoundRobin` picks, not
from the URL, so the URL (and the cache key) stays the service's.

:meth:`ServiceAdapter.forward` sends to the next host in turn, lets urllib3's ``Retry``
repeat on that host what may be repeated, and asks the service's
:class:`~wsgiproxy.upstream.retry.RetryPolicy` whether another host may be tried after
a failure. It returns a :class:`~wsgiproxy.upstream.messages.HostResponse` once the
first body bytes have arrived: until then nothing has reached the client, so a host
that dies between its response head and its body is an ordinary failure. Failures are
classified by :mod:`.failures`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from requests.adapters import HTTPAdapter

from ..errors import BadGateway
from ..limits import IO_CHUNK_BYTES
from .body import ResponseBody
from .failures import (
    CONNECT_FAILURES,
    TRANSPORT_ERRORS,
    Failure,
    Outcome,
    failure_of,
    is_client_body_error,
    translate,
)
from .messages import HostResponse
from .transport import FinalResponse, UpstreamConnectionPool, UpstreamHTTPSConnectionPool

if TYPE_CHECKING:
    from collections.abc import Mapping

    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse
    from urllib3.util import Timeout

    from ..balancer import RoundRobin
    from ..routes_file import Backend, Service
    from .budget import RetryBudget
    from .retry import RetryPolicy
    from .transport import AttemptLog

__all__ = ["ServiceAdapter"]

logger = logging.getLogger(__name__)

#: Idle connections kept per host, per worker: as many as a worker can have requests in
#: flight, so a burst does not end with connections thrown away and opened again (a
#: small pool churned most of its connections under many concurrent slow requests).
#: Extra ones are opened under load, as urllib3 does.
POOL_MAXSIZE: Final = 1000


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


#: Attempt outcomes that count as an error of the host for outlier ejection, as a 5xx
#: does (docs/health.md): it took the request and broke the exchange.
_HOST_ERRORS: Final = frozenset({Outcome.READ_TIMEOUT, Outcome.RESET,
                                 Outcome.INVALID_RESPONSE})


class _CountingLog:
    """An :class:`AttemptLog` that passes every entry on, counts the attempts and tells
    the balancer how each attempt at the current host ended (outlier ejection)."""

    __slots__ = ("attempts", "balancer", "host", "log", "on_status")

    def __init__(self, log: AttemptLog, balancer: RoundRobin,
                 on_status: frozenset[int]) -> None:
        self.log = log
        self.balancer = balancer
        self.on_status = on_status
        self.host: Backend | None = None  # the host being tried
        self.attempts = 0

    def attempted(self, host: str, outcome: str, status: int = 0) -> None:
        self.attempts += 1
        if status:  # the service's own retried statuses, not the transport's default
            outcome = Outcome.RETRYABLE_STATUS if status in self.on_status \
                else Outcome.RESPONSE
        if self.host is not None and outcome not in CONNECT_FAILURES \
                and outcome != Outcome.CLIENT_ABORTED:
            self.balancer.answered(self.host, status >= 500 or outcome in _HOST_ERRORS)
        self.log.attempted(host, outcome, status)

    def sent(self, at: float) -> None:
        self.log.sent(at)

    def answered(self, at: float) -> None:
        self.log.answered(at)

    def broke_off(self, outcome: str) -> None:
        if self.host is not None:
            self.balancer.answered(self.host, True)
        self.log.broke_off(outcome)


class ServiceAdapter(HTTPAdapter):
    """The hosts of one service behind one requests adapter.

    :param service: from the routes file.
    :param balancer: picks the host of each attempt.
    :param policy: same-host retries (urllib3 ``Retry``) and when to try another host.
    :param timeout: connect and read timeouts per attempt.
    :param budget: what retries of a request that was sent are drawn from.

    Usage::

        adapter = ServiceAdapter(service, RoundRobin(service.hosts, 10), policy, timeout)
        session.mount(f"http://{service.domain}/", adapter)
        response = adapter.forward("GET", "/x?y", {"Host": service.domain}, None, log)
    """

    def __init__(self, service: Service, balancer: RoundRobin, policy: RetryPolicy,
                 timeout: Timeout, pool_maxsize: int = POOL_MAXSIZE,
                 budget: RetryBudget | None = None) -> None:
        self.service = service
        self.balancer = balancer
        self.policy = policy
        self.budget = budget
        self.timeout = timeout
        self._scheme = "https" if service.tls is not None else "http"
        self._tls_kwargs = _tls_pool_kwargs(service)
        self._pools: dict[Backend, HTTPConnectionPool] = {}
        # One pool per host: pool_connections = number of hosts, so none is evicted.
        super().__init__(pool_connections=len(service.hosts), pool_maxsize=pool_maxsize,
                         max_retries=policy.same_host(budget))

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

    def forward(self, method: str, target: str, headers: Mapping[str, str], body: Any,
                log: AttemptLog, upgrade: bool = False) -> HostResponse:
        """Send the request to the service and return the host's response with its
        first body bytes read, or raise the :class:`ProxyError` of the last failure.

        :param target: the raw target, sent byte-for-byte.
        :param body: ``bytes``, a read-once stream, or None.
        :param log: every attempt is written there.
        :param upgrade: the request asks to switch protocols (a WebSocket handshake):
            a ``101`` is the answer, returned at once with its connection.
        """
        counted = _CountingLog(log, self.balancer, self.policy.on_status)
        tried: set[Backend] = set()
        resendable = body is None or isinstance(body, bytes)
        if self.budget is not None:
            self.budget.request()
        while True:
            host = counted.host = self.balancer.pick()
            tried.add(host)
            try:
                raw = self.pool(host).urlopen(
                    method, target, body=body, headers=headers, retries=self.max_retries,
                    redirect=False, assert_same_host=False, preload_content=False,
                    decode_content=False, release_conn=False, timeout=self.timeout,
                    target=target, log=counted)
            except TRANSPORT_ERRORS as exc:
                if is_client_body_error(exc):
                    raise translate(exc, self.service.name) from exc
                failure = failure_of(exc)
                if failure == Failure.NOT_SENT:
                    self.balancer.eject(host)
                error: BaseException = exc
            else:
                self.balancer.mark_up(host)
                try:
                    return self._answer(method, raw, upgrade)
                except TRANSPORT_ERRORS as exc:
                    # A head, then nothing: the client has seen none of it yet.
                    raw.close()
                    raw.release_conn()
                    counted.broke_off(Outcome.RESET)
                    failure, error = Failure.AFTER_HEAD, exc
            if not self.policy.next_host(method=method, failure=failure,
                                         resendable=resendable, hosts_tried=len(tried),
                                         hosts=len(self.balancer.hosts),
                                         attempts=counted.attempts, budget=self.budget):
                raise translate(error, self.service.name) from error
            logger.debug("%s %s: %s failed (%s, %s); trying the next host", method, target,
                         host, failure, error)

    def _answer(self, method: str, raw: BaseHTTPResponse, upgrade: bool) -> HostResponse:
        """The host's response as plain values, its first body bytes read."""
        if raw.status == 101 and not upgrade:
            raw.close()
            raw.release_conn()
            raise BadGateway(f"service {self.service.name!r}: the host switched protocols "
                             "unasked")
        ended = method == "HEAD" or raw.status == 101
        first = b"" if ended else raw.read1(IO_CHUNK_BYTES, decode_content=False)
        return HostResponse(raw.status, raw.reason or "", _fields(raw),
                            ResponseBody(raw, first, ended=ended), chunked=bool(raw.chunked))


def _fields(raw: BaseHTTPResponse) -> list[tuple[str, str]]:
    """The response's header fields in the order the host sent them, and without a walk
    over urllib3's ``HTTPHeaderDict``, which regroups repeated names (``_original_response``
    is the ``http.client`` response beneath, which requests reads for cookies too)."""
    original = getattr(raw, "_original_response", None)
    if isinstance(original, FinalResponse):
        return list(original.fields)
    return list(raw.headers.items())
