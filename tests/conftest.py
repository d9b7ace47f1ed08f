"""Fixtures: real backends and a real proxy on loopback, cleaned up in ``finally``."""

from __future__ import annotations

import contextlib
import os

import pytest

from support.backends import HTTPBackend, RawBackend, echo
from support.proxy import ProxyProcess
from wsgiproxy.settings import SETTINGS

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
               "https_proxy", "all_proxy", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True, scope="session")
def _clean_environ():
    """The proxy's settings and the client's proxy variables come from the test alone."""
    saved = {}
    for name in [s.name for s in SETTINGS] + list(_PROXY_VARS) + ["WEB_CONCURRENCY", "PORT"]:
        if name in os.environ:
            saved[name] = os.environ.pop(name)
    yield
    os.environ.update(saved)


@pytest.fixture
def backend():
    """Factory: ``backend(respond=None, name="", port=0, tls=None)`` starts an
    :class:`HTTPBackend` (over TLS with an ``ssl.SSLContext``)."""
    with contextlib.ExitStack() as stack:
        def start(respond=None, name: str = "", port: int = 0, tls=None) -> HTTPBackend:
            b = HTTPBackend(respond or echo, name, port, tls)
            return stack.enter_context(b)
        yield start


@pytest.fixture
def raw_backend():
    """Factory: ``raw_backend(handle)`` starts a :class:`RawBackend`."""
    with contextlib.ExitStack() as stack:
        yield lambda handle: stack.enter_context(RawBackend(handle))


@pytest.fixture
def start_proxy(tmp_path):
    """Factory: ``start_proxy(services, server="pywsgi", env=None, ...)`` starts a
    :class:`ProxyProcess` of this test's own, stopped when the test ends. (A module
    that shares one running proxy between its tests names that fixture ``shared_proxy``.)"""
    started: list[ProxyProcess] = []

    def start(services, *, wait: bool = True, **kw) -> ProxyProcess:
        p = ProxyProcess(tmp_path / "proxy", services, **kw)
        started.append(p)
        return p.start(wait=wait)

    try:
        yield start
    finally:
        for p in started:
            p.stop()
