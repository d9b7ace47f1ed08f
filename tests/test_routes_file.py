"""docs/routes-file.md: the routes file, validated into frozen dataclasses, or one line
naming the field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from support.proxy import REPO
from wsgiproxy.errors import ConfigError
from wsgiproxy.routes_file import TLS, Endpoint, Policy, load_routes

GOOD = """
proxy:
  listen: {address: "127.0.0.1", port: 8080}
  services:
    - name: my-service
      domain: My-Service.My-Company.com.
      hosts:
        - {address: "10.0.0.1", port: 9090}
        - {address: "::1", port: 9091}
"""


def write(tmp_path, text: str):
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_example_file_loads():
    routes = load_routes(REPO / "config" / "proxyConfig.yaml")
    assert routes.services[0].domain == "my-service.my-company.com"
    assert len(routes.services[0].hosts) == 3


def test_a_good_file_becomes_frozen_dataclasses(tmp_path):
    routes = load_routes(write(tmp_path, GOOD))
    service = routes.services[0]
    assert routes.listen == Endpoint("127.0.0.1", 8080)
    assert service.domain == "my-service.my-company.com"  # lower case, no trailing dot
    assert [h.netloc for h in service.hosts] == ["10.0.0.1:9090", "[::1]:9091"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        service.name = "other"  # type: ignore[misc]


def test_service_policy_tls_and_weights_are_read(tmp_path):
    routes = load_routes(write(tmp_path, _svc(
        hosts='[{address: "10.0.0.7", port: 9090, weight: 3}, {address: "10.0.0.8", port: 9090}]',
        extra="tls: {server_name: a.internal, verify: false}\n"
              "      timeouts: {connect_seconds: 0.5, read_seconds: 5}\n"
              "      retries: {http: 0, forward: 1}\n"
              "      eject_seconds: 30\n"
              "      max_request_body_bytes: 1048576\n"
              "      cache: {enabled: false}")))
    [service] = routes.services
    assert [h.weight for h in service.hosts] == [3, 1]
    assert service.tls == TLS(verify=False, server_name="a.internal")
    assert service.policy == Policy(connect_timeout_seconds=0.5, read_timeout_seconds=5,
                                    http_retries=0, forward_retries=1, eject_seconds=30,
                                    max_request_body_bytes=1048576, cache_enabled=False)
    assert load_routes(write(tmp_path, _svc(extra="tls: true"))).services[0].tls == TLS()


def _svc(extra: str = "", hosts: str = '[{address: "10.0.0.1", port: 9090}]',
         domain: str = "a.example") -> str:
    return f"""
proxy:
  listen: {{address: "127.0.0.1", port: 8080}}
  services:
    - name: a
      domain: {domain}
      hosts: {hosts}
      {extra}
"""


BAD = [
    pytest.param(_svc(hosts='[{address: "10.0.0.1", port: 70000}]'),
                 "proxy.services[0].hosts[0].port: must be an integer from 1 to 65535",
                 id="port out of range"),
    pytest.param(_svc(hosts='[{address: "10.0.0.1", port: "9090"}]'),
                 "proxy.services[0].hosts[0].port: must be an integer from 1 to 65535",
                 id="port is a string"),
    pytest.param(_svc(hosts='[{address: "10.0.0.1", port: 9090}, {address: "x", port: 0}]'),
                 "proxy.services[0].hosts[1].port: must be an integer from 1 to 65535",
                 id="second host"),
    pytest.param(_svc(hosts="[]"), "proxy.services[0].hosts: must list at least one host",
                 id="empty hosts"),
    pytest.param(_svc(hosts='[{port: 9090}]'), "proxy.services[0].hosts[0].address: is required",
                 id="missing address"),
    pytest.param(_svc(extra="colour: blue"),
                 "proxy.services[0].colour: unknown key (expected one of name, domain, ",
                 id="unknown key"),
    pytest.param(_svc(hosts='[{address: "10.0.0.1", port: 9090, weigth: 2}]'),
                 "proxy.services[0].hosts[0].weigth: unknown key (did you mean 'weight'? "
                 "expected one of address, port, weight)", id="misspelled key"),
    pytest.param("proxy:\n  listen: {address: 127.0.0.1, port: 8080}\n  services:\n"
                 "    - {name: a, domian: a.test, hosts: [{address: x, port: 1}]}\n",
                 "proxy.services[0].domian: unknown key (did you mean 'domain'? expected one "
                 "of name, domain, ", id="misspelled required key"),
    # docs/tls.md and docs/policy.md: every new key has its one line
    pytest.param(_svc(hosts='[{address: "10.0.0.1", port: 9090, weight: 0}]'),
                 "proxy.services[0].hosts[0].weight: must be an integer from 1 to 100",
                 id="weight 0"),
    pytest.param(_svc(hosts='[{address: "10.0.0.1", port: 9090, weight: 101}]'),
                 "proxy.services[0].hosts[0].weight: must be an integer from 1 to 100",
                 id="weight over 100"),
    pytest.param(_svc(extra="tls: yes please"),
                 "proxy.services[0].tls: must be true, false, or a mapping of ca_file, "
                 "server_name, verify, cert_file and key_file", id="tls not a mapping"),
    pytest.param(_svc(extra="tls: {verify: maybe}"),
                 "proxy.services[0].tls.verify: must be true or false", id="tls.verify"),
    pytest.param(_svc(extra="tls: {server_name: 'a b'}"),
                 "proxy.services[0].tls.server_name: must be a host name", id="tls.server_name"),
    pytest.param(_svc(extra="tls: {sni: x}"),
                 "proxy.services[0].tls.sni: unknown key (expected one of ca_file, "
                 "server_name, verify, cert_file, key_file)", id="tls unknown key"),
    pytest.param(_svc(extra="tls: {ca_file: /nonexistent/ca.pem}"),
                 "proxy.services[0].tls.ca_file: cannot load /nonexistent/ca.pem: "
                 "No such file or directory", id="tls.ca_file missing"),
    pytest.param(_svc(extra="tls: {key_file: /k.pem}"),
                 "proxy.services[0].tls.key_file: needs cert_file", id="key without cert"),
    pytest.param(_svc(extra="timeouts: {connect_seconds: 0}"),
                 "proxy.services[0].timeouts.connect_seconds: must be a number of seconds > 0",
                 id="timeouts.connect_seconds"),
    pytest.param(_svc(extra="timeouts: {read_seconds: soon}"),
                 "proxy.services[0].timeouts.read_seconds: must be a number of seconds > 0",
                 id="timeouts.read_seconds"),
    pytest.param(_svc(extra="timeouts: {total: 3}"),
                 "proxy.services[0].timeouts.total: unknown key (expected one of "
                 "connect_seconds, read_seconds)", id="timeouts unknown key"),
    pytest.param(_svc(extra="retries: {http: -1}"),
                 "proxy.services[0].retries.http: must be a whole number >= 0",
                 id="retries.http"),
    pytest.param(_svc(extra="retries: {forward: 1.5}"),
                 "proxy.services[0].retries.forward: must be a whole number >= 0",
                 id="retries.forward"),
    pytest.param(_svc(extra="eject_seconds: -1"),
                 "proxy.services[0].eject_seconds: must be a number of seconds >= 0",
                 id="eject_seconds"),
    pytest.param(_svc(extra="max_request_body_bytes: 1MB"),
                 "proxy.services[0].max_request_body_bytes: must be a whole number of bytes",
                 id="max_request_body_bytes"),
    pytest.param(_svc(extra="cache: {enabled: sometimes}"),
                 "proxy.services[0].cache.enabled: must be true or false", id="cache.enabled"),
    pytest.param(_svc(extra="cache: {ttl_seconds: -5}"),
                 "proxy.services[0].cache.ttl_seconds: must be a number of seconds >= 0",
                 id="cache.ttl_seconds"),
    pytest.param(_svc(domain="'bad domain'"),
                 "proxy.services[0].domain: must be a DNS name such as my-service.my-company.com",
                 id="bad domain"),
    pytest.param("""
proxy:
  listen: {address: "127.0.0.1", port: 8080}
  services:
    - {name: a, domain: a.example, hosts: [{address: "h", port: 1}]}
    - {name: b, domain: A.EXAMPLE., hosts: [{address: "h", port: 2}]}
""", "proxy.services[1].domain: 'A.EXAMPLE.' is already used by proxy.services[0] "
     "(domains are case-insensitive)", id="duplicate domain"),
    pytest.param("proxy:\n  services: []\n", "proxy.listen: is required", id="no listen"),
    pytest.param("- just\n- a list\n", "must be a mapping with a top-level 'proxy' key",
                 id="not a mapping"),
    pytest.param("proxy: {listen: [unclosed\n", "not valid YAML at line 2, column 1",
                 id="not YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_file_names_the_file_and_the_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the routes file "
                                          r"\(No such file or directory\)"):
        load_routes(tmp_path / "nope.yaml")


def test_a_bad_file_stops_startup_with_one_line(tmp_path):
    path = write(tmp_path, _svc(hosts='[{address: "10.0.0.1", port: 70000}]'))
    for argv in ([sys.executable, "-m", "wsgiproxy"],
                 [sys.executable, "-m", "gunicorn", "-k", "gevent", "wsgiproxy:app"]):
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30,
                                env={"PATH": "/usr/bin:/bin", "CONFIGURATION_FILENAME": str(path)})
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"wsgiproxy: {path}: proxy.services[0].hosts[0].port: "
            "must be an integer from 1 to 65535"]
