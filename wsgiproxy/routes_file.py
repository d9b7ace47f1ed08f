"""The routes file: which services exist, the domain of each, the hosts that serve it and
how (weights, TLS, the service's own timeouts, retries, body limit and cache).

Loaded once at start-up with PyYAML's safe loader, checked against
``routes.schema.json`` (JSON Schema, so editors can use the same file) and turned into
frozen dataclasses. A bad file raises :class:`ConfigError` with one line naming the file
and the field, e.g.
``config/proxyConfig.yaml: proxy.services[0].hosts[1].port: must be an integer from 1 to 65535``.
"""

from __future__ import annotations

import difflib
import json
import ssl
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from .errors import ConfigError
from .filters.loading import FilterSpec, build_spec
from .settings import default_source

if TYPE_CHECKING:
    from pathlib import Path

#: ``proxy.path_prefix`` when the file names none (docs/routing.md).
DEFAULT_PATH_PREFIX = "/proxy/"

__all__ = ["TLS", "Backend", "Endpoint", "HealthCheck", "Policy", "Routes", "Service",
           "load_routes", "normalize_domain", "parse_routes", "parse_routes_text", "read_routes"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address and port, as the routes file writes them."""

    address: str
    port: int

    @property
    def netloc(self) -> str:
        """``host:port`` with IPv6 literals bracketed, as it appears in URLs and logs."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.netloc


@dataclass(frozen=True, slots=True)
class Backend(Endpoint):
    """A host that serves a service, and its share of the requests (docs/policy.md)."""

    weight: int = 1


@dataclass(frozen=True, slots=True)
class TLS:
    """How a service's hosts are reached over TLS (docs/tls.md).

    :param server_name: sent as SNI and checked against the host's certificate; None
        means the service's domain.
    :param ca_file: CA certificates (PEM) to verify against; None: the system's store.
    :param cert_file: a client certificate (PEM) for mutual TLS, ``key_file`` its key.
    """

    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A service's own settings (docs/policy.md); None wherever the global setting applies."""

    connect_timeout_seconds: float | None = None
    read_timeout_seconds: float | None = None
    http_retries: int | None = None
    forward_retries: int | None = None
    eject_seconds: float | None = None
    max_request_body_bytes: int | None = None
    cache_enabled: bool | None = None
    cache_ttl_seconds: float | None = None
    health_check: HealthCheck | None = None  # None: the hosts are not probed
    outlier_consecutive_5xx: int | None = None
    outlier_base_ejection_seconds: float | None = None
    outlier_max_ejection_percent: float | None = None
    retry_on_status: tuple[int, ...] | None = None
    retry_budget_percent: float | None = None
    retry_budget_min_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A service's ``health_check`` as written (docs/health.md); None wherever the global
    setting applies."""

    path: str | None = None
    interval_seconds: float | None = None
    timeout_seconds: float | None = None
    healthy_threshold: int | None = None
    unhealthy_threshold: int | None = None
    expect_status: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """One routes-file service: requests whose Host is ``domain`` go to ``hosts``."""

    name: str
    domain: str
    hosts: tuple[Backend, ...]
    tls: TLS | None = None  # plain HTTP when None
    policy: Policy = field(default_factory=Policy)
    #: Its own filters (docs/filters.md). Not part of what makes a service "unchanged"
    #: for its connections: a reload that changes only filters keeps the pools.
    filters: tuple[FilterSpec, ...] = field(default=(), compare=False)
    #: Only paths under it are proxied, without it (docs/routing.md): the service's
    #: ``path_prefix``, else ``proxy.path_prefix``. Not compared either: a reload that
    #: changes only the prefix keeps the pools.
    path_prefix: str = field(default=DEFAULT_PATH_PREFIX, compare=False)


@dataclass(frozen=True, slots=True)
class Routes:
    listen: Endpoint
    services: tuple[Service, ...]
    filters: tuple[FilterSpec, ...] = ()  # proxy.filters: run for every service, first


def normalize_domain(host: str) -> str:
    """Lower-case, without a trailing dot: how domains are compared (docs/routing.md)."""
    return host.lower().rstrip(".")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(resources.files(__package__).joinpath("routes.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _field_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    """One ``field: problem`` line, worded for an operator rather than a schema author."""
    path = list(error.absolute_path)
    instance: Any = error.instance
    schema: Any = error.schema
    if error.validator in ("required", "additionalProperties") and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        extra = sorted(str(k) for k in instance if k not in known)
        if extra:  # a misspelled key is the likelier mistake than a missing one
            close = difflib.get_close_matches(extra[0], known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return (f"{_field_path([*path, extra[0]])}: unknown key ({hint}expected one of "
                    f"{', '.join(known)})")
        missing = [k for k in error.validator_value if k not in instance]  # type: ignore[union-attr]
        return f"{_field_path([*path, missing[0]])}: is required"
    if error.validator == "oneOf" and isinstance(instance, dict):
        # tls: a mapping that breaks a rule of its own keys: say which one, from the
        # branch that takes a mapping (not the one that wanted a boolean).
        inside = [e for e in error.context or ()
                  if not (e.validator == "type" and not e.relative_path)]
        if inside:
            return _describe(jsonschema.exceptions.best_match(inside))
    message = schema.get("x-message", error.message)
    where = _field_path(path)
    return f"{where}: {message}" if where else message


def _sort_key(error: jsonschema.ValidationError) -> list[tuple[int, int | str]]:
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in error.absolute_path]


def parse_routes(data: Any, source: str = "<routes>") -> Routes:
    """Validate already-parsed YAML and build :class:`Routes`."""
    errors = sorted(_validator().iter_errors(data), key=_sort_key)
    if errors:
        raise ConfigError(f"{source}: {_describe(errors[0])}")

    proxy = data["proxy"]
    prefix = proxy.get("path_prefix", DEFAULT_PATH_PREFIX)
    services: list[Service] = []
    seen_domains: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for i, raw in enumerate(proxy["services"]):
        domain = normalize_domain(raw["domain"])
        if domain in seen_domains:
            raise ConfigError(
                f"{source}: proxy.services[{i}].domain: {raw['domain']!r} is already used by "
                f"proxy.services[{seen_domains[domain]}] (domains are case-insensitive)"
            )
        if raw["name"] in seen_names:
            raise ConfigError(
                f"{source}: proxy.services[{i}].name: {raw['name']!r} is already used by "
                f"proxy.services[{seen_names[raw['name']]}]"
            )
        seen_domains[domain] = seen_names[raw["name"]] = i
        hosts = tuple(Backend(h["address"], h["port"], h.get("weight", 1))
                      for h in raw["hosts"])
        where = f"{source}: proxy.services[{i}]"
        services.append(Service(name=raw["name"], domain=domain, hosts=hosts,
                                tls=_tls(raw.get("tls"), where), policy=_policy(raw),
                                filters=_filters(raw, f"proxy.services[{i}]", source,
                                                 raw["name"]),
                                path_prefix=raw.get("path_prefix", prefix)))
    listen = Endpoint(proxy["listen"]["address"], proxy["listen"]["port"])
    return Routes(listen=listen, services=tuple(services),
                  filters=_filters(proxy, "proxy", source, None))


def _filters(raw: dict[str, Any], where: str, source: str,
             service: str | None) -> tuple[FilterSpec, ...]:
    """The entries' filters, each found, checked and built now (docs/filters.md)."""
    return tuple(build_spec(entry, f"{where}.filters[{j}]", source, service, _describe,
                            _setting)
                 for j, entry in enumerate(raw.get("filters", ())))


def _setting(name: str, default: str) -> str:
    return str(default_source()(name, default=default))


def _policy(raw: dict[str, Any]) -> Policy:
    timeouts, retries, cached = raw.get("timeouts", {}), raw.get("retries", {}), \
        raw.get("cache", {})
    return Policy(connect_timeout_seconds=timeouts.get("connect_seconds"),
                  read_timeout_seconds=timeouts.get("read_seconds"),
                  http_retries=retries.get("http"), forward_retries=retries.get("forward"),
                  eject_seconds=raw.get("eject_seconds"),
                  max_request_body_bytes=raw.get("max_request_body_bytes"),
                  cache_enabled=cached.get("enabled"),
                  cache_ttl_seconds=cached.get("ttl_seconds"),
                  health_check=_health_check(raw.get("health_check")),
                  **_outlier_and_budget(raw.get("outlier", {}), retries))


def _statuses(raw: list[int] | None) -> tuple[int, ...] | None:
    return None if raw is None else tuple(sorted(set(raw)))


def _health_check(raw: bool | dict[str, Any] | None) -> HealthCheck | None:
    """``health_check: true`` probes with every default; a mapping overrides some."""
    if raw is None or raw is False:
        return None
    raw = {} if raw is True else raw
    return HealthCheck(path=raw.get("path"), interval_seconds=raw.get("interval_seconds"),
                       timeout_seconds=raw.get("timeout_seconds"),
                       healthy_threshold=raw.get("healthy_threshold"),
                       unhealthy_threshold=raw.get("unhealthy_threshold"),
                       expect_status=_statuses(raw.get("expect_status")))


def _outlier_and_budget(outlier: dict[str, Any], retries: dict[str, Any]) -> dict[str, Any]:
    return {"outlier_consecutive_5xx": outlier.get("consecutive_5xx"),
            "outlier_base_ejection_seconds": outlier.get("base_ejection_seconds"),
            "outlier_max_ejection_percent": outlier.get("max_ejection_percent"),
            "retry_on_status": _statuses(retries.get("on_status")),
            "retry_budget_percent": retries.get("budget_percent"),
            "retry_budget_min_per_second": retries.get("min_retries_per_second")}


def _tls(raw: bool | dict[str, Any] | None, where: str) -> TLS | None:
    """The service's TLS settings, with its files loaded once now: a file that is
    missing or is not PEM is a start-up error naming the key, not a failure per request."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return TLS()
    tls = TLS(verify=raw.get("verify", True), ca_file=raw.get("ca_file"),
              server_name=raw.get("server_name"), cert_file=raw.get("cert_file"),
              key_file=raw.get("key_file"))
    if tls.key_file and not tls.cert_file:
        raise ConfigError(f"{where}.tls.key_file: needs cert_file (the certificate it signs)")
    context = ssl.create_default_context()
    try:
        if tls.ca_file:
            context.load_verify_locations(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.tls.ca_file: cannot load {tls.ca_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.tls.cert_file: cannot load {tls.cert_file}"
                          f"{' with ' + tls.key_file if tls.key_file else ''}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return tls


def read_routes(path: Path) -> tuple[Routes, str]:
    """Read, parse and validate the routes file at ``path``; the routes and the text
    they came from (a reload keeps the text it accepted)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the routes file ({reason})") from None
    return parse_routes_text(text, str(path)), text


def parse_routes_text(text: str, source: str = "<routes>") -> Routes:
    """Parse YAML text and validate it as a routes file."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    return parse_routes(data, source)


def load_routes(path: Path) -> Routes:
    """Read, parse and validate the routes file at ``path``."""
    return read_routes(path)[0]
