"""Finding and building the filters a routes file names (docs/filters.md).

``use`` is a built-in's name, an entry point in the group ``wsgiproxy.filters`` of
any installed distribution, or ``module:Class`` for a filter that is not packaged (on
the proxy's import path); only the names the file uses are imported. Each entry is
built once, when the file is checked: the class's ``config_schema`` first, with the
routes file's one-line errors, then its constructor, whose :class:`InvalidConfig`
names the field. So a bad filter config refuses a start, a reload or
``--check-config`` the same way a bad port does.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final

import jsonschema

from ..errors import ConfigError
from . import API_VERSION, Context, Filter, InvalidConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..routes_file import Routes

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "FilterSpec", "build_spec", "descriptions",
           "find_filter"]

ENTRY_POINT_GROUP: Final = "wsgiproxy.filters"

#: The built-ins, written on the public API like any other filter. A distribution's
#: entry point of the same name does not replace one.
BUILTINS: Final = {
    "access": "wsgiproxy.filters.builtin.access:Access",
    "forward_auth": "wsgiproxy.filters.builtin.forward_auth:ForwardAuth",
    "headers": "wsgiproxy.filters.builtin.headers:HeaderRules",
    "rate_limit": "wsgiproxy.filters.builtin.rate_limit:RateLimit",
}


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """One ``filters`` entry: equal specs (same ``use``, same config) are the same
    filter across reloads, which is how an unchanged filter keeps its state."""

    use: str
    config_json: str  # canonical JSON of the config
    settings_digest: str  # of the settings its constructor read: a rotated secret, a new one
    where: str = field(compare=False)  # "proxy.services[0].filters[1]"
    built: Filter = field(compare=False, repr=False)  # the instance this load made


def _installed() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def find_filter(use: str) -> type[Filter]:
    """The class ``use`` names, imported now; :class:`LookupError` with one line else."""
    if use in BUILTINS or ":" in use:
        module, _, name = BUILTINS.get(use, use).partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"filter {use!r} could not be imported: "
                              f"{type(exc).__name__}: {exc}") from None
    else:
        installed = _installed()
        if use not in installed:
            known = sorted({*BUILTINS, *installed})
            close = difflib.get_close_matches(use, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise LookupError(f"unknown filter {use!r} ({hint}known: {', '.join(known)}; "
                              f"others are installed as entry points in "
                              f"{ENTRY_POINT_GROUP!r})")
        try:
            cls = installed[use].load()
        except Exception as exc:
            raise LookupError(f"filter {use!r} could not be imported "
                              f"({installed[use].value}): {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        raise LookupError(f"filter {use!r} is not a wsgiproxy.filters.Filter subclass")
    if getattr(cls, "api_version", None) != API_VERSION:
        raise LookupError(f"filter {use!r} was written for filter API version "
                          f"{getattr(cls, 'api_version', None)!r}; this proxy has "
                          f"{API_VERSION}")
    return cls


def build_spec(raw: dict[str, Any], where: str, source: str, service: str | None,
               describe: Callable[[jsonschema.ValidationError], str],
               setting: Callable[[str, str], str],
               cls: type[Filter] | None = None) -> FilterSpec:
    """Check and build one ``filters`` entry, raising :class:`ConfigError` with one line.

    :param describe: the routes file's ``field: problem`` wording for schema errors.
    :param setting: reads a setting from the environment or ``.env``.
    :param cls: the class, when the caller has it (tests); else ``raw["use"]`` names it.
    """
    use = raw["use"]
    config = raw.get("config") or {}
    try:
        cls = find_filter(use) if cls is None else cls
    except LookupError as exc:
        raise ConfigError(f"{source}: {where}.use: {exc}") from None
    if cls.config_schema is not None:
        validator = jsonschema.Draft202012Validator(cls.config_schema)
        errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path)))
        if errors:
            first = errors[0]
            first.path.appendleft("config")  # worded from the entry, not the config
            raise ConfigError(f"{source}: {where}.{describe(first)}")
    read: dict[str, str] = {}

    def recorded(name: str, default: str) -> str:
        read[name] = value = setting(name, default)
        return value

    context = Context(service, source, recorded)
    try:
        built = cls(config, context)
    except InvalidConfig as exc:
        at = f".{exc.field}" if exc.field and not exc.field.startswith("[") else exc.field
        raise ConfigError(f"{source}: {where}.config{at}: {exc.message}") from None
    except Exception as exc:
        raise ConfigError(f"{source}: {where}.config: filter {use!r} refused it: "
                          f"{type(exc).__name__}: {exc}") from None
    built.name = use
    digest = hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()
    return FilterSpec(use, json.dumps(config, sort_keys=True, default=str), digest, where,
                      built)


def descriptions(routes: Routes) -> list[str]:
    """``--check-config``'s lines on what filters will do (:meth:`Filter.describe`)."""
    placed = [("proxy", routes.filters)]
    placed += [(f"service {s.name}", s.filters) for s in routes.services]
    out = []
    for where, specs in placed:
        for spec in specs:
            line = spec.built.describe()
            if line:
                out.append(f"{where}: {spec.use}: {line}")
    return out
