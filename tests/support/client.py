"""The test client: a ``requests`` session that ignores the environment's proxies, and
one request through a running proxy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    from .proxy import ProxyProcess

__all__ = ["get", "session"]


def session(host: str | None = None) -> requests.Session:
    """A session with ``trust_env`` off; every request carries ``Host: host`` if given."""
    s = requests.Session()
    s.trust_env = False
    if host is not None:
        s.headers["Host"] = host
    return s


def get(proxy: ProxyProcess, path: str = "/proxy/x", *, host: str | None = None,
        headers: dict[str, str] | None = None, client: requests.Session | None = None,
        method: str = "GET", timeout: float = 20.0, **kw) -> requests.Response:
    """``GET path`` (or ``method``) through ``proxy``, with ``Host: host`` if given, plus
    ``headers``; on ``client`` (whose own headers apply too) or a new :func:`session`.
    ``kw`` goes on to requests (``data``, ``allow_redirects``, ...)."""
    headers = {**({"Host": host} if host is not None else {}), **(headers or {})}
    if client is not None:
        return client.request(method, proxy.url(path), headers=headers, timeout=timeout, **kw)
    with session() as s:
        return s.request(method, proxy.url(path), headers=headers, timeout=timeout, **kw)
