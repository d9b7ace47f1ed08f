"""docs/routing.md: proxy.path_prefix, the service's own prefix, and "/" for paths as they are."""

from __future__ import annotations

import textwrap

import pytest
import requests

from support.net import wait_until
from support.proxy import SERVERS
from wsgiproxy.errors import ConfigError, NotFound
from wsgiproxy.route_table import RouteTable
from wsgiproxy.routes_file import parse_routes_text
from wsgiproxy.settings import load_settings


class NoChannels:
    def channel(self, service, policy):
        return service

    def retire(self, domains):
        pass


def table(text: str) -> RouteTable:
    routes = parse_routes_text(textwrap.dedent(text))
    return RouteTable.build(routes, load_settings(lambda name, default=None: default),
                            NoChannels())


FILE = """\
    proxy:
      listen: {address: 127.0.0.1, port: 8080}
      %s
      services:
        - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}
        - {name: b, domain: b.test, path_prefix: /, hosts: [{address: 127.0.0.1, port: 1}]}
        - {name: c, domain: c.test, path_prefix: /api/v2/,
           hosts: [{address: 127.0.0.1, port: 1}]}
"""


@pytest.mark.parametrize(("top", "host", "target", "forwarded"), [
    pytest.param("", "a.test", "/proxy/x?y=1", "/x?y=1", id="default /proxy/"),
    pytest.param("", "a.test", "/proxy/", "/", id="default, the root"),
    pytest.param("", "b.test", "/x/%2F?y", "/x/%2F?y", id="/ forwards every path as it is"),
    pytest.param("", "b.test", "/proxy/x", "/proxy/x", id="/ keeps /proxy/ too"),
    pytest.param("", "c.test", "/api/v2/users", "/users", id="a service's own prefix"),
    pytest.param("path_prefix: /edge/", "a.test", "/edge/x", "/x", id="proxy.path_prefix"),
    pytest.param("path_prefix: /edge/", "b.test", "/edge/x", "/edge/x",
                 id="a service's own wins over proxy.path_prefix"),
    pytest.param("path_prefix: /", "a.test", "/x", "/x", id="proxy.path_prefix /"),
    pytest.param("", "x", "http://c.test/api/v2/u", "/u", id="absolute-form"),
])
def test_the_prefix_is_cut_off(top, host, target, forwarded):
    assert table(FILE % top).resolve(host, target).target == forwarded


@pytest.mark.parametrize(("top", "host", "target"), [
    pytest.param("", "a.test", "/x", id="default: outside /proxy/"),
    pytest.param("", "c.test", "/proxy/x", id="a service's own prefix replaces /proxy/"),
    pytest.param("", "c.test", "/api/v2", id="prefix without its last slash"),
    pytest.param("path_prefix: /edge/", "a.test", "/proxy/x", id="proxy.path_prefix replaces it"),
])
def test_outside_the_prefix_is_404(top, host, target):
    with pytest.raises(NotFound, match=r"only /.*/ paths are proxied"):
        table(FILE % top).resolve(host, target)


@pytest.mark.parametrize("value", ["proxy/", "/proxy", "''", "\"/a b/\"", "\"/a?b/\"", "//"])
def test_a_bad_prefix_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^<routes>: proxy\.services\[0\]\.path_prefix: "
                                          r"must be a path that starts and ends with '/'"):
        parse_routes_text("proxy:\n  listen: {address: 127.0.0.1, port: 8080}\n  services:\n"
                          f"    - {{name: a, domain: a.test, path_prefix: {value},"
                          " hosts: [{address: 127.0.0.1, port: 1}]}\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server", SERVERS)
def test_prefixes_through_a_running_proxy(server, backend, start_proxy):
    """Real sockets: each service's prefix, then proxy.path_prefix by a reload."""
    b = backend()
    proxy = start_proxy({"a.test": [b.port], "b.test": {"hosts": [b.port], "path_prefix": "/"}},
                        server=server)

    def get(host: str, path: str) -> requests.Response:
        return requests.get(proxy.url(path), headers={"Host": host}, timeout=10)

    assert get("a.test", "/proxy/v1/x?q=%2F").json()["target"] == "/v1/x?q=%2F"
    assert get("a.test", "/v1/x").status_code == 404
    assert get("b.test", "/v1/x?q=%2F").json()["target"] == "/v1/x?q=%2F"
    assert get("b.test", "/proxy/v1").json()["target"] == "/proxy/v1"

    text = proxy.routes.read_text().replace("proxy:\n", "proxy:\n  path_prefix: /edge/\n", 1)
    proxy.write_routes({}, text=text)
    proxy.reload()
    wait_until(lambda: get("a.test", "/edge/y").status_code == 200, 10,
               message="proxy.path_prefix in use after the reload")
    assert get("a.test", "/edge/y").json()["target"] == "/y"
    assert get("a.test", "/proxy/y").status_code == 404
    assert get("b.test", "/edge/y").json()["target"] == "/edge/y"  # its own "/" still wins
