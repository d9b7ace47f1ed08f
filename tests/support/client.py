"""The test client: a ``requests`` session that ignores the environment's proxies."""

from __future__ import annotations

import requests

__all__ = ["session"]


def session(host: str | None = None) -> requests.Session:
    """A session with ``trust_env`` off; every request carries ``Host: host`` if given."""
    s = requests.Session()
    s.trust_env = False
    if host is not None:
        s.headers["Host"] = host
    return s
