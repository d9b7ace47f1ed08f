"""A service's effective settings: its own from the routes file (docs/policy.md), the global
ones (the environment, docs/settings.md) for whatever it does not say. Resolved once per routes
load, so a request reads plain values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .routes_file import Service
    from .settings import Settings

__all__ = ["ServicePolicy", "resolve_policy"]

_T = TypeVar("_T")


def _own(value: _T | None, default: _T) -> _T:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """What applies to one service's requests."""

    connect_timeout_seconds: float
    read_timeout_seconds: float
    http_retries: int
    forward_retries: int
    eject_seconds: float
    max_request_body_bytes: int
    cache_ttl_seconds: float  # 0: this service's responses are not cached


def resolve_policy(service: Service, settings: Settings) -> ServicePolicy:
    """``service``'s own settings where it has them, ``settings`` for the rest."""
    own = service.policy
    ttl = 0.0 if own.cache_enabled is False else _own(own.cache_ttl_seconds,
                                                      settings.http_cache_ttl_seconds)
    return ServicePolicy(
        connect_timeout_seconds=_own(own.connect_timeout_seconds,
                                     settings.upstream_connect_timeout_seconds),
        read_timeout_seconds=_own(own.read_timeout_seconds,
                                  settings.upstream_read_timeout_seconds),
        http_retries=_own(own.http_retries, settings.max_http_retries),
        forward_retries=_own(own.forward_retries, settings.max_forward_retries),
        eject_seconds=_own(own.eject_seconds, settings.host_eject_seconds),
        max_request_body_bytes=_own(own.max_request_body_bytes,
                                    settings.max_request_body_bytes),
        cache_ttl_seconds=ttl,
    )
