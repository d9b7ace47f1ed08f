"""Process settings, read once at start-up from the environment or a ``.env`` file.

Every setting is one row of :data:`SETTINGS`: its name, default, parser and the sentence
that documents it. The loader, the validation and the README's settings table all read
that one table, the way gunicorn's ``Setting`` classes feed both its CLI and its docs.

The environment always wins over ``.env`` (python-decouple's rule); ``.env`` is looked
up in the working directory, not next to this file, so an installed package behaves
like a checkout.
"""

from __future__ import annotations

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
    value = _non_negative_int(name, raw)
    if value == 0:
        raise ConfigError(f"{name}: must be a whole number >= 1, got {raw!r}")
    return value


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

    @property
    def field(self) -> str:
        return self.name.lower()


#: The settings of SPEC §2 plus LOG_LEVEL, in the order the README lists them.
SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("CONFIGURATION_FILENAME", "config/proxyConfig.yaml", _path,
            "the YAML routes file (services, their domains and hosts, the listen address)"),
    Setting("MAX_HTTP_RETRIES", "2", _non_negative_int,
            "extra attempts on the same host after a transient failure "
            "(idempotent methods only)"),
    Setting("MAX_FORWARD_RETRIES", "2", _non_negative_int,
            "further hosts tried after a host refuses the connection"),
    Setting("HTTP_CACHE_TTL_SECONDS", "60", _non_negative_float,
            "longest time a stored response is kept; 0 turns caching off"),
    Setting("METRICS_ADDR", ":8090", _listen_addr,
            "host:port of the metrics and health server; empty turns it off"),
    Setting("CACHE_URL", "", _cache_url,
            "empty: bounded in-process memory; redis://host:port/db: one cache shared by "
            "every worker and replica"),
    Setting("CACHE_MAX_ENTRIES", "10000", _positive_int,
            "LRU bound of the in-memory cache"),
    Setting("CACHE_MAX_OBJECT_BYTES", "1048576", _non_negative_int,
            "larger responses stream through and are not stored"),
    Setting("CACHE_MAX_BYTES", "268435456", _positive_int,
            "byte bound of the in-memory cache (bodies, headers and an estimate of "
            "overhead), per worker"),
    Setting("UPSTREAM_CONNECT_TIMEOUT_SECONDS", "2", _positive_float,
            "connect timeout per attempt"),
    Setting("UPSTREAM_READ_TIMEOUT_SECONDS", "30", _positive_float,
            "read timeout per attempt (between bytes); exceeded gives 504"),
    Setting("HOST_EJECT_SECONDS", "10", _non_negative_float,
            "how long a host that refused a connection is skipped"),
    Setting("MAX_REQUEST_BODY_BYTES", "10485760", _non_negative_int,
            "larger request bodies get 413 and never reach a backend"),
    Setting("GRACEFUL_TIMEOUT", "30", _positive_int,
            "seconds that requests in flight get to finish after SIGTERM, before the "
            "process exits"),
    Setting("LOG_LEVEL", "INFO", _log_level,
            "level of the application log (the access log is always written)"),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Parsed settings; field names are the lower-cased environment names."""

    configuration_filename: Path
    max_http_retries: int
    max_forward_retries: int
    http_cache_ttl_seconds: float
    metrics_addr: tuple[str, int] | None
    cache_url: str
    cache_max_entries: int
    cache_max_object_bytes: int
    cache_max_bytes: int
    upstream_connect_timeout_seconds: float
    upstream_read_timeout_seconds: float
    host_eject_seconds: float
    max_request_body_bytes: int
    graceful_timeout: int
    log_level: str

    @property
    def max_attempts(self) -> int:
        """Upper bound of upstream attempts per client request (SPEC §6)."""
        return (1 + self.max_http_retries) * (1 + self.max_forward_retries)


def default_source() -> decouple.Config:
    """Environment first, then ``.env`` in the working directory."""
    env_file = Path(os.getcwd()) / ".env"
    if env_file.is_file():
        return decouple.Config(decouple.RepositoryEnv(str(env_file)))
    return decouple.Config(decouple.RepositoryEmpty())


def load_settings(source: decouple.Config | None = None) -> Settings:
    """Read and validate every setting; the first bad one raises :class:`ConfigError`."""
    source = default_source() if source is None else source
    values = {}
    for setting in SETTINGS:
        raw = source(setting.name, default=setting.default)
        values[setting.field] = setting.parse(setting.name, str(raw))
    return Settings(**values)


def settings_table() -> str:
    """The Markdown table the README shows (a test keeps them in step)."""
    rows = ["| name | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "empty"
        rows.append(f"| `{s.name}` | {default} | {s.doc} |")
    return "\n".join(rows)
