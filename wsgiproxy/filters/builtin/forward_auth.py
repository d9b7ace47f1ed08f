"""``forward_auth``: ask an auth server about each request, as nginx's
``auth_request`` and Traefik's ForwardAuth do.

::

    - use: forward_auth
      config: {url: "http://auth.internal:9000/check", copy_headers: [X-User-Id],
               timeout_seconds: 2}

For each request, a GET to ``url`` with the request's headers (Authorization,
Cookie, ...) and ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` and ``-For``.

* A 2xx answer lets the request through; each of ``copy_headers`` is set on it from
  the answer, and removed when the answer lacks it, so a client cannot send its own
  ``X-User-Id`` past the check.
* Any other answer goes to the client as the auth server sent it: status, headers
  (``WWW-Authenticate``, ``Location``, ``Set-Cookie``) and body (up to 64 KiB; a
  larger one is 502). Redirects are not followed.
* The auth server unreachable, or not answering within ``timeout_seconds`` in all, is
  503 JSON; an answer that cannot be relayed is 502: never an open door.

A check's answer is read whole (up to 64 KiB) so that its connection goes back to the
pool: up to 64 per worker, and more checks at once wait for one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

import gevent
import urllib3

from wsgiproxy.filters import Answer, Context, Filter, InvalidConfig, Request

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ForwardAuth"]

#: The most of an auth server's answer that is read (and relayed, for a refusal).
MAX_ANSWER_BYTES: Final = 64 * 1024
#: Connections kept open to the auth server, per worker; more checks at once wait.
POOL_SIZE: Final = 64
#: Not sent to the auth server: they describe the original's body, this hop, or ask for
#: a conditional or partial answer (a 304 or 206 from the auth server means nothing).
_NOT_SENT: Final = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "expect", "proxy-authorization", "proxy-connection",
    "if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range",
    "range"})
#: Not relayed from a refusal: this hop's framing, and fields the proxy writes itself.
_NOT_RELAYED: Final = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "proxy-authenticate", "proxy-connection", "date", "server", "x-request-id"})


class ForwardAuth(Filter):
    """Each request is let through only if the auth server says 2xx."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "x-message": "must be a mapping with url (and optionally copy_headers, "
                     "timeout_seconds)",
        "properties": {
            "url": {"type": "string", "pattern": "^https?://",
                    "x-message": "must be an http:// or https:// URL"},
            "copy_headers": {"type": "array",
                             "items": {"type": "string",
                                       "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
                             "x-message": "must be a list of header names"},
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 60,
                                "x-message": "must be a number of seconds above 0, "
                                             "at most 60"},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: Context) -> None:
        super().__init__(config, context)
        self.url: str = config["url"]
        if not urlsplit(self.url).hostname:
            raise InvalidConfig(f"{self.url!r} has no host", field="url")
        self.copy_headers: tuple[str, ...] = tuple(config.get("copy_headers", ()))
        self.timeout: float = float(config.get("timeout_seconds", 2))
        self._pool: urllib3.PoolManager | None = None  # opened on first use

    def _client(self) -> urllib3.PoolManager:
        if self._pool is None:
            # Blocking: a burst of checks waits for a connection (within the timeout)
            # rather than opening and dropping one per check.
            self._pool = urllib3.PoolManager(num_pools=1, maxsize=POOL_SIZE, block=True,
                                             retries=False)
        return self._pool

    def check_headers(self, request: Request) -> dict[str, str]:
        """What the auth server is sent: the request's end-to-end headers, and where
        the request was going (the target as the client sent it)."""
        out: dict[str, str] = {}
        for name, value in request.headers:
            if name.lower() not in _NOT_SENT:
                out[name] = f"{out[name]}, {value}" if name in out else value
        out.update({
            "X-Forwarded-Method": request.method,
            "X-Forwarded-Proto": request.scheme,
            "X-Forwarded-Host": request.host,
            "X-Forwarded-Uri": request.client_target,
            "X-Forwarded-For": request.headers.get("X-Forwarded-For") or request.client,
        })
        return out

    def on_request(self, request: Request) -> Answer | None:
        # One deadline for the whole check (connect, a slow drip of an answer, waiting
        # for a pooled connection): urllib3's timeouts bound each step, not the sum.
        with gevent.Timeout(self.timeout, False):
            return self._check(request)
        return Answer.error(503, "auth server timed out")

    def _check(self, request: Request) -> Answer | None:
        timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
        try:
            answer = self._client().request(
                "GET", self.url, headers=self.check_headers(request), redirect=False,
                preload_content=False, timeout=timeout, pool_timeout=self.timeout)
        except urllib3.exceptions.NewConnectionError:  # (a ConnectTimeoutError subclass)
            return Answer.error(503, "auth server unreachable")
        except urllib3.exceptions.TimeoutError:
            return Answer.error(503, "auth server timed out")
        except urllib3.exceptions.HTTPError:
            return Answer.error(503, "auth server unreachable")
        try:
            body = answer.read(MAX_ANSWER_BYTES + 1, decode_content=False)
        except urllib3.exceptions.HTTPError:
            _discard(answer)
            return Answer.error(502, "auth server's answer was broken off")
        except BaseException:  # the deadline: the pool gets its place back all the same
            _discard(answer)
            raise
        if len(body) > MAX_ANSWER_BYTES:
            _discard(answer)  # not read to its end: the connection cannot be reused
            return Answer.error(502, "auth server's answer is too large to relay")
        answer.release_conn()  # read whole: back to the pool for the next check
        if 200 <= answer.status < 300:
            for name in self.copy_headers:
                request.headers.remove(name)  # never the client's own
                for value in answer.headers.getlist(name):
                    request.headers.add(name, value)
            request.authenticated = True
            return None
        return self._relay(answer, body)

    def _relay(self, answer: urllib3.BaseHTTPResponse, body: bytes) -> Answer:
        listed = {t.strip().lower() for t in answer.headers.get("Connection", "").split(",")}
        try:
            return Answer(answer.status, b"" if answer.status in (204, 304) else body,
                          [(n, v) for n, v in answer.headers.iteritems()
                           if n.lower() not in _NOT_RELAYED and n.lower() not in listed])
        except ValueError:  # a header value, or a status, no client may be sent
            return Answer.error(502, "auth server sent an answer that cannot be relayed")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()


def _discard(answer: urllib3.BaseHTTPResponse) -> None:
    """Close the answer's connection and give its place in the pool back (a blocking
    pool that lost places would make every later check wait, then time out)."""
    answer.close()
    answer.release_conn()
