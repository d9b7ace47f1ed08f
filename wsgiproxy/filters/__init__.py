"""The public API for extending the proxy in Python (docs/filters.md, docs/writing-a-filter.md).

A filter is a class: built once per routes load from its ``config`` (the mapping the
routes file gives it), then called for each request of the services that list it::

    from wsgiproxy.filters import Answer, Filter, Request

    class RequireHeader(Filter):
        config_schema = {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string"}}}

        def on_request(self, request: Request) -> Answer | None:
            if self.config["name"] not in request.headers:
                return Answer.error(400, f"{self.config['name']} is required")
            return None

The hooks see views, never a WSGI environ or a connection: :class:`Request` (method,
target, headers with repeats, the client address, the service, a per-request
``state``), :class:`Response` (status, headers) and, once the response has ended,
:class:`Outcome`. Request hooks run proxy-level filters first, then the service's, in
file order; response and completion hooks in the reverse order. They run before the
cache is asked, so a filter protects cached content too, and on every response.

This module is versioned by :data:`API_VERSION`: within a major version, names here
only gain optional arguments and new members.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, overload

from ..http1 import FIELD_VALUE, TOKEN

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

__all__ = ["API_VERSION", "Answer", "Context", "Filter", "Headers", "InvalidConfig",
           "Outcome", "Request", "Response"]

#: The major version of this API. A filter that declares another one is refused at load.
API_VERSION: Final = 1

#: Statuses whose responses have no body.
_BODYLESS: Final = frozenset({204, 304})
#: A request target a filter may set: origin form, no whitespace or control characters.
_TARGET: Final = re.compile(r"/[\x21-\x7e\x80-\xff]*")


class InvalidConfig(ValueError):
    """Raised by a filter's constructor for a config it cannot use.

    :param field: where in the config, e.g. ``"allow[2]"``; the proxy prints it after
        the filter's place in the routes file:
        ``routes.yaml: proxy.services[0].filters[1].config.allow[2]: not a CIDR block``.
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Headers:
    """Header fields in order, names compared without case, repeats kept.

    Values are checked when set: a filter cannot put a line break (or any control
    character) into a message, whatever a client sent it to copy.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        checked = list(fields)
        for name, value in checked:
            _check(name, value)
        self._fields: list[tuple[str, str]] = checked

    @classmethod
    def _of(cls, fields: list[tuple[str, str]]) -> Headers:
        """Fields the proxy has already checked (its own views: no second check)."""
        made = cls.__new__(cls)
        made._fields = fields
        return made

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``, repeats joined with ``", "``; ``default`` if absent."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        lower = name.lower()
        return [v for n, v in self._fields if n.lower() == lower]

    def set(self, name: str, value: str) -> None:
        """``name`` has this one value from now on (where it was first, else at the end)."""
        _check(name, value)
        lower = name.lower()
        fields = self._fields
        for i, (n, _) in enumerate(fields):
            if n.lower() == lower:
                rest = [f for f in fields[i + 1:] if f[0].lower() != lower]
                self._fields = [*fields[:i], (name, value), *rest]
                return
        fields.append((name, value))

    def add(self, name: str, value: str) -> None:
        """One more value of ``name``, after any it has."""
        _check(name, value)
        self._fields.append((name, value))

    def remove(self, name: str) -> None:
        """Every value of ``name`` (nothing if it has none)."""
        lower = name.lower()
        self._fields = [(n, v) for n, v in self._fields if n.lower() != lower]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lower = name.lower()
        return any(n.lower() == lower for n, _ in self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


def _check(name: str, value: str) -> None:
    if not isinstance(name, str) or not TOKEN.fullmatch(name):
        raise ValueError(f"not a header name: {name!r}")
    if not isinstance(value, str) or not FIELD_VALUE.fullmatch(value):
        raise ValueError(f"header {name}: value has a control character or line break")


class Request:
    """A client request as filters see it; changes go to the host.

    :ivar method: ``GET``, ``POST``, ...
    :ivar host: the Host the client sent (read-only: it chose the service and keys the
        cache; a filter that changed it could poison the cache).
    :ivar client: the client's address, as docs/strangers.md establishes it
        (``X-Forwarded-For`` believed only from TRUSTED_PROXIES).
    :ivar service: the service's name in the routes file.
    :ivar headers: what the host will get. Host, Content-Length, Transfer-Encoding and
        hop-by-hop fields are the proxy's: changes to them are overwritten.
    :ivar client_target: the target as the client sent it (the service's prefix
        included), for logs and auth servers; changing :attr:`target` does not change it.
    :ivar authenticated: set it when the filter established who the client is from
        something other than ``Authorization`` (a key, a cookie checked by an auth
        server): the shared cache then stores the response only if the host marks it
        ``public``, ``s-maxage`` or ``must-revalidate``, as for a request with
        credentials, so one user's response is not served to another.
    :ivar state: anything a filter wants to keep from one hook to the next, for this
        request only (shared by the filters of the chain: prefix your keys).
    """

    __slots__ = ("_headers", "_target", "authenticated", "client", "client_target",
                 "host", "method", "scheme", "service", "state")

    def __init__(self, method: str, target: str, headers: Headers, *, host: str = "",
                 client: str = "", service: str = "", scheme: str = "http",
                 client_target: str | None = None) -> None:
        self.method = method
        self._target = target
        self._headers = headers
        self.host = host
        self.client = client
        self.service = service
        self.scheme = scheme
        self.client_target = target if client_target is None else client_target
        self.authenticated = False
        self.state: dict[str, Any] = {}

    @property
    def headers(self) -> Headers:
        return self._headers

    @property
    def target(self) -> str:
        """The path and query forwarded to the host (after the service's prefix)."""
        return self._target

    @target.setter
    def target(self, value: str) -> None:
        if not isinstance(value, str) or not _TARGET.fullmatch(value):
            raise ValueError(f"not an origin-form target: {value!r}")
        self._target = value

    @property
    def path(self) -> str:
        """The target without its query."""
        return self._target.split("?", 1)[0]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._target} service={self.service!r}>"


class Response:
    """A response on its way to the client, as filters see it.

    :ivar cache: how the cache answered: ``"hit"``, ``"miss"``, ``"stale"``,
        ``"revalidated"``, ``"coalesced"``, or ``""`` when it was not asked.
    :ivar source: ``"host"`` (or the cache), ``"filter"`` (a short-circuit answer) or
        ``"proxy"`` (an error the proxy made, such as 502).

    The body is not a filter's to change: it streams from the host as it arrives.
    """

    __slots__ = ("_headers", "_status", "cache", "source")

    def __init__(self, status: int, headers: Headers, *, cache: str = "",
                 source: str = "host") -> None:
        self._status = status
        self._headers = headers
        self.cache = cache
        self.source = source

    @property
    def headers(self) -> Headers:
        return self._headers

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        # Not 1xx, 204 or 304: the response's body would still follow its head.
        if not isinstance(value, int) or not 200 <= value <= 599 or value in _BODYLESS:
            raise ValueError(f"a filter may set a status of 200-599 but 204 and 304, "
                             f"not {value!r}")
        self._status = value

    def __repr__(self) -> str:
        return f"<Response {self._status} source={self.source}>"


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``on_request`` returns to answer the client itself: the request goes no
    further (no host, no cache), and is logged and counted like any other."""

    status: int
    body: bytes = b""
    headers: Iterable[tuple[str, str]] = ()  # kept as a tuple

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise ValueError(f"an answer's status must be 200-599, not {self.status!r}")
        if not isinstance(self.body, bytes):
            raise TypeError(f"an answer's body must be bytes, not {type(self.body).__name__}")
        if self.status in _BODYLESS and self.body:
            raise ValueError(f"a {self.status} answer has no body")
        fields = tuple(self.headers)
        for name, value in fields:
            _check(name, value)
        object.__setattr__(self, "headers", fields)

    @classmethod
    def error(cls, status: int, message: str,
              headers: Iterable[tuple[str, str]] = ()) -> Answer:
        """The proxy's own error shape: ``{"error": message}`` as JSON, not stored."""
        body = json.dumps({"error": message}).encode()
        return cls(status, body, (("Content-Type", "application/json"),
                                  ("Cache-Control", "no-store"), *headers))


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, for ``on_complete`` (the log phase)."""

    status: int  # what the client got; 0 if nothing was sent
    cache: str  # as Response.cache
    bytes_sent: int  # body bytes to the client
    duration_seconds: float  # from the request's arrival to the response's end
    upstream_host: str  # "address:port" of the host that answered, "" if none did
    complete: bool  # False when the response was broken off
    answered_by: str = ""  # the filter that answered, if one did


@dataclass(frozen=True, slots=True)
class Context:
    """What a filter is built with besides its config.

    :ivar service: the service whose ``filters`` list it, or None for ``proxy.filters``.
    :ivar routes_file: the file it was configured in.
    """

    service: str | None
    routes_file: str
    _setting: Callable[[str, str], str] = field(repr=False, compare=False,
                                                default=lambda name, default: default)

    def setting(self, name: str, default: str = "") -> str:
        """A setting from the environment or ``.env``, as the proxy reads its own (for
        a filter's secrets: keep them out of the routes file)."""
        return self._setting(name, default)


class Filter:
    """Base class of filters: override the hooks you need; the others cost nothing.

    :cvar config_schema: a JSON Schema the config must match, checked at load with
        the proxy's one-line errors; None: any mapping (check it in ``__init__`` and
        raise :class:`InvalidConfig`).
    :cvar api_version: the :data:`API_VERSION` the filter was written for.

    The constructor runs when the routes file is checked or loaded (``--check-config``
    too): validate there, but open connections lazily, on first use. A filter whose
    config did not change across a reload is kept, with its state. It must be safe to
    call from many greenlets at once (one per request), and must not block without a
    timeout: a hook runs on the request's greenlet.
    """

    config_schema: ClassVar[Mapping[str, Any] | None] = None
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, config: Mapping[str, Any], context: Context) -> None:
        self.config = config
        self.context = context
        self.name = type(self).__name__  # the proxy sets it to the routes file's `use`

    def on_request(self, request: Request) -> Answer | None:
        """Before the cache and the host: change ``request``, or answer it."""
        return None

    def on_response(self, request: Request, response: Response) -> None:
        """Before the response head goes to the client: change its status or headers."""
        return None

    def on_complete(self, request: Request, outcome: Outcome) -> None:
        """After the response has ended (or was broken off); exceptions are logged only."""
        return None

    def describe(self) -> str | None:
        """One line for ``--check-config`` on what the filter will do, where its effect
        is not plain from its config (a rate limit's effective rate); None: nothing."""
        return None

    def close(self) -> None:
        """The routes no longer use this filter (a reload dropped or changed it)."""
        return None
