"""The rules of a shared HTTP cache (RFC 9111, RFC 5861, RFC 9213): what is stored, what
is served, fresh or stale, and for how long.

CacheControl is a private (client) cache. As a proxy's cache its ``CacheController``
would store ``private`` responses and responses to requests with ``Authorization`` (one
user's page handed to the next), ignore ``s-maxage``, keep ETag-only entries for 14
days, keep one variant per URL, merge repeated headers, fail on an unparsable ``Date``,
and spool every GET body through a temporary file. So the proxy uses CacheControl for
its storage interface (``BaseCache``: the memory and Redis stores,
:mod:`~wsgiproxy.cache.stores`) and not for its rules: :class:`SharedCacheController`
takes the controller's place, and its decisions are the shared cache's:

* stored: GET responses with a final status and a freshness lifetime (``s-maxage`` >
  ``max-age`` > ``Expires``), or a heuristically cacheable status and a validator (ETag,
  Last-Modified); never with ``no-store`` (either side; a response's
  ``must-understand`` overrides it for a status the cache understands), ``private``,
  ``Set-Cookie`` (as nginx), ``Vary: *``, ``Authorization`` without ``public``/
  ``s-maxage``/``must-revalidate`` (§3.5), a body over CACHE_MAX_OBJECT_BYTES, or the
  fields the response's ``Connection`` names;
* ``CDN-Cache-Control`` (RFC 9213), when valid, replaces ``Cache-Control`` (and
  ``Expires``) for these decisions, and is passed on to the client unchanged;
* served fresh: GET and HEAD, while fresh and the client's ``no-cache``/``max-age``/
  ``min-fresh`` allow, a single byte range of it as 206; a response with ``no-cache``
  is always revalidated; a stale entry with validators is revalidated and a 304
  refreshes it (§4.3.4); every answer from the cache carries ``Age`` (§4.2.3);
* served stale: within ``stale-while-revalidate`` (RFC 5861) at once, refreshed in the
  background; when every attempt fails, within ``stale-if-error`` or else while it is
  kept; never where ``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` or
  ``no-cache`` forbid it (§4.2.4), and never a stored error (5xx) for a new one;
* ``Vary``: each variant is kept under its own key next to an index of the varying
  headers, so variants never mix and do not evict each other;
* any method but GET, HEAD, OPTIONS and TRACE answered without error invalidates the
  URL, and the ``Location``/``Content-Location`` of the same service (§4.4);
* entries are kept for the TTL (HTTP_CACHE_TTL_SECONDS, or the service's), fresh or
  stale, and no longer.

It speaks in plain values (keys, header mappings, header lists, bytes), not in any HTTP
client's objects: the upstream client asks it, and acts on the answers.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from ..errors import NotCached
from ..headers import HOP_BY_HOP, connection_tokens
from .entry import Entry, VaryIndex
from .fields import (
    Directives,
    age_seconds,
    cache_control,
    http_date,
    targeted_cache_control,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .stores import Store

__all__ = ["SAFE_METHODS", "SERVED_METHODS", "Answer", "BodyCapture", "HeaderList",
           "HeaderMap", "Headers", "Lookup", "SharedCacheController", "cache_key", "http_date"]

logger = logging.getLogger(__name__)

SERVED_METHODS: Final = frozenset({"GET", "HEAD"})
#: RFC 9111 §4.4: any other method answered without error invalidates.
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Statuses that may be stored with a validator alone (RFC 9110 §15.1).
HEURISTICALLY_CACHEABLE: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410,
                                            414, 501})
#: Statuses whose meaning this cache knows, for ``must-understand`` (RFC 9111 §5.2.2.3).
UNDERSTOOD: Final = HEURISTICALLY_CACHEABLE | {302, 303, 307, 400, 403, 500, 502, 503, 504}
#: Headers a 304 must not change in the stored response (RFC 9111 §3.2).
_KEPT_ON_304: Final = HOP_BY_HOP | {"age", "content-length", "content-encoding",
                                    "content-range"}
#: Directives that forbid serving a stale response (RFC 9111 §4.2.4; s-maxage implies
#: proxy-revalidate in a shared cache).
_NO_STALE: Final = ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")
_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")


class Headers(Protocol):
    """A case-insensitive, read-only view of a message's header fields."""

    def get(self, name: str, /) -> str | None: ...

    def __contains__(self, name: object, /) -> bool: ...


def cache_key(host: str, target: str) -> str:
    """The key of a request: the Host it is forwarded with, normalised (lower case, no
    default port or trailing dot), and the raw target. Not the instance, so a response
    from one host serves requests sent to the others; not the service's domain alone,
    since a host that echoes Host into links or redirects builds a different response
    for each Host value (docs/strangers.md)."""
    return f"http://{host}{target}"


@dataclass(slots=True)
class Lookup:
    """What the cache holds for a request, and what may be done with it."""

    fresh: Entry | None = None  # serve it as it is
    stale: Entry | None = None  # stored but stale: revalidate, or serve it as allowed below
    validators: dict[str, str] = field(default_factory=dict)  # for a conditional request
    serve_stale: bool = False  # within stale-while-revalidate: serve now, refresh behind
    stale_on_error: bool = False  # may be served if every attempt fails


@dataclass(slots=True)
class Answer:
    """A response served from the cache, as the client gets it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def _norm(value: str | None) -> str:
    return "\x01" if value is None else " ".join(value.split())


def _etag_matches(condition: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2) against an If-None-Match list."""
    if condition.strip() == "*":
        return True
    weak = etag.removeprefix("W/")
    return any(c.strip().removeprefix("W/") == weak for c in condition.split(","))


def _byte_range(value: str, length: int) -> tuple[int, int] | None:
    """The one satisfiable range of ``Range: bytes=...`` over ``length`` bytes, as
    (first, last); None for anything else (several ranges, other units, unsatisfiable)."""
    m = _RANGE.fullmatch(value.strip())
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        suffix = int(m.group(2))
        return (max(0, length - suffix), length - 1) if suffix and length else None
    first = int(m.group(1))
    last = min(int(m.group(2)), length - 1) if m.group(2) else length - 1
    return (first, last) if first <= last else None


class HeaderMap:
    """A :class:`Headers` view of a request's header dict (one value per name, as the
    proxy builds it), names in any case. What requests' ``CaseInsensitiveDict`` gives,
    at a fifth of the cost on the hit path: no ``MutableMapping`` machinery."""

    __slots__ = ("_credentials", "_fields")

    def __init__(self, fields: Mapping[str, str], *, credentials: bool = False) -> None:
        self._fields = {k.lower(): v for k, v in fields.items()}
        #: A filter authenticated the request without ``Authorization`` (an API key, a
        #: cookie an auth server checked): the rules treat it as carrying credentials.
        self._credentials = credentials

    def get(self, name: str, default: str | None = None, /) -> str | None:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object, /) -> bool:
        if not isinstance(name, str):
            return False
        lower = name.lower()
        return lower in self._fields or (self._credentials and lower == "authorization")


class HeaderList:
    """A :class:`Headers` view of a list of pairs (repeated fields joined with ", ")."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def get(self, name: str, default: str | None = None, /) -> str | None:
        name = name.lower()
        values = [v for k, v in self._pairs if k.lower() == name]
        return ", ".join(values) if values else default

    def __contains__(self, name: object, /) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class SharedCacheController:
    """The rules of a shared cache over one store (see the module doc).

    :param store: the backend (:mod:`~wsgiproxy.cache.stores`), shared by every service:
        keys start with the request's normalised Host.
    :param ttl: how long an entry is kept (HTTP_CACHE_TTL_SECONDS, or the service's).
    :param max_object_bytes: CACHE_MAX_OBJECT_BYTES.
    :param serve_stale_on_error: CACHE_SERVE_STALE_ON_ERROR.
    """

    def __init__(self, store: Store, *, ttl: float, max_object_bytes: int,
                 serve_stale_on_error: bool = True) -> None:
        self._backend = store
        self.ttl = ttl
        self.max_object_bytes = max_object_bytes
        self.serve_stale_on_error = serve_stale_on_error

    # -- directives --------------------------------------------------------------------
    def directives(self, response: Headers) -> tuple[Directives, bool]:
        """The response's directives for this cache: ``CDN-Cache-Control`` when it is
        present and valid (RFC 9213), ``Cache-Control`` otherwise; and which it was."""
        targeted = targeted_cache_control(response.get("CDN-Cache-Control"))
        if targeted is not None:
            return targeted, True
        return cache_control(response.get("Cache-Control")), False

    @staticmethod
    def request_directives(request: Headers) -> Directives:
        if "Cache-Control" in request:
            return cache_control(request.get("Cache-Control"))
        if "no-cache" in (request.get("Pragma") or ""):  # RFC 9111 §5.4, HTTP/1.0 clients
            return {"no-cache": None}
        return {}

    @staticmethod
    def _lifetime(cc: Directives, headers: Headers, date: float | None,
                  targeted: bool) -> float:
        """Freshness lifetime (RFC 9111 §4.2.1); an invalid Expires means already stale.
        A targeted field's lifetime ignores ``Expires`` (RFC 9213 §2.2)."""
        for directive in ("s-maxage", "max-age"):
            value = cc.get(directive)
            if isinstance(value, int):
                return float(value)
        if "Expires" in headers and not targeted:
            expires = http_date(headers.get("Expires"))
            if expires is None:
                return 0.0
            return max(0.0, expires - (date if date is not None else time.time()))
        return 0.0

    # -- reading ---------------------------------------------------------------------
    @staticmethod
    def _variant_key(key: str, names: tuple[str, ...], headers: Headers) -> str:
        values = "\x00".join(f"{n}={_norm(headers.get(n))}" for n in names)
        return f"{key}\x00{values}"

    def load(self, key: str, headers: Headers) -> Entry | None:
        """The stored response for this key and request headers, fresh or not."""
        item = self._backend.get(key)
        if isinstance(item, VaryIndex):
            item = self._backend.get(self._variant_key(key, item.names, headers))
        if not isinstance(item, Entry):
            return None
        for name, value in item.vary.items():
            if _norm(headers.get(name)) != value:
                return None
        return item

    def lookup(self, key: str, headers: Headers) -> Lookup:
        """What the cache holds for a GET or HEAD of ``key`` with these request headers."""
        req = self.request_directives(headers)
        entry = self.load(key, headers)
        if entry is None:
            if "only-if-cached" in req:
                raise NotCached("only-if-cached: no stored response for this request")
            return Lookup()
        age = entry.age(time.time())
        fresh = not entry.revalidate and age < entry.lifetime
        max_age, min_fresh = req.get("max-age"), req.get("min-fresh")
        if "no-cache" in req or (isinstance(max_age, int) and age > max_age):
            fresh = False
        if isinstance(min_fresh, int) and age + min_fresh >= entry.lifetime:
            fresh = False
        range_ = headers.get("Range")
        if range_ is not None:  # served from a fresh whole response, or not at all
            if fresh and entry.status == 200 and _byte_range(range_, len(entry.body)):
                return Lookup(fresh=entry)
            return Lookup()
        if fresh:
            return Lookup(fresh=entry)
        if "only-if-cached" in req:
            raise NotCached("only-if-cached: the stored response is stale")
        validators = {}
        etag, modified = entry.header("ETag"), entry.header("Last-Modified")
        if etag:
            validators["If-None-Match"] = etag
        if modified:
            validators["If-Modified-Since"] = modified
        cc, _ = self.directives(HeaderList(entry.headers))
        staleness = age - entry.lifetime
        forbidden = any(d in cc for d in _NO_STALE) or entry.revalidate
        swr = cc.get("stale-while-revalidate")
        # stale-while-revalidate is the response's explicit permission: s-maxage (which
        # only implies proxy-revalidate) does not take it back; the others do.
        serve_stale = (isinstance(swr, int) and staleness <= swr and "no-cache" not in req
                       and max_age is None and entry.lifetime > 0
                       and not any(d in cc for d in _NO_STALE if d != "s-maxage")
                       and not entry.revalidate)
        sie = cc.get("stale-if-error")
        stale_on_error = (self.serve_stale_on_error and not forbidden and entry.status < 500
                          and (not isinstance(sie, int) or staleness <= sie))
        return Lookup(stale=entry, validators=validators, serve_stale=serve_stale,
                      stale_on_error=stale_on_error)

    def answer(self, entry: Entry, headers: Headers) -> Answer:
        """The client's response from a stored one: with ``Age``; 304 when the client's
        own ``If-None-Match``/``If-Modified-Since`` already hold; 206 for one byte range."""
        out = [*entry.headers, ("Age", str(int(entry.age(time.time()))))]
        if self._client_has_it(entry, headers):
            return Answer(304, "Not Modified",
                          [h for h in out if h[0].lower() != "content-length"], b"")
        range_ = headers.get("Range")
        if range_ is not None and entry.status == 200 and self._if_range(entry, headers):
            span = _byte_range(range_, len(entry.body))
            if span is not None:
                first, last = span
                part = entry.body[first:last + 1]
                out = [h for h in out if h[0].lower() != "content-length"]
                out += [("Content-Range", f"bytes {first}-{last}/{len(entry.body)}"),
                        ("Content-Length", str(len(part)))]
                return Answer(206, "Partial Content", out, part)
        return Answer(entry.status, entry.reason, out, entry.body)

    @staticmethod
    def _if_range(entry: Entry, headers: Headers) -> bool:
        """RFC 9110 §13.1.5: the range applies only to the representation named."""
        condition = headers.get("If-Range")
        if condition is None:
            return True
        etag = entry.header("ETag") or ""
        if condition.startswith(('"', "W/")):
            return not etag.startswith("W/") and condition == etag
        return condition == entry.header("Last-Modified")

    @staticmethod
    def _client_has_it(entry: Entry, headers: Headers) -> bool:
        """Whether the client's own conditions hold for ``entry``."""
        if entry.status != 200:
            return False
        condition = headers.get("If-None-Match")
        if condition is not None:
            etag = entry.header("ETag")
            return bool(etag) and _etag_matches(condition, etag or "")
        since = http_date(headers.get("If-Modified-Since"))
        if since is None:
            return False
        modified = http_date(entry.header("Last-Modified"))
        return modified is not None and modified <= since

    # -- storing ---------------------------------------------------------------------
    def storable(self, method: str, status: int, response: Headers, request: Headers) -> bool:
        """Whether a response may be stored, judged from its head alone."""
        if method != "GET" or not 200 <= status < 600 or status in (206, 304):
            return False
        if "Range" in request:
            return False
        cc, targeted = self.directives(response)
        if "must-understand" in cc:
            if status not in UNDERSTOOD:
                return False
        elif "no-store" in cc:
            return False
        if "no-store" in self.request_directives(request) or "private" in cc:
            return False
        if "Authorization" in request and not (
                "public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
            return False  # RFC 9111 §3.5
        if "Set-Cookie" in response or "*" in (response.get("Vary") or ""):
            return False
        length = response.get("Content-Length") or ""
        if length.isdigit() and int(length) > self.max_object_bytes:
            return False
        has_validator = "ETag" in response or "Last-Modified" in response
        if "no-cache" in cc:
            return has_validator
        lifetime = self._lifetime(cc, response, http_date(response.get("Date")), targeted)
        return lifetime > 0 or (has_validator and status in HEURISTICALLY_CACHEABLE)

    @staticmethod
    def _stored_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """What an entry keeps: no hop-by-hop fields, none the response's ``Connection``
        names (RFC 9111 §3.1), no ``Age`` (computed when served)."""
        listed = connection_tokens(HeaderList(headers).get("Connection"))
        dropped = HOP_BY_HOP | listed | {"age"}
        return [(k, v) for k, v in headers if k.lower() not in dropped]

    def make_entry(self, status: int, reason: str, headers: list[tuple[str, str]],
                   body: bytes, request: Headers, sent_at: float) -> Entry:
        """An entry for a response received now to a request sent at ``sent_at``."""
        now = time.time()
        stored = self._stored_headers(headers)
        if not any(k.lower() == "content-length" for k, _ in stored) and status != 204:
            stored.append(("Content-Length", str(len(body))))
        view = HeaderList(stored)
        date = http_date(view.get("Date"))
        age_value = age_seconds(HeaderList(headers).get("Age"))
        apparent_age = max(0.0, now - date) if date is not None else 0.0
        initial_age = max(apparent_age, age_value + max(0.0, now - sent_at))
        cc, targeted = self.directives(view)
        # The TTL bounds how long an entry stays here, counted from now: its age on
        # arrival does not shorten that.
        lifetime = min(self._lifetime(cc, view, date, targeted), initial_age + self.ttl)
        return Entry(status=status, reason=reason, headers=stored, body=body,
                     response_time=now, initial_age=initial_age, lifetime=lifetime,
                     vary={n: _norm(request.get(n)) for n in self._vary_names(view)},
                     revalidate="no-cache" in cc)

    @staticmethod
    def _vary_names(headers: Headers) -> tuple[str, ...]:
        names = {v.strip().lower() for v in (headers.get("Vary") or "").split(",")
                 if v.strip()}
        return tuple(sorted(names))

    def store(self, key: str, request: Headers, entry: Entry) -> None:
        """Keep ``entry`` for the TTL, fresh or stale (to revalidate or serve stale)."""
        names = tuple(sorted(entry.vary))
        if names:
            self._backend.set(key, VaryIndex(names), expires=self.ttl)
            key = self._variant_key(key, names, request)
        self._backend.set(key, entry, expires=self.ttl)
        logger.debug("stored %s (%d bytes, fresh for %.0fs)", key, len(entry.body),
                     entry.lifetime)

    def capture(self, key: str, request: Headers, status: int, reason: str,
                headers: list[tuple[str, str]], sent_at: float,
                on_end: Callable[[], None] | None = None) -> BodyCapture:
        """A :class:`BodyCapture` that stores this (storable) response when its body
        ends whole; ``on_end`` is told when it ends, stored or not."""
        length = HeaderList(headers).get("Content-Length") or ""

        def complete(body: bytes) -> None:
            if length.isdigit() and int(length) != len(body):
                return
            self.store(key, request, self.make_entry(status, reason, headers, body,
                                                     request, sent_at))

        return BodyCapture(self.max_object_bytes, complete, on_end)

    def refresh(self, key: str, stale: Entry, request: Headers,
                not_modified: list[tuple[str, str]], sent_at: float) -> Entry:
        """A 304 to our revalidation: the stored response with the 304's header fields
        (RFC 9111 §4.3.4), stored again if it still may be; returned to be served."""
        fresh_names = {k.lower() for k, _ in not_modified} - _KEPT_ON_304
        headers = [(k, v) for k, v in stale.headers if k.lower() not in fresh_names]
        headers += [(k, v) for k, v in not_modified if k.lower() in fresh_names]
        updated = self.make_entry(stale.status, stale.reason, headers, stale.body, request,
                                  sent_at)
        if self.storable("GET", stale.status, HeaderList(headers), request):
            self.store(key, request, updated)
        else:
            self.invalidate(key)
        return updated

    def invalidate(self, key: str) -> None:
        self._backend.delete(key)


class BodyCapture:
    """Keeps a copy of a response body as it streams past, up to ``limit`` bytes, and
    hands it to ``on_complete`` once the body has ended whole.

    Replaces CacheControl's ``CallbackFileWrapper``, which spools every GET body into a
    temporary file whether or not it can be stored. A body over the limit is dropped
    from memory at once and streams on untouched. ``on_end`` is called once when the
    body has ended, whole or not (a coalesced wait ends then).
    """

    __slots__ = ("_limit", "_on_complete", "_on_end", "_parts", "_size")

    def __init__(self, limit: int, on_complete: Callable[[bytes], None],
                 on_end: Callable[[], None] | None = None) -> None:
        self._limit = limit
        self._on_complete = on_complete
        self._on_end = on_end
        self._parts: list[bytes] | None = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        if self._parts is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._parts = None
        else:
            self._parts.append(data)

    def finish(self) -> None:
        """The body has ended, whole: store it (once)."""
        parts, self._parts = self._parts, None
        try:
            if parts is not None:
                self._on_complete(b"".join(parts))
        finally:
            self.abandon()

    def abandon(self) -> None:
        """The body ended before its end (or was stored): nothing more to keep."""
        self._parts = None
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()
