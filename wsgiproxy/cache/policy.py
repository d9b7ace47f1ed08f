"""The rules of a shared HTTP cache (RFC 9111): what is stored, what is served, how long.

CacheControl is a private (client) cache. As a proxy's cache it would store ``private``
responses and responses to requests with ``Authorization`` (one user's page handed to
the next), ignore ``s-maxage``, keep ETag-only entries for 14 days, keep one variant per
URL, merge repeated headers, fail on an unparsable ``Date``, and spool every GET body
through a temporary file. :class:`SharedCacheController` is a CacheControl controller
(its ``BaseCache`` backend, its ``Cache-Control`` parser) whose decisions are the
shared cache's:

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

It speaks in plain values (keys, header mappings, header lists, bytes), not in any HTTP
client's objects: the upstream client asks it, and acts on the answers.
"""

from __future__ import annotations

import calendar
import email.utils
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from cachecontrol.controller import CacheController

from ..errors import NotCached
from ..headers import HOP_BY_HOP
from .entry import Entry, VaryIndex

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cachecontrol.cache import BaseCache

    from .stores import Store

__all__ = ["INVALIDATING_METHODS", "SERVED_METHODS", "Answer", "BodyCapture", "HeaderList",
           "Headers", "Lookup", "SharedCacheController", "cache_key", "http_date"]

logger = logging.getLogger(__name__)

SERVED_METHODS: Final = frozenset({"GET", "HEAD"})
INVALIDATING_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Understood statuses that may be stored given explicit freshness or a validator.
STORABLE_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
_NOT_STORED: Final = HOP_BY_HOP | {"age"}
#: Headers a 304 must not change in the stored response (RFC 9111 §3.2).
_KEPT_ON_304: Final = _NOT_STORED | {"content-length", "content-encoding", "content-range"}


class Headers(Protocol):
    """A case-insensitive, read-only view of a message's header fields."""

    def get(self, name: str, /) -> str | None: ...

    def __contains__(self, name: object, /) -> bool: ...


def cache_key(domain: str, target: str) -> str:
    """The key of a request: the service's domain (lower case, from the routes file) and
    the raw target, so a response from one host serves requests sent to the others."""
    return f"http://{domain}{target}"


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


class SharedCacheController(CacheController):
    """CacheControl's controller with the rules of a shared cache (see the module doc).

    :param store: the backend (:mod:`~wsgiproxy.cache.stores`), shared by every service:
        keys start with the service's domain.
    :param ttl: HTTP_CACHE_TTL_SECONDS, the longest life of any entry.
    :param max_object_bytes: CACHE_MAX_OBJECT_BYTES.
    """

    def __init__(self, store: BaseCache, *, ttl: float, max_object_bytes: int) -> None:
        super().__init__(store, status_codes=tuple(STORABLE_STATUSES))
        #: The same object as CacheControl's ``self.cache``, typed as what it holds.
        self._backend: Store = store  # type: ignore[assignment]
        self.ttl = ttl
        self.max_object_bytes = max_object_bytes

    # -- reading ---------------------------------------------------------------------
    def _request_cc(self, headers: Headers) -> dict[str, int | None]:
        if "Cache-Control" in headers:
            return self.parse_cache_control(headers)  # type: ignore[arg-type]
        if "no-cache" in (headers.get("Pragma") or ""):  # RFC 9111 §5.4, HTTP/1.0 clients
            return {"no-cache": None}
        return {}

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
        if "Range" in headers:
            return Lookup()
        cc = self._request_cc(headers)
        entry = self.load(key, headers)
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

    def answer(self, entry: Entry, headers: Headers) -> Answer:
        """The client's response from a stored one: with ``Age``, and 304 when the
        client's own ``If-None-Match``/``If-Modified-Since`` already hold."""
        out = [*entry.headers, ("Age", str(int(entry.age(time.time()))))]
        if self._client_has_it(entry, headers):
            return Answer(304, "Not Modified",
                          [h for h in out if h[0].lower() != "content-length"], b"")
        return Answer(entry.status, entry.reason, out, entry.body)

    @staticmethod
    def _client_has_it(entry: Entry, headers: Headers) -> bool:
        """Whether the client's own conditions hold for ``entry``."""
        if entry.status != 200:
            return False
        condition = headers.get("If-None-Match")
        etag = entry.header("ETag")
        if condition is not None:
            return bool(etag) and _etag_matches(condition, etag or "")
        since = http_date(headers.get("If-Modified-Since"))
        modified = http_date(entry.header("Last-Modified"))
        return since is not None and modified is not None and modified <= since

    # -- storing ---------------------------------------------------------------------
    def storable(self, method: str, status: int, response: Headers, request: Headers) -> bool:
        """Whether a response may be stored, judged from its head alone."""
        if method != "GET" or status not in STORABLE_STATUSES:
            return False
        cc = self.parse_cache_control(response)  # type: ignore[arg-type]
        if "no-store" in cc or "no-store" in self._request_cc(request) or "private" in cc:
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
        return has_validator or self._lifetime(cc, response,
                                               http_date(response.get("Date"))) > 0

    @staticmethod
    def _lifetime(cc: dict[str, int | None], headers: Headers, date: float | None) -> float:
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

    def make_entry(self, status: int, reason: str, headers: list[tuple[str, str]],
                   body: bytes, request: Headers, sent_at: float) -> Entry:
        """An entry for a response received now to a request sent at ``sent_at``."""
        now = time.time()
        stored = [(k, v) for k, v in headers if k.lower() not in _NOT_STORED]
        if not any(k.lower() == "content-length" for k, _ in stored) and status != 204:
            stored.append(("Content-Length", str(len(body))))
        view = HeaderList(stored)
        date = http_date(view.get("Date"))
        age_header = next((v for k, v in headers if k.lower() == "age"), "0")
        age_value = float(age_header) if age_header.strip().isdigit() else 0.0
        apparent_age = max(0.0, now - date) if date is not None else 0.0
        initial_age = max(apparent_age, age_value + max(0.0, now - sent_at))
        cc = self.parse_cache_control(view)  # type: ignore[arg-type]
        # The TTL bounds how long an entry stays here, counted from now: its age on
        # arrival does not shorten that.
        lifetime = min(self._lifetime(cc, view, date), initial_age + self.ttl)
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
        """Keep ``entry`` for as long as it may be served or revalidated."""
        has_validator = entry.header("ETag") or entry.header("Last-Modified")
        keep = self.ttl if has_validator else entry.lifetime - entry.initial_age
        if keep <= 0:
            return
        names = tuple(sorted(entry.vary))
        if names:
            self._backend.set(key, VaryIndex(names), expires=self.ttl)
            key = self._variant_key(key, names, request)
        self._backend.set(key, entry, expires=keep)
        logger.debug("stored %s (%d bytes, fresh for %.0fs)", key, len(entry.body),
                     entry.lifetime)

    def capture(self, key: str, request: Headers, status: int, reason: str,
                headers: list[tuple[str, str]], sent_at: float) -> BodyCapture:
        """A :class:`BodyCapture` that stores this (storable) response when its body ends."""
        length = HeaderList(headers).get("Content-Length") or ""

        def complete(body: bytes) -> None:
            if length.isdigit() and int(length) != len(body):
                return
            self.store(key, request, self.make_entry(status, reason, headers, body,
                                                     request, sent_at))

        return BodyCapture(self.max_object_bytes, complete)

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
    hands it to ``on_complete`` once the body has ended.

    Replaces CacheControl's ``CallbackFileWrapper``, which spools every GET body into a
    temporary file whether or not it can be stored. A body over the limit is dropped
    from memory at once and streams on untouched.
    """

    __slots__ = ("_limit", "_on_complete", "_parts", "_size")

    def __init__(self, limit: int, on_complete: Callable[[bytes], None]) -> None:
        self._limit = limit
        self._on_complete = on_complete
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
        if parts is not None:
            self._on_complete(b"".join(parts))
