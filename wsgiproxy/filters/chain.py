"""Running a route's filters for one request (docs/filters.md).

A :class:`Chain` is built once per routes load: the proxy-level filters, then the
service's, each with the hooks it overrides looked up once (a filter that only
rewrites requests costs nothing on responses; a service with no filters has no chain).
A :class:`FilterRun` carries one request through it: request hooks in order until one
answers, response and completion hooks in reverse over the filters whose request hook
ran. A filter that raises is logged once with its traceback, counted, and answered
500 (:class:`~wsgiproxy.errors.FilterFailed`); the proxy serves the next request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import FilterFailed
from . import Filter

if TYPE_CHECKING:
    from collections.abc import Iterable

    from . import Answer, Outcome, Request, Response
    from .loading import FilterSpec

__all__ = ["Chain", "ChainBuilder", "FilterRun"]

logger = logging.getLogger(__name__)

#: Called with (service, filter name) when a filter raised.
ErrorCounter = Callable[[str, str], None]

def _overrides(instance: Filter, hook: str) -> bool:
    return getattr(type(instance), hook) is not getattr(Filter, hook)


class Chain:
    """The filters of one route, in the order their request hooks run."""

    __slots__ = ("_count_error", "completing", "filters", "requesting", "responding",
                 "responds", "service")

    def __init__(self, service: str, filters: Iterable[Filter],
                 count_error: ErrorCounter | None = None) -> None:
        self.service = service
        self.filters = tuple(filters)
        # Per filter, whether it has each hook: looked up once, not per request.
        self.requesting = tuple(_overrides(f, "on_request") for f in self.filters)
        self.responding = tuple(_overrides(f, "on_response") for f in self.filters)
        self.completing = tuple(_overrides(f, "on_complete") for f in self.filters)
        self.responds = any(self.responding)
        self._count_error = count_error

    def __bool__(self) -> bool:
        return bool(self.filters)

    def start(self, request: Request) -> FilterRun:
        return FilterRun(self, request)

    def failed(self, instance: Filter, hook: str, request: Request) -> None:
        """Log and count a filter that raised (the caller is inside ``except``)."""
        logger.exception("filter %s failed in %s for %s %s (service %s)", instance.name,
                         hook, request.method, request.target, self.service)
        if self._count_error is not None:
            self._count_error(self.service, instance.name)


class FilterRun:
    """One request's way through a :class:`Chain`."""

    __slots__ = ("_ran", "answered_by", "chain", "request")

    def __init__(self, chain: Chain, request: Request) -> None:
        self.chain = chain
        self.request = request
        self._ran = 0  # filters whose on_request ran (they see the response)
        self.answered_by = ""

    def on_request(self) -> Answer | None:
        """Each filter's request hook in order; the first answer ends the request."""
        request, chain = self.request, self.chain
        for instance, has_hook in zip(chain.filters, chain.requesting, strict=True):
            self._ran += 1
            if not has_hook:
                continue
            try:
                answer = instance.on_request(request)
            except Exception:
                self._ran -= 1  # it failed: its later hooks would see half a state
                chain.failed(instance, "on_request", request)
                raise FilterFailed(instance.name) from None
            if answer is not None:
                self.answered_by = instance.name
                return answer
        return None

    def on_response(self, response: Response) -> None:
        """Response hooks in reverse, over the filters whose request hook ran."""
        chain = self.chain
        if not chain.responds:
            return
        request = self.request
        for i in range(self._ran - 1, -1, -1):
            if not chain.responding[i]:
                continue
            instance = chain.filters[i]
            try:
                instance.on_response(request, response)
            except Exception:
                chain.failed(instance, "on_response", request)
                raise FilterFailed(instance.name) from None

    def on_complete(self, outcome: Outcome) -> None:
        """Completion hooks in reverse; one that raises is logged and counted only."""
        chain, request = self.chain, self.request
        for i in range(self._ran - 1, -1, -1):
            if not chain.completing[i]:
                continue
            instance = chain.filters[i]
            try:
                instance.on_complete(request, outcome)
            except Exception:
                chain.failed(instance, "on_complete", request)


class ChainBuilder:
    """Builds each routes load's chains, keeping the filters that did not change.

    A filter is the same across loads when its place (``proxy`` or the service), its
    ``use`` and its config are: then the instance built by the earlier load is kept,
    with its state (a rate limiter's counts), and the new one is dropped. Filters no
    load uses any more are closed.
    """

    def __init__(self, count_error: ErrorCounter | None = None) -> None:
        self._count_error = count_error
        self._current: dict[tuple[str, int, FilterSpec], Filter] = {}
        self._next: dict[tuple[str, int, FilterSpec], Filter] = {}

    def begin(self) -> None:
        """A new load starts (what a load that failed half-way chose is forgotten)."""
        self._next = {}

    def _instances(self, scope: str, specs: Iterable[FilterSpec]) -> list[Filter]:
        out = []
        seen: dict[FilterSpec, int] = {}
        for spec in specs:
            nth = seen[spec] = seen.get(spec, -1) + 1  # the same entry twice: two filters
            key = (scope, nth, spec)
            instance = self._next.get(key)
            if instance is None:
                instance = self._current.get(key, spec.built)
                if instance is not spec.built:  # kept from before: the new one goes
                    _close(spec.built)
            self._next[key] = instance
            out.append(instance)
        return out

    def chain(self, service: str, proxy: Iterable[FilterSpec],
              own: Iterable[FilterSpec]) -> Chain:
        """The chain of ``service``: the proxy-level filters, then its own."""
        return Chain(service, [*self._instances("", proxy), *self._instances(service, own)],
                     self._count_error)

    def commit(self) -> None:
        """This load is served from now on: close the filters it no longer uses."""
        kept = {id(f) for f in self._next.values()}
        retired = [f for f in self._current.values() if id(f) not in kept]
        self._current, self._next = self._next, {}
        for instance in retired:
            _close(instance)


def _close(instance: Filter) -> None:
    """Requests routed before a reload may still call it: ``close()`` must tolerate
    that (docs/filters.md)."""
    try:
        instance.close()
    except Exception:
        logger.exception("filter %s failed in close", instance.name)

