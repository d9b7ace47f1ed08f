"""wsgiproxy's WSGI application: route, check, forward, stream back.

Usage::

    gunicorn -k gevent wsgiproxy:app      # from the project root (reads gunicorn.conf.py)
    python -m wsgiproxy                   # gevent's pywsgi, one process

The app blocks on sockets while it waits for hosts, so it needs a server that runs each
request in its own greenlet (gunicorn's gevent worker, gevent's pywsgi) with the standard
library monkey-patched *before* this package builds its session. It is not meant for
thread- or process-per-request servers: each waiting request would hold a thread.

The app speaks WSGI on one side and :class:`~wsgiproxy.upstream.UpstreamResponse` on
the other; it never sees a socket, a connection pool or a cache entry.
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol
from urllib.parse import quote

from prometheus_client import REGISTRY

from .bodies import StreamedBody, read_request_body
from .errors import (
    ClientTimeout,
    FilterFailed,
    InternalError,
    ProxyError,
    TooManyTunnels,
    error_response,
    status_line,
)
from .exchange import CacheResult, Exchange
from .filters import Headers, Outcome, Request, Response
from .filters.chain import ChainBuilder
from .forwarded import Trust
from .headers import (
    check_header_size,
    client_headers_after_filters,
    request_id,
    upstream_headers,
    upstream_headers_after_filters,
    websocket_upgrade,
)
from .logs import AccessLog, configure_logging
from .metrics import Metrics
from .route_table import RouteTable
from .routes_file import Routes, load_routes
from .settings import Settings, load_settings
from .tunnel import Relay, TunnelBody
from .upstream import UpstreamClient, UpstreamRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from prometheus_client import CollectorRegistry

    from .filters import Answer
    from .filters.chain import Chain, FilterRun
    from .policy import ServicePolicy
    from .route_table import RouteMatch
    from .router import ParsedHost
    from .routes_file import Service
    from .upstream import Body, Channel, UpstreamResponse
    from .upstream.transport import AttemptLog

__all__ = ["ProxyApp", "Upstream", "create_app", "raw_target"]

logger = logging.getLogger(__name__)

#: Forwarding headers (as WSGI keys) that tell a host another host name or URL.
_REWRITING_CLAIMS: Final = ("HTTP_X_FORWARDED_HOST", "HTTP_X_ORIGINAL_URL",
                            "HTTP_X_REWRITE_URL", "HTTP_FORWARDED", "HTTP_X_FORWARDED_PREFIX",
                            "HTTP_X_ORIGINAL_HOST")

#: How the cache answered, as the ``X-Cache`` header tells the client.
_X_CACHE = {CacheResult.HIT: "HIT", CacheResult.REVALIDATED: "HIT",
            CacheResult.COALESCED: "HIT", CacheResult.STALE: "STALE"}


class Upstream(Protocol):
    """What the app needs of the upstream client (tests hand it their own)."""

    def channel(self, service: Service, policy: ServicePolicy) -> Channel: ...

    def retire(self, domains: list[str]) -> None: ...

    def send(self, channel: Channel, host: str, request: UpstreamRequest,
             log: AttemptLog) -> UpstreamResponse: ...

    def close(self) -> None: ...


def raw_target(environ: WSGIEnvironment) -> str:
    """The request target exactly as the client sent it.

    gunicorn passes it as ``RAW_URI`` (and wsgiproxy's pywsgi handler does too); for any
    other server it is rebuilt from ``PATH_INFO``, which has lost the client's escapes.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                 safe="/;=,@!$&'()*+:~", encoding="latin-1")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def _declares_body(environ: WSGIEnvironment) -> bool:
    length = environ.get("CONTENT_LENGTH")
    return bool(environ.get("HTTP_TRANSFER_ENCODING")) or bool(length and length != "0")


class FixedBody:
    """A body the proxy wrote itself; reports the end of the response on close()."""

    __slots__ = ("_chunks", "_on_close")

    def __init__(self, chunks: list[bytes], on_close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        self._on_close()


class Delivery:
    """A response body as the WSGI server iterates it: counts the bytes sent, says when
    a host broke its body off, and records the request when the server closes it."""

    __slots__ = ("_body", "_exchange", "_on_close", "_send_body")

    def __init__(self, body: Body, exchange: Exchange, on_close: Callable[[], None],
                 send_body: bool) -> None:
        self._body = body
        self._exchange = exchange
        self._on_close = on_close
        self._send_body = send_body  # False for HEAD (a stored GET has a body)

    def __iter__(self) -> Iterator[bytes]:
        if not self._send_body:
            return
        exchange = self._exchange
        try:
            for data in self._body:
                exchange.bytes_sent += len(data)
                yield data
        except ConnectionResetError as exc:
            logger.warning("request %s: %s after %d bytes", exchange.request_id, exc,
                           exchange.bytes_sent)
            raise

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            if self._send_body:
                self._exchange.complete = self._body.complete
            self._on_close()


class ProxyApp:
    """The proxy as a WSGI callable.

    :param settings: process settings (body limit, ...).
    :param routes: the services; each load becomes a :class:`~wsgiproxy.route_table.RouteTable`.
    :param upstream: sends to the service's hosts (:class:`~wsgiproxy.upstream.UpstreamClient`).
    :param metrics: counts every request; None records nothing (the access log is kept).
    :param access_log: writes a request's access line (default: JSON on stdout).

    Every error the proxy makes is answered here, and only here, as JSON
    ``{"error": "..."}`` with the status its :class:`~wsgiproxy.errors.ProxyError`
    class carries; anything else is a bug, logged with its traceback, answered 500.
    """

    #: The apps built in this process, for the servers' reload and shutdown hooks
    #: (which must find the app even when a WSGI middleware wraps it).
    _instances: ClassVar[weakref.WeakSet[ProxyApp]] = weakref.WeakSet()

    def __init__(self, settings: Settings, routes: Routes, upstream: Upstream,
                 metrics: Metrics | None = None,
                 access_log: Callable[[Exchange, float], None] | None = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.access_log = access_log or AccessLog()
        self.trust = Trust(settings.trusted_proxies)
        self._tunnels = 0  # open (or opening) upgraded connections
        self.chains = ChainBuilder(metrics.filter_error if metrics is not None else None)
        self.table = RouteTable.build(routes, settings, upstream, self.chains)
        self._track_filters()
        ProxyApp._instances.add(self)

    @classmethod
    def instances(cls) -> list[ProxyApp]:
        """The proxy apps built in this process so far."""
        return list(cls._instances)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR", "")
        exchange = Exchange(request_id=request_id(environ.get("HTTP_X_REQUEST_ID")),
                            method=environ["REQUEST_METHOD"], path=raw_target(environ),
                            client=self.trust.client(peer,
                                                     environ.get("HTTP_X_FORWARDED_FOR")))
        if self.metrics is not None:
            self.metrics.started()
        try:
            return self._proxy(environ, start_response, exchange)
        except ProxyError as error:
            logger.log(error.log_level, "request %s from %s: %s %s", exchange.request_id,
                       exchange.client, error.status.value, error.message)
            if isinstance(error, ClientTimeout):
                self.client_timed_out(error.phase)
            return self._error(start_response, error, exchange, environ)
        except Exception:
            logger.exception("request %s: unexpected error", exchange.request_id)
            return self._error(start_response, InternalError("internal proxy error"),
                               exchange, environ)

    def _proxy(self, environ: WSGIEnvironment, start_response: StartResponse,
               exchange: Exchange) -> Iterable[bytes]:
        check_header_size(environ)
        table = self.table  # one read: this request is served by one set of routes
        match = table.resolve(environ.get("HTTP_HOST"), exchange.path)
        route = match.route
        exchange.service, exchange.target = route.service.name, match.target
        trusted = self.trust.trusts(environ.get("REMOTE_ADDR", ""))
        run = None
        if route.filters:
            # Before the body is read: a filter's answer (401, 429) costs no upload.
            run, answer = self._filter_request(route.filters, environ, match, exchange,
                                               trusted)
            if answer is not None:
                return self._answer(start_response, exchange, run, answer, environ)
        body, length = read_request_body(environ, route.policy.max_request_body_bytes)
        exchange.bytes_received = length or 0
        if run is None:
            to_host = upstream_headers(environ, match.host.raw, exchange.request_id, length,
                                       trusted=trusted)
        else:
            to_host = upstream_headers_after_filters(run.request.headers, match.host.raw,
                                                     exchange.request_id, length)
        upgrade, client_socket = "", None
        if "HTTP_UPGRADE" in environ and websocket_upgrade(environ):
            # Both servers hand over the client's socket (the 101 and the bytes after it
            # are written there); under any other server the request goes on as plain HTTP.
            client_socket = environ.get("gunicorn.socket") or environ.get("wsgiproxy.socket")
            if client_socket is not None:
                upgrade = "websocket"
                to_host.update({"Connection": "Upgrade", "Upgrade": environ["HTTP_UPGRADE"]})
                self._claim_tunnel()
        try:
            response = self.upstream.send(
                route.channel, match.host.normalized,
                UpstreamRequest(exchange.method, exchange.target, to_host, body, upgrade,
                                storable=self._canonical(match.host, trusted, environ),
                                authenticated=run is not None and run.request.authenticated),
                exchange)
        except BaseException:
            if upgrade:
                self._tunnels -= 1
            raise
        if response.upgraded is not None:
            return self._tunnel(start_response, exchange, response, client_socket)
        if upgrade:
            self._tunnels -= 1  # the host answered without switching protocols
        status, reason = response.status, response.reason
        headers = [*response.headers, ("X-Cache", _X_CACHE.get(response.cache, "MISS"))]
        if run is not None and run.chain.responds:
            view = Response(status, Headers._of(headers), cache=response.cache)
            try:
                run.on_response(view)
            except BaseException:
                response.body.close()
                raise
            if view.status != status:
                status, reason = view.status, ""
            headers = client_headers_after_filters(headers, view.headers)
        headers.append(("X-Request-ID", exchange.request_id))
        exchange.cache, exchange.status = response.cache, status
        if isinstance(body, StreamedBody) and not body.finished:
            # Answered (by the host, or from the cache) before the client's body was all
            # read: do not let the server read the rest before the next request.
            headers.append(("Connection", "close"))
        start_response(status_line(status, reason), headers)
        if response.cache == CacheResult.HIT:
            # A hit does no I/O, so this greenlet would not yield: under keep-alive load
            # it serves hit after hit while other connections wait. Yielding once
            # (gevent.sleep(0) with the standard library patched) keeps the hit path's
            # tail latency down (docs/performance.md).
            time.sleep(0)
        return Delivery(response.body, exchange, lambda: self._finished(exchange),
                        send_body=exchange.method != "HEAD")

    def _tunnel(self, start_response: StartResponse, exchange: Exchange,
                response: UpstreamResponse, client_socket: Any) -> Iterable[bytes]:
        """The host switched protocols: the client gets its 101, then the bytes."""
        assert response.upgraded is not None
        exchange.status, exchange.upgrade = 101, "websocket"
        try:
            write = start_response(status_line(101, response.reason),
                                   [*response.headers, ("X-Request-ID", exchange.request_id)])
        except BaseException:  # a header the server refuses: no tunnel after all
            self._tunnels -= 1
            response.upgraded.close()
            raise
        metrics, service = self.metrics, exchange.service

        def opened() -> None:
            if metrics is not None:
                metrics.tunnel_opened(service)

        def closed(was_open: bool) -> None:
            self._tunnels -= 1
            if was_open and metrics is not None:
                metrics.tunnel_closed(service)
            self._finished(exchange)

        relay = Relay(client_socket, response.upgraded,
                      self.settings.tunnel_idle_timeout_seconds)
        return TunnelBody(relay, exchange, write, opened, closed)

    def _filter_request(self, chain: Chain, environ: WSGIEnvironment, match: RouteMatch,
                        exchange: Exchange, trusted: bool) -> tuple[FilterRun, Answer | None]:
        """Run the route's request hooks on a view of what the host would get."""
        fields = upstream_headers(environ, match.host.raw, exchange.request_id, None,
                                  trusted=trusted)
        request = Request(exchange.method, match.target, Headers._of(list(fields.items())),
                          host=match.host.raw, client=exchange.client,
                          service=exchange.service,
                          scheme=fields.get("X-Forwarded-Proto", "http"),
                          client_target=exchange.path)
        run = exchange.filters = chain.start(request)
        answer = run.on_request()
        exchange.target = request.target
        return run, answer

    def _answer(self, start_response: StartResponse, exchange: Exchange, run: FilterRun,
                answer: Answer, environ: WSGIEnvironment) -> Iterable[bytes]:
        """A filter answered: the earlier filters see it, then the client gets it."""
        # No Content-Length on a 204 (nor a 304): such responses have no body.
        length = [] if answer.status in (204, 304) else \
            [("Content-Length", str(len(answer.body)))]
        view = Response(answer.status, Headers._of([*answer.headers, *length]),
                        source="filter")
        run.on_response(view)
        headers = [*client_headers_after_filters(length, view.headers),
                   ("X-Request-ID", exchange.request_id)]
        if _declares_body(environ):  # its body was not read: see _error
            headers.append(("Connection", "close"))
        exchange.status = view.status
        send = exchange.method != "HEAD"
        exchange.bytes_sent = len(answer.body) if send else 0
        start_response(status_line(view.status), headers)
        return FixedBody([answer.body] if send else [], lambda: self._finished(exchange))

    @staticmethod
    def _canonical(host: ParsedHost, trusted: bool, environ: WSGIEnvironment) -> bool:
        """Whether a response to this request may be stored under its cache key.

        The key has the Host normalised, but the host sees it as sent: a response built
        for ``APP.TEST.`` or ``app.test:80`` (a different origin to a browser) must not
        be stored for ``app.test``. Likewise a trusted peer's claims about the original
        host or URL, which a host may build links from: such responses are served, and
        may be answered from the cache, but are never stored."""
        if host.raw != host.normalized:
            return False
        return not (trusted and any(key in environ for key in _REWRITING_CLAIMS))

    def _claim_tunnel(self) -> None:
        """A place for one more tunnel in this worker, or 503 (MAX_TUNNELS): each holds
        two connections and a greenlet for as long as its ends keep it open."""
        if self._tunnels >= self.settings.max_tunnels:
            raise TooManyTunnels(f"too many open tunnels ({self.settings.max_tunnels}); "
                                 "try again later")
        self._tunnels += 1

    def client_timed_out(self, phase: str) -> None:
        """Count a client that was too slow (the servers call it for header timeouts)."""
        if self.metrics is not None:
            self.metrics.client_timeout(phase)

    def _error(self, start_response: StartResponse, error: ProxyError,
               exchange: Exchange, environ: WSGIEnvironment) -> Iterable[bytes]:
        rendered = error_response(error, exchange.request_id)
        status, headers = error.status.value, rendered.headers
        run = exchange.filters
        if run is not None and run.chain.responds and not isinstance(error, FilterFailed):
            status, headers = _filtered_error(run, status, headers)
        exchange.status = status
        exchange.bytes_sent = len(rendered.body)
        if not error.close_connection and _declares_body(environ):
            # Answered before its body was read: the server would read (and drop) the
            # rest before the next request, for as long as the client cares to send.
            headers = [*headers, ("Connection", "close")]
        start_response(status_line(status) if status != error.status.value else rendered.status,
                       headers, sys.exc_info())
        return FixedBody([rendered.body], lambda: self._finished(exchange))

    def _finished(self, exchange: Exchange) -> None:
        """The response has ended (or was broken off): log it and count it, once."""
        finished_at = time.perf_counter()
        if exchange.filters is not None:
            exchange.filters.on_complete(Outcome(
                exchange.status, exchange.cache, exchange.bytes_sent,
                finished_at - exchange.received_at, exchange.upstream_host,
                exchange.complete, exchange.filters.answered_by))
        try:
            self.access_log(exchange, finished_at)
            if self.metrics is not None:
                self.metrics.finished(exchange, finished_at)
        except Exception:
            logger.exception("request %s: recording the request failed", exchange.request_id)

    def reload(self, routes: Routes) -> None:
        """Serve ``routes`` from now on: one new table, swapped in with one assignment.
        Services that did not change keep their adapters (connections, ejected hosts);
        their cached entries stay, the shared store outliving tables. A request already
        routed finishes on the table it was routed with."""
        if self.metrics is not None:
            self.metrics.track(routes.services)
        self.table = RouteTable.build(routes, self.settings, self.upstream, self.chains)
        self._track_filters()

    def _track_filters(self) -> None:
        if self.metrics is not None:
            self.metrics.track_filters((route.service.name, f.name)
                                       for route in self.table for f in route.filters.filters)

    def close(self) -> None:
        """Close the upstream connections and write out the buffered access log."""
        self.upstream.close()
        if isinstance(self.access_log, AccessLog):
            self.access_log.flush()


def _filtered_error(run: FilterRun, status: int,
                    headers: list[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]]:
    """An error the proxy made, through the response hooks. A filter that fails on it
    is logged and counted, and the error goes out as it was."""
    view = Response(status, Headers._of(list(headers)), source="proxy")
    try:
        run.on_response(view)
    except FilterFailed:
        return status, headers
    return view.status, client_headers_after_filters(headers, view.headers)


def create_app(settings: Settings | None = None, routes: Routes | None = None,
               registry: CollectorRegistry | None = None) -> ProxyApp:
    """Build the app from the settings (environment/``.env``) and the routes file.

    :param registry: where the metrics go; the process-wide default when None.
    """
    settings = load_settings() if settings is None else settings
    configure_logging(settings.log_level)
    routes = load_routes(settings.configuration_filename) if routes is None else routes
    metrics = Metrics(routes.services, registry or REGISTRY)
    upstream = UpstreamClient(settings, host_listener=metrics.host_state,
                              cache_errors=metrics.cache_error)
    return ProxyApp(settings, routes, upstream, metrics)
