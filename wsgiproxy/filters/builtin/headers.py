"""``headers``: set, add or remove header fields of requests and responses.

::

    - use: headers
      config:
        request: {set: {X-Env: prod}, remove: [X-Debug]}
        response: {set: {Strict-Transport-Security: "max-age=31536000"}, remove: [Server]}

Per direction, ``remove`` runs first, then ``set`` (replaces every value), then ``add``
(one more value). Values are literal strings; a list under ``add`` adds each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

from wsgiproxy.filters import Context, Filter, Headers, Request, Response

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["HeaderRules"]

_NAME: Final = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
_VALUE: Final = {"type": "string", "pattern": "^[\\t\\x20-\\x7e\\x80-\\xff]*$",
                 "x-message": "must be a header value (no control characters)"}
_RULES: Final = {
    "type": "object",
    "additionalProperties": False,
    "x-message": "must be a mapping of set, add and remove",
    "properties": {
        "set": {"type": "object", "propertyNames": {"pattern": _NAME},
                "additionalProperties": _VALUE,
                "x-message": "must map header names to values"},
        "add": {"type": "object", "propertyNames": {"pattern": _NAME},
                "additionalProperties": {"oneOf": [_VALUE, {"type": "array", "items": _VALUE}]},
                "x-message": "must map header names to a value or a list of values"},
        "remove": {"type": "array", "items": {"type": "string", "pattern": _NAME},
                   "x-message": "must be a list of header names"},
    },
}


class _Rules:
    __slots__ = ("add", "remove", "set")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.remove: tuple[str, ...] = tuple(raw.get("remove", ()))
        self.set: tuple[tuple[str, str], ...] = tuple(raw.get("set", {}).items())
        self.add: tuple[tuple[str, str], ...] = tuple(
            (name, value) for name, values in raw.get("add", {}).items()
            for value in ([values] if isinstance(values, str) else values))

    def apply(self, headers: Headers) -> None:
        for name in self.remove:
            headers.remove(name)
        for name, value in self.set:
            headers.set(name, value)
        for name, value in self.add:
            headers.add(name, value)


class HeaderRules(Filter):
    """Fixed header changes, both ways."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "x-message": "must be a mapping of request and response",
        "properties": {"request": _RULES, "response": _RULES},
    }

    def __init__(self, config: Mapping[str, Any], context: Context) -> None:
        super().__init__(config, context)
        self._request = _Rules(config.get("request", {}))
        self._response = _Rules(config.get("response", {}))

    def on_request(self, request: Request) -> None:
        self._request.apply(request.headers)

    def on_response(self, request: Request, response: Response) -> None:
        self._response.apply(response.headers)
