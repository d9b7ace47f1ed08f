"""Round-robin over a service's hosts, and the requests adapter that applies it.

:class:`RoundRobin` is pure bookkeeping (no I/O, so no greenlet switch can interleave a
pick): hosts in routes-file order, one after the other, skipping a host that refused a
connection until its ejection runs out. When every host is ejected they are tried
anyway, in order: a guess beats a certain 502.

:class:`RoundRobinAdapter` is mounted on the shared ``requests.Session`` at
``http://<domain>/``. A request keeps its logical URL ``http://<domain>/<path>`` (which
is what CacheControl keys its cache on, so a response fetched from one host serves the
requests that round-robin sends to another); only the connection pool is swapped for
the picked host's, through the hook requests documents for this,
:meth:`~requests.adapters.HTTPAdapter.build_connection_pool_key_attributes`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from requests.adapters import HTTPAdapter
from requests.models import Response

from .cache_policy import SharedCacheAdapter
from .exchange import current_exchange
from .transport import UpstreamConnectionPool

if TYPE_CHECKING:
    from collections.abc import Sequence

    from requests import PreparedRequest

    from .routes import Backend

__all__ = ["RoundRobin", "RoundRobinAdapter"]

logger = logging.getLogger(__name__)

#: Called with (host, up) whenever a host is ejected (False) or answers again (True).
HostStateListener = Callable[["Backend", bool], None]


class RoundRobin:
    """The hosts of one service, each in turn, skipping ejected ones.

    :param hosts: in routes-file order.
    :param eject_seconds: how long :meth:`eject` keeps a host out of rotation.
    :param clock: a monotonic clock; tests pass their own.

    Usage::

        rr = RoundRobin(service.hosts, eject_seconds=10)
        host = rr.pick()
        rr.eject(host)  # it refused: skip it for 10 s
    """

    def __init__(
        self,
        hosts: Sequence[Backend],
        eject_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        listener: HostStateListener | None = None,
    ) -> None:
        if not hosts:
            raise ValueError("a service needs at least one host")
        self.hosts: tuple[Backend, ...] = tuple(hosts)
        self._eject_seconds = eject_seconds
        self._clock = clock
        self._listener = listener
        # itertools.count's next() is atomic, so concurrent picks never share a slot.
        self._turn = itertools.count()
        self._ejected_until = [0.0] * len(self.hosts)

    def pick(self) -> Backend:
        """The next host in turn that is not ejected (or the next one, if all are)."""
        n = len(self.hosts)
        i = next(self._turn) % n
        if not self._ejected_until[i]:
            return self.hosts[i]
        # Skipping consumes turns, so the live hosts still share the load evenly.
        now = self._clock()
        for _ in range(n):
            if self._ejected_until[i] <= now:
                return self.hosts[i]
            i = next(self._turn) % n
        # Every host is ejected. That took n + 1 turns, so successive picks still
        # rotate through the hosts rather than hammering one.
        logger.debug("every host is ejected; trying %s anyway", self.hosts[i])
        return self.hosts[i]

    def eject(self, host: Backend) -> None:
        """Skip ``host`` for ``eject_seconds`` (it refused or timed out connecting)."""
        i = self.hosts.index(host)
        was_up = self._ejected_until[i] == 0.0
        self._ejected_until[i] = self._clock() + self._eject_seconds
        if was_up:
            logger.warning("host %s is down: skipped for %gs", host, self._eject_seconds)
            if self._listener:
                self._listener(host, False)

    def mark_up(self, host: Backend) -> None:
        """``host`` answered: back in rotation at once."""
        i = self.hosts.index(host)
        if self._ejected_until[i]:
            self._ejected_until[i] = 0.0
            logger.warning("host %s is up again", host)
            if self._listener:
                self._listener(host, True)


class ProxyHTTPAdapter(HTTPAdapter):
    """``HTTPAdapter`` without the client-side work a proxy must not do.

    ``HTTPAdapter.build_response`` copies the headers into a dict (merging repeated
    ones), guesses a text encoding and parses every ``Set-Cookie`` into a cookie jar.
    The proxy reads status, headers and body from ``response.raw`` and passes cookies
    through untouched, so none of that is wanted.
    """

    def build_response(self, req: PreparedRequest, resp: Any) -> Response:
        response = Response()
        response.status_code = resp.status
        response.headers = resp.headers
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response


class RoundRobinAdapter(SharedCacheAdapter, ProxyHTTPAdapter):
    """The adapter of one service: CacheControl on top, urllib3 ``Retry`` below,
    and every request's connection taken from the pool of the next host in turn.

    The MRO is RoundRobinAdapter → SharedCacheAdapter → CacheControlAdapter →
    ProxyHTTPAdapter → HTTPAdapter, so a cache hit returns before a host is picked.

    :param balancer: the service's :class:`RoundRobin`.
    :param kwargs: passed on to :class:`~wsgiproxy.cache_policy.SharedCacheAdapter`
        (``cache``, ``ttl``, ``max_object_bytes``) and from there to ``HTTPAdapter``
        (``max_retries``, ``pool_maxsize``, ...).

    Usage::

        adapter = RoundRobinAdapter(RoundRobin(service.hosts, 10), cache=None,
                                    max_retries=retry)
        session.mount(f"http://{service.domain}/", adapter)
    """

    def __init__(self, balancer: RoundRobin, **kwargs: Any) -> None:
        self.balancer = balancer
        # The pool manager holds one pool per host (pool_connections = number of
        # hosts, so none is ever evicted); this is a shortcut to them.
        self._pools: dict[tuple[str, int], Any] = {}
        kwargs.setdefault("pool_connections", len(balancer.hosts))
        kwargs.setdefault("cache", None)
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        """Only for subclassing: swaps in the proxy's pool class (see :mod:`.transport`)."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self._pools = {}
        self.poolmanager.pool_classes_by_scheme = {"http": UpstreamConnectionPool}

    def build_connection_pool_key_attributes(  # type: ignore[override]
        self, request: PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Only for subclassing: the next host's pool, whatever host the URL names."""
        host = self.balancer.pick()
        exchange = current_exchange.get()
        if exchange is not None:
            exchange.backend = host
        logger.debug("%s %s -> %s", request.method, request.url, host)
        return {"scheme": "http", "host": host.address, "port": host.port}, {}

    def get_connection_with_tls_context(self, request: PreparedRequest, verify: Any,
                                        proxies: Any = None, cert: Any = None) -> Any:
        """Only for subclassing: the picked host's pool, looked up once per host.

        ``HTTPAdapter``'s version parses the URL to select an outbound HTTP proxy and
        builds a pool key on every request; a reverse proxy has no outbound proxy, and
        its hosts are fixed at start-up.
        """
        host_params, _ = self.build_connection_pool_key_attributes(request, verify, cert)
        key = (host_params["host"], host_params["port"])
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = self.poolmanager.connection_from_host(**host_params)
        return pool

    def request_url(self, request: PreparedRequest, proxies: Any) -> str:
        """Only for subclassing: the raw target (the connection sends it as it is)."""
        exchange = current_exchange.get()
        return exchange.target if exchange is not None else request.path_url
