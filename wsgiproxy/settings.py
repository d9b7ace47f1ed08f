"""Process settings, read once at start-up from the environment or a ``.env`` file.

Each field of :class:`Settings` *is* a row of the settings table: its environment name,
default, parser and the sentence that documents it live in the field's metadata, so
the loader, the validation and docs/settings.md (:func:`settings_table`) all read one
definition, the way gunicorn's ``Setting`` classes feed both its CLI and its docs.

The environment always wins over ``.env`` (python-decouple's rule); ``.env`` is looked
up in the working directory, not next to this file, so an installed package behaves
like a checkout.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import decouple

from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings", "settings_table"]


def _non_negative_int(name: str, raw: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", raw):
        raise ConfigError(f"{name}: must be a whole number >= 0, got {raw!r}")
    return int(raw)


def _positive_int(name: str, raw: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", raw) or int(raw) == 0:
        raise ConfigError(f"{name}: must be a whole number >= 1, got {raw!r}")
    return int(raw)


def _non_negative_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number of seconds >= 0, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name}: must be a number of seconds >= 0, got {raw!r}")
    return value


def _positive_float(name: str, raw: str) -> float:
    value = _non_negative_float(name, raw)
    if value == 0:
        raise ConfigError(f"{name}: must be a number of seconds > 0, got {raw!r}")
    return value


def _path(name: str, raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(f"{name}: must name a file")
    return Path(raw.strip())


def _listen_addr(name: str, raw: str) -> tuple[str, int] | None:
    """``host:port`` (``:port`` means every interface); empty turns the server off."""
    raw = raw.strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: must be host:port with a port from 1 to 65535, got {raw!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _cache_url(name: str, raw: str) -> str:
    raw = raw.strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(
            f"{name}: must be empty or a redis://host:port/db URL, got {raw!r}"
        )
    return raw


def _worker_count(name: str, raw: str) -> int:
    """A number of worker processes; empty means one per CPU core of the machine."""
    if not raw.strip():
        return os.cpu_count() or 1
    return _positive_int(name, raw)


def _optional_port(name: str, raw: str) -> int | None:
    """A TCP port, or empty for none."""
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name}: must be empty or a port from 1 to 65535, got {raw!r}")
    return int(raw)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(name: str, raw: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR blocks (``10.0.0.0/8, 192.0.2.7, ::1``)."""
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not an IP address or CIDR block "
                              "(e.g. 10.0.0.0/8)") from None
    return tuple(out)


def _statuses(name: str, raw: str) -> tuple[int, ...]:
    """Comma-separated HTTP status codes (``502,503,504``); empty: none."""
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 100 <= int(part) <= 599:
            raise ConfigError(f"{name}: must be comma-separated status codes from 100 to "
                              f"599, got {raw!r}")
        out.append(int(part))
    return tuple(sorted(set(out)))


def _some_statuses(name: str, raw: str) -> tuple[int, ...]:
    """:func:`_statuses`, at least one."""
    statuses = _statuses(name, raw)
    if not statuses:
        raise ConfigError(f"{name}: must name at least one status code, got {raw!r}")
    return statuses


def _percent(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise ConfigError(f"{name}: must be a percentage from 0 to 100, got {raw!r}")
    return value


def _check_path(name: str, raw: str) -> str:
    raw = raw.strip()
    if not re.fullmatch(r"/[\x21-\x7e]*", raw):
        raise ConfigError(f"{name}: must be a path starting with '/', got {raw!r}")
    return raw


_TRUE: Final = ("1", "on", "true", "yes")
_FALSE: Final = ("0", "off", "false", "no")


def _switch(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name}: must be on or off, got {raw!r}")
    return value in _TRUE


_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"{name}: must be one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return level


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: how to read it and what it means."""

    name: str
    default: str
    parse: Callable[[str, str], Any]
    doc: str


def _setting(default: str, parse: Callable[[str, str], Any], doc: str) -> Any:
    """A :class:`Settings` field; its environment name is the field name upper-cased."""
    return dataclasses.field(metadata={"default": default, "parse": parse, "doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    """Parsed settings, in the order of the table in docs/settings.md.

    Field names are the lower-cased environment names.
    """

    configuration_filename: Path = _setting(
        "config/proxyConfig.yaml", _path,
        "the YAML routes file (services, their domains and hosts, the listen address)")
    max_http_retries: int = _setting(
        "2", _non_negative_int,
        "extra attempts on the same host after a transient failure (idempotent methods only)")
    max_forward_retries: int = _setting(
        "2", _non_negative_int, "further hosts tried after a host refuses the connection")
    http_cache_ttl_seconds: float = _setting(
        "60", _non_negative_float, "longest time a stored response is kept; 0 turns caching off")
    metrics_addr: tuple[str, int] | None = _setting(
        ":8090", _listen_addr, "host:port of the metrics and health server; empty turns it off")
    cache_url: str = _setting(
        "", _cache_url,
        "empty: bounded in-process memory; redis://host:port/db: one cache shared by every "
        "worker and replica")
    rate_limit_url: str = _setting(
        "", _cache_url,
        "where rate_limit filters keep their counts: redis://host:port/db shares them "
        "across workers and replicas; empty: CACHE_URL if it is Redis, else per process")
    cache_max_entries: int = _setting("10000", _positive_int, "LRU bound of the in-memory cache")
    cache_max_object_bytes: int = _setting(
        "1048576", _non_negative_int, "larger responses stream through and are not stored")
    cache_max_bytes: int = _setting(
        "268435456", _positive_int,
        "byte bound of the in-memory cache (bodies, headers and an estimate of overhead), "
        "per worker")
    cache_serve_stale_on_error: bool = _setting(
        "on", _switch,
        "serve a stored stale response when every attempt fails (within stale-if-error, "
        "or while it is kept), where the response does not forbid it")
    cache_lock_timeout_seconds: float = _setting(
        "5", _non_negative_float,
        "how long a request waits for a concurrent request fetching the same URL (one "
        "fetch per worker); 0: no coalescing")
    upstream_connect_timeout_seconds: float = _setting(
        "2", _positive_float, "connect timeout per attempt")
    upstream_read_timeout_seconds: float = _setting(
        "30", _positive_float, "read timeout per attempt (between bytes); exceeded gives 504")
    host_eject_seconds: float = _setting(
        "10", _non_negative_float, "how long a host that refused a connection is skipped")
    max_request_body_bytes: int = _setting(
        "10485760", _non_negative_int, "larger request bodies get 413 and never reach a backend")
    graceful_timeout: int = _setting(
        "30", _positive_int,
        "seconds that requests in flight get to finish after SIGTERM, before the process exits")
    config_watch_seconds: float = _setting(
        "2", _non_negative_float,
        "how often the routes file is checked for changes (reloaded when its content "
        "changes); 0: only SIGHUP reloads")
    tunnel_idle_timeout_seconds: float = _setting(
        "3600", _positive_float,
        "an upgraded connection (WebSocket) with no byte either way this long is closed")
    max_tunnels: int = _setting(
        "1000", _positive_int,
        "open upgraded connections (WebSocket) per worker; the next upgrade gets 503")
    client_header_timeout_seconds: float = _setting(
        "10", _positive_float,
        "time a client gets to send a request's whole header section, from its first "
        "byte; then 408 and the connection is closed")
    client_body_timeout_seconds: float = _setting(
        "30", _positive_float,
        "longest pause between two reads of a request body (and between two writes of "
        "a response to a client that does not read); then 408 if nothing was answered "
        "yet, and the connection is closed")
    # -- health and retries (docs/health.md): each a service's default ------------------
    health_check_path: str = _setting(
        "/healthz", _check_path,
        "what a service's `health_check` requests from each host (GET), unless it says")
    health_check_interval_seconds: float = _setting(
        "5", _positive_float, "time between two probes of a host")
    health_check_timeout_seconds: float = _setting(
        "1", _positive_float, "a probe not answered within it fails")
    health_check_healthy_threshold: int = _setting(
        "2", _positive_int, "probes passed in a row that bring a failing host back")
    health_check_unhealthy_threshold: int = _setting(
        "3", _positive_int, "probes failed in a row that take a host out of rotation")
    health_check_expect_status: tuple[int, ...] = _setting(
        "200", _some_statuses, "comma-separated statuses a passing probe answers with")
    outlier_consecutive_5xx: int = _setting(
        "5", _non_negative_int,
        "5xx answers (or broken exchanges) in a row that eject a host; 0: never")
    outlier_base_ejection_seconds: float = _setting(
        "30", _non_negative_float,
        "an ejected host is out this long times the number of its ejections (at most 300 s)")
    outlier_max_ejection_percent: float = _setting(
        "50", _percent,
        "the most of a service's hosts ejected for errors at once (one host always serves)")
    retry_on_status: tuple[int, ...] = _setting(
        "502,503,504", _statuses,
        "comma-separated statuses retried (idempotent methods only); empty: none")
    retry_budget_percent: float = _setting(
        "20", _percent,
        "retries a service may add, as a percentage of its requests (over 10 s, per "
        "process)")
    retry_budget_min_per_second: float = _setting(
        "10", _non_negative_float,
        "retries per second allowed on top of the percentage (for quiet services)")
    log_level: str = _setting(
        "INFO", _log_level, "level of the application log (the access log is always written)")
    # -- the server ------------------------------------------------------------------
    web_concurrency: int = _setting(
        "", _worker_count,
        "gunicorn worker processes (gunicorn's own variable; `-w` wins); empty: one per "
        "CPU core of the machine, so set it in containers, where that is the node's count")
    worker_connections: int = _setting(
        "10000", _positive_int,
        "client connections a worker holds at once (gunicorn's name; `python -m "
        "wsgiproxy` honours it too); beyond it new ones wait in the listen backlog")
    port: int | None = _setting(
        "", _optional_port,
        "a PaaS's port: gunicorn listens on 0.0.0.0:PORT instead of proxy.listen (`-b` "
        "wins over both)")
    keepalive_seconds: int = _setting(
        "75", _positive_int,
        "how long an idle keep-alive client connection is kept open; keep it above the "
        "idle timeout of a load balancer in front (60 s on AWS ALB)")
    trusted_proxies: tuple[Network, ...] = _setting(
        "", _networks,
        "comma-separated addresses or CIDR blocks of peers (load balancers) whose "
        "forwarding headers are believed; empty: nobody's")


#: The rows of the settings table, in field order.
SETTINGS: Final[tuple[Setting, ...]] = tuple(
    Setting(f.name.upper(), f.metadata["default"], f.metadata["parse"], f.metadata["doc"])
    for f in dataclasses.fields(Settings)
)


def default_source() -> decouple.Config:
    """Environment first, then ``.env`` in the working directory."""
    env_file = Path(os.getcwd()) / ".env"
    if env_file.is_file():
        return decouple.Config(decouple.RepositoryEnv(str(env_file)))
    return decouple.Config(decouple.RepositoryEmpty())


def load_settings(source: decouple.Config | None = None) -> Settings:
    """Read and validate every setting; the first bad one raises :class:`ConfigError`."""
    source = default_source() if source is None else source
    values = {s.name.lower(): s.parse(s.name, str(source(s.name, default=s.default)))
              for s in SETTINGS}
    return Settings(**values)


def settings_table() -> str:
    """The Markdown table docs/settings.md shows (a test keeps them in step)."""
    rows = ["| name | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "empty"
        rows.append(f"| `{s.name}` | {default} | {s.doc} |")
    return "\n".join(rows)
