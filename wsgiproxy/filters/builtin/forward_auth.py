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
* The auth server unreachable, timing out or answering garbage is 503 (or 502) JSON:
  never an open door.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from wsgiproxy.filters import Answer, Context, Filter, InvalidConfig, Request

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ForwardAuth"]

#: The most of an auth server's refusal that is relayed.
MAX_ANSWER_BYTES: Final = 64 * 1024
#: Not sent to the auth server: they describe the original's body or this hop.
_NOT_SENT: Final = frozenset({"host", "content-length", "transfer-encoding", "connection",
                              "keep-alive", "te", "trailer", "upgrade", "expect",
                              "proxy-authorization", "proxy-connection"})
#: Not relayed from a refusal: this hop's framing, which the proxy writes itself.
_NOT_RELAYED: Final = frozenset({"content-length", "transfer-encoding", "connection",
                                 "keep-alive", "te", "trailer", "upgrade",
                                 "proxy-authenticate", "proxy-connection"})


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
        self._session: requests.Session | None = None  # opened on first use

    def _client(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # no proxy or .netrc from the environment
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=64, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._session = session
        return self._session

    def check_headers(self, request: Request) -> dict[str, str]:
        """What the auth server is sent: the request's end-to-end headers, and where
        the request was going."""
        out: dict[str, str] = {}
        for name, value in request.headers:
            if name.lower() not in _NOT_SENT:
                out[name] = f"{out[name]}, {value}" if name in out else value
        out.update({
            "X-Forwarded-Method": request.method,
            "X-Forwarded-Proto": request.scheme,
            "X-Forwarded-Host": request.host,
            "X-Forwarded-Uri": request.target,
            "X-Forwarded-For": request.headers.get("X-Forwarded-For") or request.client,
        })
        return out

    def on_request(self, request: Request) -> Answer | None:
        try:
            answer = self._client().get(self.url, headers=self.check_headers(request),
                                        timeout=self.timeout, allow_redirects=False,
                                        stream=True)
        except requests.Timeout:
            return Answer.error(503, "auth server timed out")
        except requests.RequestException:
            return Answer.error(503, "auth server unreachable")
        with answer:
            if 200 <= answer.status_code < 300:
                for name in self.copy_headers:
                    request.headers.remove(name)
                    value = answer.headers.get(name)
                    if value is not None:
                        request.headers.set(name, value)
                return None
            return self._relay(answer)

    def _relay(self, answer: requests.Response) -> Answer:
        try:
            body = answer.raw.read(MAX_ANSWER_BYTES + 1, decode_content=False)
        except (requests.RequestException, OSError, ValueError):
            return Answer.error(502, "auth server's answer was broken off")
        if len(body) > MAX_ANSWER_BYTES:
            return Answer.error(502, "auth server's answer is too large to relay")
        if not 200 <= answer.status_code <= 599:
            return Answer.error(502, f"auth server answered {answer.status_code}")
        fields = answer.raw.headers  # urllib3's: repeats (Set-Cookie) kept apart
        try:
            return Answer(answer.status_code, body,
                          tuple((n, v) for n, v in fields.iteritems()
                                if n.lower() not in _NOT_RELAYED))
        except ValueError:  # a header value no client may be sent
            return Answer.error(502, "auth server sent an invalid header")

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
