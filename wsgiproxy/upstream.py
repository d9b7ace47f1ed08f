"""Forwarding to a service's hosts through one pooled ``requests.Session`` (SPEC §5, §6).

The session holds one :class:`~wsgiproxy.balancer.RoundRobinAdapter` per service, mounted
at ``http://<domain>/``, each with urllib3 ``Retry`` (same-host retries) and
CacheControl. Everything else here is what a proxy does differently from a client:

* ``trust_env`` off (no ``*_PROXY``/netrc from the environment), a cookie jar that
  stores nothing (``Session.send`` would otherwise keep every upstream ``Set-Cookie``
  and send it with the next client's request), no redirects followed, bodies streamed
  and never decoded.
* The hot path calls the mounted adapter directly: ``Session.request``/``send`` would
  merge environment settings, run hooks, parse cookies and resolve redirects, all of
  which a proxy must skip.
* Failover to the next host happens here, because urllib3 retries on the pool it
  started with: a host that refused the connection (the request never left) is
  ejected and the next one is tried at once, for every method.
* Every ``requests``/urllib3 exception becomes a :class:`~wsgiproxy.errors.ProxyError`
  in :func:`translate_error`, and nowhere else.
"""

from __future__ import annotations

import errno
import http.client
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Final

import requests
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, UnrewindableBodyError
from urllib3.util import Retry, Timeout

from .balancer import RoundRobin, RoundRobinAdapter
from .bodies import ClientBodyError
from .cache import make_cache
from .cache_policy import LOOKUP_ATTR
from .errors import BadGateway, BadRequest, NoHostReachable, ProxyError, UpstreamTimeout
from .exchange import Outcome, current_exchange
from .headers import EnvironHeaders
from .transport import RETRYABLE_STATUSES, classify_error

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from urllib3.response import BaseHTTPResponse

    from .cache_policy import Answer
    from .exchange import Exchange
    from .routes import Backend, Service
    from .settings import Settings

__all__ = ["IDEMPOTENT_METHODS", "ProxyRetry", "Upstream", "UpstreamBody", "build_retry",
           "logical_url", "translate_error"]

logger = logging.getLogger(__name__)

#: SPEC §6: only these are ever sent to a host a second time.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: A Retry-After longer than this is waited this long (SPEC §6).
RETRY_AFTER_CAP_SECONDS: Final = 2
#: Response bytes read per step; read1() returns what has arrived, up to this.
CHUNK_BYTES: Final = 64 * 1024
#: Idle connections kept per host, per worker: as many as a worker can have requests in
#: flight (gunicorn's worker_connections), so a burst does not end with connections
#: thrown away and opened again (with a 64 limit, 500 concurrent slow requests churned
#: most of their connections). Extra ones are opened under load, as urllib3 does.
POOL_MAXSIZE: Final = 1000

_CONNECT_FAILURES: Final = frozenset({Outcome.REFUSED, Outcome.CONNECT_TIMEOUT})

#: Told (service name, host, up) when a host is ejected or answers again.
ServiceHostListener = Callable[[str, "Backend", bool], None]


def logical_url(service: Service, target: str) -> str:
    """A request's URL as the session and the cache see it: the service's domain (lower
    case, from the routes file) and the raw target. It is also the cache key, so the hit
    path and the adapter path must build it here, the one way."""
    return f"http://{service.domain}{target}"


@dataclass(slots=True)
class _CacheQuery:
    """What the cache needs to know of a request: its logical URL, method, headers."""

    url: str
    method: str
    headers: EnvironHeaders


class UpstreamHeaders(CaseInsensitiveDict[str]):
    """The request's headers: case-insensitive for the cache's lookups, and a plain dict
    when urllib3 copies them before sending (it only iterates them)."""

    def copy(self) -> dict[str, str]:  # type: ignore[override]
        return dict(self._store.values())  # type: ignore[attr-defined]


class ProxyRetry(Retry):
    """urllib3 ``Retry`` that waits on ``Retry-After`` only with a 503.

    ``Retry`` also retries 413 and 429 when they carry ``Retry-After``; a proxy passes
    those to the client, whose request it is to repeat or not.
    """

    RETRY_AFTER_STATUS_CODES = frozenset({503})


def build_retry(settings: Settings) -> Retry:
    """Same-host retries after the request was sent: idempotent methods only, read
    errors and 502/503/504, MAX_HTTP_RETRIES in all. Connect failures are not retried
    here (``connect=0``): :meth:`Upstream.forward` moves on to the next host instead."""
    return ProxyRetry(
        total=settings.max_http_retries,
        connect=0,
        read=settings.max_http_retries,
        status=settings.max_http_retries,
        other=0,
        redirect=0,
        allowed_methods=IDEMPOTENT_METHODS,
        status_forcelist=RETRYABLE_STATUSES,
        backoff_factor=0.05,  # 0 s, 0.1 s, 0.2 s, ...
        backoff_max=1.0,
        raise_on_status=False,  # give the client the host's last answer
        raise_on_redirect=False,
        respect_retry_after_header=True,
        retry_after_max=RETRY_AFTER_CAP_SECONDS,
    )


def _cause(error: BaseException) -> BaseException:
    """The urllib3/socket error under requests' and urllib3's wrappers."""
    if isinstance(error, requests.RequestException) and error.args:
        error = error.args[0]
    if isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, ProtocolError) and len(error.args) > 1:
        error = error.args[1]
    return error


def translate_error(error: BaseException, service: str) -> ProxyError:
    """The one place where a transport exception becomes a proxy error."""
    cause = _cause(error)
    if isinstance(cause, ClientBodyError):
        return BadRequest(str(cause))
    if isinstance(cause, UnrewindableBodyError):
        return BadGateway(f"service {service!r}: the host failed while the request body "
                          "was being streamed, and a streamed body cannot be resent")
    outcome = classify_error(cause)
    if outcome in _CONNECT_FAILURES:
        return NoHostReachable(f"service {service!r}: no host could be reached")
    if outcome == Outcome.READ_TIMEOUT:
        return UpstreamTimeout(f"service {service!r}: the host did not answer in time")
    if outcome == Outcome.INVALID_RESPONSE:
        return BadGateway(f"service {service!r}: the host sent an invalid response")
    return BadGateway(f"service {service!r}: the host closed the connection")


def _for_service(listener: ServiceHostListener | None,
                 name: str) -> Callable[[Backend, bool], None] | None:
    if listener is None:
        return None
    return lambda host, up: listener(name, host, up)


class UpstreamBody:
    """The WSGI response iterable: the host's body, undecoded, passed on as it arrives.

    ``close()`` (which every WSGI server calls) returns the connection to the pool when
    the body was read to the end, and closes it otherwise, e.g. when the client went
    away mid-response: the rest of the body is never read into the pool.
    """

    __slots__ = ("_complete", "_exchange", "_first", "_on_close", "_raw", "_send_body")

    def __init__(self, raw: BaseHTTPResponse, exchange: Exchange,
                 on_close: Callable[[], None], send_body: bool = True,
                 first: bytes = b"") -> None:
        self._raw = raw
        self._exchange = exchange
        self._on_close = on_close
        self._complete = False
        self._send_body = send_body
        self._first = first  # already read by Upstream.fetch

    def __iter__(self) -> Iterator[bytes]:
        read1 = self._raw.read1
        exchange = self._exchange
        if not self._send_body:  # HEAD: a HEAD answered from a stored GET has a body
            self._complete = True
            return
        if self._first:
            exchange.bytes_sent += len(self._first)
            yield self._first
        try:
            while data := read1(CHUNK_BYTES, decode_content=False):
                exchange.bytes_sent += len(data)
                yield data
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            logger.warning("request %s: upstream response broken off after %d bytes: %s",
                           exchange.request_id, exchange.bytes_sent, exc)
            # Headers are out; the only honest signal left is to drop the client
            # connection without finishing the body. Both gunicorn and pywsgi treat
            # ECONNRESET from the app iterable as exactly that, quietly.
            raise ConnectionResetError(errno.ECONNRESET, "upstream response broken off") \
                from exc
        self._complete = True

    def close(self) -> None:
        raw = self._raw
        if not self._complete or not self._send_body:
            raw.close()
            self._exchange.complete = False
        raw.release_conn()
        self._on_close()


class Upstream:
    """Sends requests to the hosts of routed services.

    :param services: from the routes file; one adapter is mounted per domain.
    :param settings: timeouts, retry counts, ejection time.
    :param host_listener: told when a host goes down or comes back (a metric).
    :param cache_errors: told about each failed operation of a Redis cache (a metric).

    Usage::

        upstream = Upstream(routes.services, settings)
        response = upstream.forward(exchange, service, "GET", headers, None)
    """

    def __init__(
        self,
        services: tuple[Service, ...],
        settings: Settings,
        host_listener: ServiceHostListener | None = None,
        cache_errors: Callable[[str], None] | None = None,
    ) -> None:
        self._forward_retries = settings.max_forward_retries
        self._max_attempts = settings.max_attempts
        self._timeout = Timeout(connect=settings.upstream_connect_timeout_seconds,
                                read=settings.upstream_read_timeout_seconds)
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session.adapters.clear()  # nothing but the services' domains is reachable
        retry = build_retry(settings)
        #: One store for every service: keys start with the service's domain.
        self.cache = make_cache(settings, cache_errors)
        self.caching = self.cache is not None
        cache_kwargs = {"cache": self.cache, "ttl": settings.http_cache_ttl_seconds,
                        "max_object_bytes": settings.cache_max_object_bytes}
        self._adapters: dict[str, RoundRobinAdapter] = {}
        for service in services:
            balancer = RoundRobin(service.hosts, settings.host_eject_seconds,
                                  listener=_for_service(host_listener, service.name))
            adapter = RoundRobinAdapter(balancer, max_retries=retry, pool_maxsize=POOL_MAXSIZE,
                                        **cache_kwargs)
            self.session.mount(f"http://{service.domain}/", adapter)
            self._adapters[service.domain] = adapter

    def cached(self, exchange: Exchange, service: Service,
               environ: Mapping[str, Any]) -> Answer | None:
        """The answer to a GET or HEAD from the cache, before any upstream work.

        On a miss or a stale entry the lookup is kept on the exchange, and
        :meth:`forward` hands it to the adapter: the store is asked once per request.
        """
        controller = self._adapters[service.domain].controller
        query = _CacheQuery(logical_url(service, exchange.target), exchange.method,
                            EnvironHeaders(environ))
        lookup = controller.lookup(query)
        if lookup.fresh is not None:
            return controller.answer(lookup.fresh, query)
        exchange.cache_lookup = lookup
        return None

    def fetch(self, exchange: Exchange, service: Service, method: str,
              headers: dict[str, str], body: Any) -> tuple[requests.Response, bytes]:
        """:meth:`forward`, and the first bytes of the body, before the client is answered.

        A host can send a response's head and fail before its body (killed, reset).
        Until the first body bytes have arrived nothing has reached the client, so such
        a failure is an ordinary upstream error: an idempotent request is sent again
        (round-robin picks the next host) within the attempt bound. From the first
        bytes on, the body streams as it arrives, and a failure can only break it off.
        """
        while True:
            response = self.forward(exchange, service, method, headers, body)
            if method == "HEAD":
                return response, b""
            raw = response.raw
            try:
                return response, raw.read1(CHUNK_BYTES, decode_content=False)
            except (HTTPError, OSError, http.client.HTTPException) as exc:
                raw.close()
                raw.release_conn()
                if exchange.attempts:
                    exchange.attempts[-1].outcome = Outcome.RESET
                resendable = body is None or isinstance(body, bytes)
                if (method not in IDEMPOTENT_METHODS or not resendable
                        or len(exchange.attempts) >= self._max_attempts):
                    raise translate_error(exc, service.name) from exc
                logger.debug("request %s: %s broke off the body (%s); sending again",
                             exchange.request_id, exchange.upstream_host, exc)

    def forward(
        self,
        exchange: Exchange,
        service: Service,
        method: str,
        headers: dict[str, str],
        body: Any,
    ) -> requests.Response:
        """Send the request to the service and return the response, body unread."""
        adapter = self._adapters[service.domain]
        request = PreparedRequest()
        request.method = method
        request.url = logical_url(service, exchange.target)
        request.headers = UpstreamHeaders(headers)
        request.body = body
        if exchange.cache_lookup is not None:
            setattr(request, LOOKUP_ATTR, exchange.cache_lookup)
        token = current_exchange.set(exchange)
        try:
            return self._send(adapter, request, exchange, service)
        finally:
            current_exchange.reset(token)

    def _send(self, adapter: RoundRobinAdapter, request: PreparedRequest,
              exchange: Exchange, service: Service) -> requests.Response:
        balancer = adapter.balancer
        tried: set[Backend] = set()
        error: BaseException | None = None
        for _ in range(1 + self._forward_retries):
            try:
                response = adapter.send(request, stream=True, timeout=self._timeout)
            except (requests.RequestException, HTTPError, OSError,
                    http.client.HTTPException) as exc:
                cause = _cause(exc)
                if classify_error(cause) not in _CONNECT_FAILURES \
                        or isinstance(cause, ClientBodyError):
                    raise translate_error(exc, service.name) from exc
                host = exchange.backend
                logger.debug("request %s: %s could not be reached (%s); next host",
                             exchange.request_id, host, cause)
                if host is not None:
                    balancer.eject(host)
                    tried.add(host)
                error = exc
                if len(tried) >= len(balancer.hosts):
                    break
                continue
            if getattr(response, "from_cache", False):
                return response
            if exchange.backend is not None:
                balancer.mark_up(exchange.backend)
            if response.status_code == 101:
                response.raw.close()
                raise BadGateway(f"service {service.name!r}: the host switched protocols "
                                 "unasked")
            return response
        assert error is not None
        raise translate_error(error, service.name) from error

    def close(self) -> None:
        self.session.close()
