"""Unit-testing a filter without sockets (docs/writing-a-filter.md).

::

    from wsgiproxy.filters import testing

    def test_refuses_without_a_key():
        f = testing.build(MyFilter, {"header": "X-Api-Key"})
        answer = f.on_request(testing.request(headers={"Accept": "*/*"}))
        assert answer is not None and answer.status == 401

:func:`build` checks the config as the proxy does when it loads a routes file, with
the same one-line message; :func:`run` passes a request through several filters in
the proxy's order, with a host's response or the answer of one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError
from ..routes_file import _describe
from . import Answer, Filter, Headers, Request, Response
from .loading import build_spec

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["ConfigError", "build", "request", "response", "run"]

F = TypeVar("F", bound=Filter)


def build(cls: type[F], config: Mapping[str, Any] | None = None, *,
          service: str | None = "test", settings: Mapping[str, str] | None = None) -> F:
    """``cls`` built from ``config`` as the proxy would build it: the schema first, then
    the constructor; :class:`ConfigError` (with the proxy's one-line message) if either
    refuses.

    :param service: the service it is listed under (None: ``proxy.filters``).
    :param settings: what :meth:`Context.setting` returns (nothing else is read).
    """
    values = dict(settings or {})
    where = "proxy.filters[0]" if service is None else "proxy.services[0].filters[0]"
    spec = build_spec({"use": cls.__name__, "config": dict(config or {})}, where, "<test>",
                      service, _describe, lambda name, default: values.get(name, default),
                      cls=cls)
    built = spec.built
    assert isinstance(built, cls)
    return built


def _fields(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Headers:
    items = headers.items() if hasattr(headers, "items") else headers
    return Headers(list(items))


def request(method: str = "GET", target: str = "/", *,
            headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
            client: str = "127.0.0.1", service: str = "test", host: str = "test.example",
            scheme: str = "http") -> Request:
    """A request as the proxy's filters see it."""
    return Request(method, target, _fields(headers), host=host, client=client,
                   service=service, scheme=scheme)


def response(status: int = 200, *,
             headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
             cache: str = "", source: str = "host") -> Response:
    """A response as the proxy's filters see it."""
    return Response(status, _fields(headers), cache=cache, source=source)


def run(filters: Sequence[Filter], req: Request,
        host_response: Response | None = None) -> Response:
    """``req`` through ``filters`` as the proxy runs them: request hooks in order until
    one answers; then the answer, or ``host_response`` (default: an empty 200), through
    the response hooks of the filters whose request hook ran, in reverse.
    Exceptions propagate (the proxy would answer 500 ``{"error": "filter <name>
    failed"}``); the fields the proxy adds itself (``Content-Length``, ``X-Cache``,
    ``X-Request-ID``) are not added here."""
    ran: list[Filter] = []
    answer: Answer | None = None
    for f in filters:
        ran.append(f)
        answer = f.on_request(req)
        if answer is not None:
            break
    if answer is not None:
        out = Response(answer.status, Headers(answer.headers), source="filter")
    else:
        out = host_response if host_response is not None else response()
    for f in reversed(ran):
        f.on_response(req, out)
    return out
