"""``api_key``: let a request through only with a known API key.

::

    filters:
      - use: api_key
        config:
          header: X-Api-Key            # where clients send it (the default)
          keys:                        # client name: SHA-256 of its key, in hex
            billing: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

The routes file holds only digests, so it can live in Git: the key itself is never
written down on the proxy's side. A request whose key matches goes on with the key
removed (the host does not need the secret) and ``X-Api-Client: <name>`` set, which
a client cannot forge: any ``X-Api-Client`` it sent is replaced or removed. Any other
request is 401 JSON with ``WWW-Authenticate: ApiKey``. A rate limit after it can key on
``header:X-Api-Client``: one count per client, whatever keys are tried.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any, ClassVar

from wsgiproxy.filters import Answer, Context, Filter, InvalidConfig, Request

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ApiKey", "digest"]

__version__ = "1.0.0"

_HEX64 = re.compile(r"[0-9a-f]{64}")


def digest(key: str) -> str:
    """What the routes file lists for ``key``: its SHA-256, in hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(Filter):
    """401 unless the request carries a key whose digest the config lists."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["keys"],
        "additionalProperties": False,
        "properties": {
            "header": {"type": "string", "pattern": "^[A-Za-z0-9-]+$"},
            "keys": {"type": "object", "minProperties": 1,
                     "propertyNames": {"pattern": "^[A-Za-z0-9._-]{1,64}$"},
                     "additionalProperties": {"type": "string"}},
            "client_header": {"type": "string", "pattern": "^[A-Za-z0-9-]+$"},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: Context) -> None:
        super().__init__(config, context)
        self.header: str = config.get("header", "X-Api-Key")
        self.client_header: str = config.get("client_header", "X-Api-Client")
        self.digests: dict[bytes, str] = {}
        for name, value in config["keys"].items():
            if not _HEX64.fullmatch(value):
                raise InvalidConfig("must be the SHA-256 of the key, 64 lower-case hex "
                                    "digits", field=f"keys.{name}")
            known = bytes.fromhex(value)
            if known in self.digests:
                raise InvalidConfig(f"the same key as {self.digests[known]!r}",
                                    field=f"keys.{name}")
            self.digests[known] = name

    def client_of(self, key: str | None) -> str | None:
        """The name of the client whose key this is, or None."""
        if not key:
            return None
        given = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, name in self.digests.items():  # every digest compared: no timing hint
            if hmac.compare_digest(given, known):
                found = name
        return found

    def on_request(self, request: Request) -> Answer | None:
        client = self.client_of(request.headers.get(self.header))
        request.headers.remove(self.header)
        request.headers.remove(self.client_header)
        if client is None:
            return Answer.error(401, "a valid API key is required",
                                headers=[("WWW-Authenticate", f'ApiKey header="{self.header}"')])
        request.headers.set(self.client_header, client)
        request.state["api_key.client"] = client
        # Who it is was established here, not by Authorization: the shared cache must
        # not serve this client's responses to another (unless the host says public).
        request.authenticated = True
        return None
