"""A service's retry budget (docs/health.md): retries may add at most
``budget_percent`` of the service's requests, plus ``min_retries_per_second``.

Without a budget, a service whose hosts all answer 503 gets every request up to
(1 + MAX_HTTP_RETRIES) x (1 + MAX_FORWARD_RETRIES) times: the proxy's own retries
triple the load of a service that is already overloaded. Linkerd's and Finagle's
budgets are the model: requests and retries are counted over the last
:data:`WINDOW_SECONDS`; a retry is allowed while the retries in that window stay under
the percentage of its requests, or while this second's retries stay under the floor
(so a quiet service can still retry). The counts are per process: under gunicorn each
worker keeps its own, which keeps the ratio and gives each worker the floor.

Pure bookkeeping, no I/O: nothing here can switch greenlets.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["WINDOW_SECONDS", "RetryBudget"]

#: How far back requests and retries are counted.
WINDOW_SECONDS: Final = 10


class RetryBudget:
    """Counts a service's requests and decides whether one more retry may be made.

    :param percent: retries allowed per 100 requests (``budget_percent``).
    :param min_per_second: retries allowed each second whatever the requests.
    :param on_exhausted: told each time a retry is refused (a metric).
    :param clock: a monotonic clock; tests pass their own.

    Usage::

        budget = RetryBudget(20, 10)
        budget.request()             # once per client request
        if budget.withdraw(): ...    # before each retry
    """

    __slots__ = ("_clock", "_min_per_second", "_on_exhausted", "_ratio", "_requests",
                 "_retries", "_seconds")

    def __init__(self, percent: float, min_per_second: float,
                 on_exhausted: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = percent / 100
        self._min_per_second = min_per_second
        self._on_exhausted = on_exhausted
        self._clock = clock
        # A ring of one-second buckets: the second each holds, its requests, its retries.
        self._seconds = [-1] * WINDOW_SECONDS
        self._requests = [0] * WINDOW_SECONDS
        self._retries = [0] * WINDOW_SECONDS

    def _bucket(self) -> tuple[int, int]:
        """The bucket of the current second (emptied if it held an older one) and the
        current second."""
        second = int(self._clock())
        k = second % WINDOW_SECONDS
        if self._seconds[k] != second:
            self._seconds[k], self._requests[k], self._retries[k] = second, 0, 0
        return k, second

    def request(self) -> None:
        """A client request reached the service."""
        k, _ = self._bucket()
        self._requests[k] += 1

    def withdraw(self) -> bool:
        """Whether one more retry may be made now; if so it is counted."""
        k, second = self._bucket()
        oldest = second - WINDOW_SECONDS
        requests = retries = 0
        for i in range(WINDOW_SECONDS):
            if self._seconds[i] > oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        if retries < self._ratio * requests or self._retries[k] < self._min_per_second:
            self._retries[k] += 1
            return True
        if self._on_exhausted is not None:
            self._on_exhausted()
        return False
