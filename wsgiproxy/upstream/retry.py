"""Every "may this request be tried again, where, after how long" asks one object.

:class:`RetryPolicy` holds MAX_HTTP_RETRIES and MAX_FORWARD_RETRIES (docs/failures.md) and the
bound they make together. It answers for both loops a request can go round:

* the same host, after the request was sent (read timeout, reset before a response,
  a status of ``retries.on_status``, 502/503/504 by default): urllib3 runs that loop
  inside ``urlopen``, with the ``Retry`` that :meth:`RetryPolicy.same_host` builds
  (idempotent methods only, short exponential backoff, ``Retry-After`` on a 503 up to
  2 s);
* another host, after this one failed before anything reached the client (connection
  refused or timed out, or the TLS handshake failed: the request never left; or a
  response head and then nothing):
  :meth:`RetryPolicy.next_host`, asked by :class:`~wsgiproxy.upstream.adapter.ServiceAdapter`.

Every retry of a request that was sent, in either loop, is drawn from the service's
:class:`~wsgiproxy.upstream.budget.RetryBudget` (docs/health.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util import Retry

from .failures import Failure

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from .budget import RetryBudget

__all__ = ["IDEMPOTENT_METHODS", "RETRYABLE_STATUSES", "Failure", "ProxyRetry", "RetryPolicy"]

#: docs/failures.md: only these are ever sent to a host a second time.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Statuses that mean "this host could not serve it now".
RETRYABLE_STATUSES: Final = frozenset({502, 503, 504})
#: A Retry-After longer than this is waited this long.
RETRY_AFTER_CAP_SECONDS: Final = 2


class ProxyRetry(Retry):
    """urllib3 ``Retry`` that waits on ``Retry-After`` only with a 503, and retries only
    while the service's :class:`~wsgiproxy.upstream.budget.RetryBudget` allows.

    ``Retry`` also retries 413 and 429 when they carry ``Retry-After``; a proxy passes
    those to the client, whose request it is to repeat or not.

    ``budget`` is carried from each ``Retry`` to the next (urllib3 makes a new one per
    attempt with :meth:`new`). A retry the budget refuses ends the loop as running out
    of retries does: the host's last answer (or error) is what the caller gets.
    """

    RETRY_AFTER_STATUS_CODES = frozenset({503})
    budget: RetryBudget | None = None

    def new(self, **kw: Any) -> Self:
        retry = super().new(**kw)
        retry.budget = self.budget
        return retry

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Self:
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.budget is not None and not self.budget.withdraw():
            reason = error or ResponseError(f"retry budget exhausted after status "
                                            f"{response.status if response else '?'}")
            raise MaxRetryError(_pool, url or "", reason) from reason  # type: ignore[arg-type]
        return retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and where, a request may be sent again.

    :param http_retries: extra attempts on the same host (MAX_HTTP_RETRIES).
    :param forward_retries: further hosts after one failed (MAX_FORWARD_RETRIES).
    :param on_status: host statuses retried on the same host (``retries.on_status``).
    """

    http_retries: int
    forward_retries: int
    on_status: frozenset[int] = RETRYABLE_STATUSES

    @property
    def max_attempts(self) -> int:
        """The bound on attempts per client request: (1 + http) x (1 + forward)."""
        return (1 + self.http_retries) * (1 + self.forward_retries)

    def same_host(self, budget: RetryBudget | None = None) -> Retry:
        """urllib3's ``Retry`` for the same-host loop, each retry drawn from ``budget``.
        Connect failures are not retried there (``connect=0``): :meth:`next_host` moves
        on instead, at once."""
        retry = ProxyRetry(
            total=self.http_retries,
            connect=0,
            read=self.http_retries,
            status=self.http_retries,
            other=0,
            redirect=0,
            allowed_methods=IDEMPOTENT_METHODS,
            status_forcelist=self.on_status,
            backoff_factor=0.05,  # 0 s, 0.1 s, 0.2 s, ...
            backoff_max=1.0,
            raise_on_status=False,  # give the client the host's last answer
            raise_on_redirect=False,
            respect_retry_after_header=True,
            retry_after_max=RETRY_AFTER_CAP_SECONDS,
        )
        retry.budget = budget
        return retry

    def next_host(self, *, method: str, failure: str, resendable: bool, hosts_tried: int,
                  hosts: int, attempts: int, budget: RetryBudget | None = None) -> bool:
        """Whether, after a host failed, another host may be tried now.

        :param failure: where the attempt failed, a :class:`Failure`.
        :param resendable: the request body can be sent again (not half streamed).
        :param hosts_tried: distinct hosts tried so far, this one included.
        :param hosts: hosts the service has.
        :param attempts: attempts made so far, same-host retries included.
        :param budget: a request that was sent is sent again only if it allows; one
            that never left costs the host nothing and is not counted.
        """
        if hosts_tried > self.forward_retries or attempts >= self.max_attempts:
            return False
        if failure == Failure.NOT_SENT:  # any method, each host at most once
            return hosts_tried < hosts
        if failure == Failure.AFTER_HEAD:  # nothing reached the client yet
            return method in IDEMPOTENT_METHODS and resendable and \
                (budget is None or budget.withdraw())
        return False  # sent, and the same-host retries are used up: the host's answer stands
