"""A service's effective settings: its own from the routes file (docs/policy.md), the global
ones (the environment, docs/settings.md) for whatever it does not say. Resolved once per routes
load, so a request reads plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .routes_file import HealthCheck, Service
    from .settings import Settings

__all__ = ["HealthCheckPolicy", "OutlierPolicy", "ServicePolicy", "resolve_policy"]

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
    health_check: HealthCheckPolicy | None = None  # None: its hosts are not probed
    outlier: OutlierPolicy = field(default_factory=lambda: OutlierPolicy(5, 30.0, 50.0))
    retry_on_status: frozenset[int] = frozenset({502, 503, 504})
    retry_budget_percent: float = 20.0
    retry_budget_min_per_second: float = 10.0


@dataclass(frozen=True, slots=True)
class HealthCheckPolicy:
    """How a service's hosts are probed (docs/health.md)."""

    path: str
    interval_seconds: float
    timeout_seconds: float
    healthy_threshold: int
    unhealthy_threshold: int
    expect_status: frozenset[int]


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """When a host answering errors is ejected, and for how long (docs/health.md)."""

    consecutive_5xx: int  # 0: never
    base_ejection_seconds: float
    max_ejection_percent: float


def _health_check(own: HealthCheck | None, settings: Settings) -> HealthCheckPolicy | None:
    if own is None:
        return None
    return HealthCheckPolicy(
        path=_own(own.path, settings.health_check_path),
        interval_seconds=_own(own.interval_seconds, settings.health_check_interval_seconds),
        timeout_seconds=_own(own.timeout_seconds, settings.health_check_timeout_seconds),
        healthy_threshold=_own(own.healthy_threshold, settings.health_check_healthy_threshold),
        unhealthy_threshold=_own(own.unhealthy_threshold,
                                 settings.health_check_unhealthy_threshold),
        expect_status=frozenset(_own(own.expect_status, settings.health_check_expect_status)))


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
        health_check=_health_check(own.health_check, settings),
        outlier=OutlierPolicy(
            _own(own.outlier_consecutive_5xx, settings.outlier_consecutive_5xx),
            _own(own.outlier_base_ejection_seconds, settings.outlier_base_ejection_seconds),
            _own(own.outlier_max_ejection_percent, settings.outlier_max_ejection_percent)),
        retry_on_status=frozenset(_own(own.retry_on_status, settings.retry_on_status)),
        retry_budget_percent=_own(own.retry_budget_percent, settings.retry_budget_percent),
        retry_budget_min_per_second=_own(own.retry_budget_min_per_second,
                                         settings.retry_budget_min_per_second),
    )
