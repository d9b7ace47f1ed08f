"""CacheControl made a shared cache (RFC 9111): what is stored, what is served, for how long.

CacheControl is a private (client) cache. As a proxy's cache it would store ``private``
responses and responses to requests with ``Authorization`` (one user's page handed to
the next), ignore ``s-maxage``, keep ETag-only entries for 14 days, keep one variant per
URL, merge repeated headers, fail with 500 on an unparsable ``Date``, and spool every GET
body through a temporary file. :class:`SharedCacheController` and
:class:`SharedCacheAdapter` keep CacheControl's structure (controller, adapter,
``BaseCache`` backends) and replace those rules:

* stored: GET responses with a cacheable status and either a freshness lifetime
  (``s-maxage`` > ``max-age`` > ``Expires``) or a validator (ETag, Last-Modified), unless
  ``no-store`` (either side), ``private``, ``Set-Cookie`` (as nginx), ``Vary: *``,
  ``Authorization`` without ``public``/``s-maxage``/``must-revalidate`` (§3.5), or a body
  over CACHE_MAX_OBJECT_BYTES (those stream through and are never buffered whole);
* served: GET and HEAD, while fresh and the client's ``no-cache``/``max-age``/
  ``min-fresh`` allow; a response with ``no-cache`` is always revalidated; a stale entry
  with validators is revalidated with ``If-None-Match``/``If-Modified-Since`` and a 304
  refreshes it (§4.3.4); every answer from the cache carries ``Age`` (§4.2.3);
* ``Vary``: each variant is kept under its own key next to an index of the varying
  headers, so variants never mix and do not evict each other;
* POST, PUT, PATCH and DELETE answered without error invalidate the URL (§4.4);
* nothing lives longer than HTTP_CACHE_TTL_SECONDS.
"""

from __future__ import annotations

import calendar
import email.utils
import io
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from cachecontrol.adapter import CacheControlAdapter
from cachecontrol.controller import CacheController
from urllib3 import HTTPHeaderDict, HTTPResponse

from .cache import Entry, Store, VaryIndex
from .errors import NotCached
from .headers import HOP_BY_HOP

if TYPE_CHECKING:
    from typing import Literal

    from cachecontrol.cache import BaseCache
    from requests import PreparedRequest, Response
    from urllib3.response import BaseHTTPResponse

__all__ = ["LOOKUP_ATTR", "Answer", "BodyCapture", "Lookup", "SharedCacheAdapter",
           "SharedCacheController"]

logger = logging.getLogger(__name__)

SERVED_METHODS: Final = frozenset({"GET", "HEAD"})
INVALIDATING_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Understood statuses that may be stored given explicit freshness or a validator.
STORABLE_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
_NOT_STORED: Final = HOP_BY_HOP | {"age"}
#: Headers a 304 must not change in the stored response (RFC 9111 §3.2).
_KEPT_ON_304: Final = _NOT_STORED | {"content-length", "content-encoding", "content-range"}
_STALE_ATTR: Final = "wsgiproxy_stale_entry"
_SENT_ATTR: Final = "wsgiproxy_sent_at"
_CLIENT_CONDITIONS_ATTR: Final = "wsgiproxy_client_conditions"
_CONDITIONS: Final = ("If-None-Match", "If-Modified-Since")
#: A request attribute: a :class:`Lookup` made before the request reached the adapter.
LOOKUP_ATTR: Final = "wsgiproxy_cache_lookup"


@dataclass(slots=True)
class Lookup:
    """What the cache holds for a request: a response to serve as it is, or a stale
    one to revalidate with these validators, or neither."""

    fresh: Entry | None = None
    stale: Entry | None = None
    validators: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Answer:
    """A response served from the cache, as the client gets it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP date, or None when absent or unparsable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return float(calendar.timegm(parsed[:6]) - (parsed[9] or 0))
    except (OverflowError, ValueError):
        return None


def _norm(value: str | None) -> str:
    return "\x01" if value is None else " ".join(value.split())


def _etag_matches(condition: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2) against an If-None-Match list."""
    if condition.strip() == "*":
        return True
    weak = etag.removeprefix("W/")
    return any(c.strip().removeprefix("W/") == weak for c in condition.split(","))


class SharedCacheController(CacheController):
    """CacheControl's controller with the rules of a shared cache (see the module doc).

    :param ttl: HTTP_CACHE_TTL_SECONDS, the longest life of any entry.
    :param max_object_bytes: CACHE_MAX_OBJECT_BYTES.
    """

    def __init__(self, cache: BaseCache, *, ttl: float, max_object_bytes: int,
                 **kwargs: Any) -> None:
        super().__init__(cache, **kwargs)
        self.store: Store = cast("Store", cache)
        self.ttl = ttl
        self.max_object_bytes = max_object_bytes

    @classmethod
    def cache_url(cls, uri: str) -> str:
        """The key of a URL. CacheControl normalises it with a regex on every lookup;
        the proxy's URLs are normalised already (:func:`wsgiproxy.upstream.logical_url`),
        so they are keys as they are."""
        return uri

    # -- reading ---------------------------------------------------------------------
    def _request_cc(self, request: Any) -> dict[str, int | None]:
        headers = request.headers
        if "Cache-Control" in headers:
            return self.parse_cache_control(headers)
        if "no-cache" in headers.get("Pragma", ""):  # RFC 9111 §5.4, HTTP/1.0 clients
            return {"no-cache": None}
        return {}

    def _variant_key(self, key: str, names: tuple[str, ...], request: Any) -> str:
        values = "\x00".join(f"{n}={_norm(request.headers.get(n))}" for n in names)
        return f"{key}\x00{values}"

    def load(self, request: Any) -> Entry | None:
        """The stored response for this request's URL and varying headers, fresh or not."""
        key = self.cache_url(request.url or "")
        item = self.store.get(key)
        if isinstance(item, VaryIndex):
            item = self.store.get(self._variant_key(key, item.names, request))
        if not isinstance(item, Entry):
            return None
        for name, value in item.vary.items():
            if _norm(request.headers.get(name)) != value:
                return None
        return item

    def lookup(self, request: Any) -> Lookup:
        """What the cache holds for ``request`` (anything with ``url``, ``method`` and
        ``headers`` that can be asked ``get`` and ``in``)."""
        if "Range" in request.headers:
            return Lookup()
        cc = self._request_cc(request)
        entry = self.load(request)
        if entry is None:
            if "only-if-cached" in cc:
                raise NotCached("only-if-cached: no stored response for this request")
            return Lookup()
        age = entry.age(time.time())
        fresh = not entry.revalidate and age < entry.lifetime
        if "no-cache" in cc or (cc.get("max-age") is not None and age > (cc["max-age"] or 0)):
            fresh = False
        min_fresh = cc.get("min-fresh")
        if min_fresh is not None and age + min_fresh >= entry.lifetime:
            fresh = False
        if fresh:
            return Lookup(fresh=entry)
        if "only-if-cached" in cc:
            raise NotCached("only-if-cached: the stored response is stale")
        validators = {}
        etag, modified = entry.header("ETag"), entry.header("Last-Modified")
        if etag:
            validators["If-None-Match"] = etag
        if modified:
            validators["If-Modified-Since"] = modified
        return Lookup(stale=entry if validators else None, validators=validators)

    def answer(self, entry: Entry, request: Any) -> Answer:
        """The client's response from a stored one: with ``Age``, and 304 when the
        client's own ``If-None-Match``/``If-Modified-Since`` already hold."""
        headers = [*entry.headers, ("Age", str(int(entry.age(time.time()))))]
        if self._client_has_it(entry, request):
            return Answer(304, "Not Modified",
                          [h for h in headers if h[0].lower() != "content-length"], b"")
        return Answer(entry.status, entry.reason, headers, entry.body)

    def to_response(self, entry: Entry, request: PreparedRequest) -> HTTPResponse:
        """:meth:`answer` as an urllib3 response, for the adapter's path."""
        answer = self.answer(entry, request)
        return HTTPResponse(body=io.BytesIO(answer.body), headers=HTTPHeaderDict(answer.headers),
                            status=answer.status, reason=answer.reason, preload_content=False,
                            decode_content=False, request_method=request.method)

    @staticmethod
    def _client_has_it(entry: Entry, request: Any) -> bool:
        """Whether the *client's* own conditions (not the cache's revalidation) hold."""
        if entry.status != 200:
            return False
        conditions = getattr(request, _CLIENT_CONDITIONS_ATTR, None)
        if conditions is None:
            conditions = {name: request.headers.get(name) for name in _CONDITIONS}
        condition = conditions["If-None-Match"]
        etag = entry.header("ETag")
        if condition is not None:
            return bool(etag) and _etag_matches(condition, etag or "")
        since = http_date(conditions["If-Modified-Since"])
        modified = http_date(entry.header("Last-Modified"))
        return since is not None and modified is not None and modified <= since

    # CacheControl's own entry points, kept working in terms of the above.
    def cached_request(self, request: PreparedRequest) -> HTTPResponse | Literal[False]:
        fresh = self.lookup(request).fresh
        return self.to_response(fresh, request) if fresh is not None else False

    def conditional_headers(self, request: PreparedRequest) -> dict[str, str]:
        return self.lookup(request).validators

    # -- storing ---------------------------------------------------------------------
    def storable(self, request: PreparedRequest, response: BaseHTTPResponse) -> bool:
        """Whether this response may be stored, judged from the head alone."""
        if request.method != "GET" or response.status not in STORABLE_STATUSES:
            return False
        headers = response.headers
        cc = self.parse_cache_control(headers)
        if "no-store" in cc or "no-store" in self._request_cc(request) or "private" in cc:
            return False
        if "Authorization" in request.headers and not (
                "public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
            return False  # RFC 9111 §3.5
        if "Set-Cookie" in headers or "*" in headers.get("Vary", ""):
            return False
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_object_bytes:
            return False
        has_validator = "ETag" in headers or "Last-Modified" in headers
        if "no-cache" in cc:
            return has_validator
        return has_validator or self._lifetime(cc, headers, http_date(headers.get("Date"))) > 0

    @staticmethod
    def _lifetime(cc: dict[str, int | None], headers: Any, date: float | None) -> float:
        """Freshness lifetime (RFC 9111 §4.2.1); an invalid Expires means already stale."""
        for directive in ("s-maxage", "max-age"):
            if cc.get(directive) is not None:
                return float(cc[directive] or 0)
        if "Expires" in headers:
            expires = http_date(headers.get("Expires"))
            if expires is None:
                return 0.0
            return max(0.0, expires - (date if date is not None else time.time()))
        return 0.0

    def make_entry(self, request: PreparedRequest, status: int, reason: str,
                   headers: list[tuple[str, str]], body: bytes) -> Entry:
        now = time.time()
        stored = [(k, v) for k, v in headers if k.lower() not in _NOT_STORED]
        if not any(k.lower() == "content-length" for k, _ in stored) and status != 204:
            stored.append(("Content-Length", str(len(body))))
        lookup = HTTPHeaderDict(stored)
        date = http_date(lookup.get("Date"))
        age_header = next((v for k, v in headers if k.lower() == "age"), "0")
        age_value = float(age_header) if age_header.strip().isdigit() else 0.0
        sent_at = getattr(request, _SENT_ATTR, now)
        apparent_age = max(0.0, now - date) if date is not None else 0.0
        initial_age = max(apparent_age, age_value + max(0.0, now - sent_at))
        cc = self.parse_cache_control(lookup)
        lifetime = min(self.ttl, self._lifetime(cc, lookup, date))
        vary_names = self._vary_names(lookup)
        return Entry(status=status, reason=reason, headers=stored, body=body,
                     response_time=now, initial_age=initial_age, lifetime=lifetime,
                     vary={n: _norm(request.headers.get(n)) for n in vary_names},
                     revalidate="no-cache" in cc)

    @staticmethod
    def _vary_names(headers: Any) -> tuple[str, ...]:
        names = {v.strip().lower() for v in headers.get("Vary", "").split(",") if v.strip()}
        return tuple(sorted(names))

    def _store(self, request: PreparedRequest, entry: Entry) -> None:
        key = self.cache_url(request.url or "")
        has_validator = entry.header("ETag") or entry.header("Last-Modified")
        keep = self.ttl if has_validator else entry.lifetime - entry.initial_age
        if keep <= 0:
            return
        names = tuple(sorted(entry.vary))
        if names:
            self.store.set(key, VaryIndex(names), expires=self.ttl)
            key = self._variant_key(key, names, request)
        self.store.set(key, entry, expires=keep)
        logger.debug("stored %s (%d bytes, fresh for %.0fs)", key, len(entry.body),
                     entry.lifetime)

    def cache_response(self, request: PreparedRequest, response: Any,
                       body: bytes | None = None, status_codes: Any = None) -> None:
        """Store ``response`` with ``body`` if the shared-cache rules allow."""
        if body is not None and self.storable(request, response):
            self.store_body(request, response, body)

    def store_body(self, request: PreparedRequest, response: Any, body: bytes) -> None:
        """Store a response already judged :meth:`storable`, once its body has ended."""
        if len(body) > self.max_object_bytes:
            return
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) != len(body):
            return
        entry = self.make_entry(request, response.status, response.reason or "",
                                list(response.headers.items()), body)
        self._store(request, entry)

    def update_cached_response(self, request: PreparedRequest,  # type: ignore[override]
                               response: BaseHTTPResponse) -> BaseHTTPResponse:
        """A 304 to our revalidation: refresh the stored response (RFC 9111 §4.3.4)."""
        entry: Entry | None = getattr(request, _STALE_ATTR, None)
        if entry is None:
            return response
        fresh_names = {k.lower() for k in response.headers} - _KEPT_ON_304
        headers = [(k, v) for k, v in entry.headers if k.lower() not in fresh_names]
        headers += [(k, v) for k, v in response.headers.items() if k.lower() in fresh_names]
        updated = self.make_entry(request, entry.status, entry.reason, headers, entry.body)
        merged = HTTPResponse(body=b"", headers=HTTPHeaderDict(headers), status=entry.status,
                              preload_content=False)
        if self.storable(request, merged):
            self._store(request, updated)
        else:
            self.invalidate(request)
        return self.to_response(updated, request)

    def invalidate(self, request: PreparedRequest) -> None:
        self.store.delete(self.cache_url(request.url or ""))


class BodyCapture:
    """Wraps the ``http.client`` response under urllib3: keeps a copy of what is read,
    up to ``limit`` bytes, and hands it to ``on_complete`` once the body has ended.

    Replaces CacheControl's ``CallbackFileWrapper``, which spools every GET body into a
    temporary file whether or not it can be stored. A body over the limit is dropped
    from memory at once and streams on untouched.
    """

    def __init__(self, fp: Any, limit: int, on_complete: Any) -> None:
        self._fp = fp
        self._limit = limit
        self._parts: list[bytes] | None = []
        self._size = 0
        self._on_complete = on_complete

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)

    def _keep(self, data: bytes) -> bytes:
        if self._parts is not None:
            if data:
                self._size += len(data)
                if self._size > self._limit:
                    self._parts = None
                else:
                    self._parts.append(data)
            # The end: http.client closes its file after a chunked body, but after a
            # Content-Length body read with read1() it only counts down to 0
            # (CPython gh-113199; urllib3 closes it afterwards).
            if self._fp.fp is None or self._fp.length == 0:
                parts, self._parts = self._parts, None
                if parts is not None:
                    self._on_complete(b"".join(parts))
        return data

    def read(self, amt: int | None = None) -> bytes:
        return self._keep(self._fp.read(amt))

    def read1(self, amt: int = -1) -> bytes:
        return self._keep(self._fp.read1(amt))


class SharedCacheAdapter(CacheControlAdapter):
    """CacheControl's adapter, as a shared cache, answering hits before any upstream work.

    Only for subclassing: :class:`~wsgiproxy.balancer.RoundRobinAdapter` puts it on top
    of the proxy's transport adapter. With ``cache=None`` (HTTP_CACHE_TTL_SECONDS=0) it
    neither reads nor stores.
    """

    controller: SharedCacheController

    def __init__(self, *, cache: BaseCache | None, ttl: float = 0.0,
                 max_object_bytes: int = 0, **kwargs: Any) -> None:
        self.caching = cache is not None
        self.max_object_bytes = max_object_bytes
        super().__init__(cache=cache, cacheable_methods=SERVED_METHODS, **kwargs)
        self.controller = SharedCacheController(self.cache, ttl=ttl,
                                                max_object_bytes=max_object_bytes)

    def send(self, request: PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None,
             cacheable_methods: Any = None) -> Response:
        if self.caching and request.method in SERVED_METHODS:
            # Looked up already when the proxy tried to answer from the cache first.
            lookup = getattr(request, LOOKUP_ATTR, None) or self.controller.lookup(request)
            if lookup.fresh is not None:
                return self.build_response(
                    request, self.controller.to_response(lookup.fresh, request), from_cache=True)
            if lookup.stale is not None:
                setattr(request, _STALE_ATTR, lookup.stale)
                setattr(request, _CLIENT_CONDITIONS_ATTR,
                        {name: request.headers.get(name) for name in _CONDITIONS})
                request.headers.update(lookup.validators)
        setattr(request, _SENT_ATTR, time.time())
        # Past CacheControlAdapter.send: the lookup above replaces it.
        response: Response = super(CacheControlAdapter, self).send(
            request, stream, timeout, verify, cert, proxies)
        return response

    def build_response(self, request: PreparedRequest, response: Any,
                       from_cache: bool = False, cacheable_methods: Any = None) -> Response:
        revalidated = False
        if self.caching and not from_cache:
            method, status = request.method, response.status
            if status == 304 and getattr(request, _STALE_ATTR, None) is not None:
                cached = self.controller.update_cached_response(request, response)
                response.drain_conn()
                response, from_cache, revalidated = cached, True, True
            elif method == "GET" and self.controller.storable(request, response):
                response._fp = BodyCapture(
                    response._fp, self.max_object_bytes,
                    lambda body, r=response: self.controller.store_body(request, r, body))
            elif method in INVALIDATING_METHODS and 200 <= status < 400:
                self.controller.invalidate(request)
        # Past CacheControlAdapter.build_response: the rules above replace it.
        built: Response = super(CacheControlAdapter, self).build_response(request, response)
        built.from_cache = from_cache  # type: ignore[attr-defined]
        built.revalidated = revalidated  # type: ignore[attr-defined]
        return built
