"""Logging set-up: the application log on stderr at LOG_LEVEL."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: str) -> None:
    """Application log lines on stderr; idempotent (gunicorn workers call it too)."""
    root = logging.getLogger("wsgiproxy")
    root.setLevel(level)
    if not any(getattr(h, "_wsgiproxy", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
        handler._wsgiproxy = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
