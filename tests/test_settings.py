"""docs/settings.md: settings from the environment or .env, defaults, and bad values stopping
start-up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import decouple
import pytest

from support.proxy import REPO
from wsgiproxy.errors import ConfigError
from wsgiproxy.settings import load_settings, settings_table
from wsgiproxy.upstream import RetryPolicy


class _Source(decouple.Config):
    """An explicit settings source: exactly these variables, no environment."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(decouple.RepositoryEmpty())
        self.values = values

    def get(self, option, default=decouple.undefined, cast=decouple.undefined):
        return self.values.get(option, default)


def test_defaults_are_the_spec_table():
    s = load_settings(_Source({}))
    assert s.configuration_filename == Path("config/proxyConfig.yaml")
    assert (s.max_http_retries, s.max_forward_retries) == (2, 2)
    assert s.http_cache_ttl_seconds == 60
    assert s.metrics_addr == ("0.0.0.0", 8090)
    assert s.cache_url == ""
    assert (s.cache_max_entries, s.cache_max_object_bytes) == (10000, 1048576)
    assert (s.upstream_connect_timeout_seconds, s.upstream_read_timeout_seconds) == (2, 30)
    assert s.host_eject_seconds == 10
    assert s.max_request_body_bytes == 10485760
    assert RetryPolicy(s.max_http_retries, s.max_forward_retries).max_attempts == 9


def test_values_are_parsed():
    s = load_settings(_Source({"MAX_HTTP_RETRIES": "0", "HTTP_CACHE_TTL_SECONDS": "1.5",
                               "METRICS_ADDR": "", "CACHE_URL": "redis://127.0.0.1:6379/2",
                               "UPSTREAM_READ_TIMEOUT_SECONDS": "0.25",
                               "LOG_LEVEL": "debug"}))
    assert s.max_http_retries == 0
    assert s.http_cache_ttl_seconds == 1.5
    assert s.metrics_addr is None
    assert s.cache_url == "redis://127.0.0.1:6379/2"
    assert s.upstream_read_timeout_seconds == 0.25
    assert s.log_level == "DEBUG"


def test_environment_wins_over_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MAX_HTTP_RETRIES=5\nMAX_FORWARD_RETRIES=7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAX_FORWARD_RETRIES", "1")
    s = load_settings()
    assert s.max_http_retries == 5  # from .env
    assert s.max_forward_retries == 1  # the environment wins


@pytest.mark.parametrize(("name", "value"), [
    pytest.param("MAX_HTTP_RETRIES", "two", id="not a number"),
    pytest.param("MAX_FORWARD_RETRIES", "-1", id="negative"),
    pytest.param("HTTP_CACHE_TTL_SECONDS", "soon", id="not seconds"),
    pytest.param("HTTP_CACHE_TTL_SECONDS", "-5", id="negative seconds"),
    pytest.param("UPSTREAM_CONNECT_TIMEOUT_SECONDS", "0", id="zero timeout"),
    pytest.param("UPSTREAM_READ_TIMEOUT_SECONDS", "nan", id="nan timeout"),
    pytest.param("CACHE_MAX_ENTRIES", "0", id="empty LRU"),
    pytest.param("CACHE_URL", "memcached://127.0.0.1:11211", id="unknown scheme"),
    pytest.param("METRICS_ADDR", "localhost", id="no port"),
    pytest.param("METRICS_ADDR", ":99999", id="port out of range"),
    pytest.param("MAX_REQUEST_BODY_BYTES", "10MB", id="unit suffix"),
    pytest.param("LOG_LEVEL", "loud", id="unknown level"),
])
def test_a_bad_value_names_the_setting(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}: .*{re.escape(repr(value))}"):
        load_settings(_Source({name: value}))


def test_a_bad_setting_stops_startup_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "wsgiproxy"], cwd=REPO, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "MAX_HTTP_RETRIES": "lots"}, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["wsgiproxy: MAX_HTTP_RETRIES: must be a whole number >= 0, got 'lots'"]


def test_docs_show_the_settings_table():
    assert settings_table() in (REPO / "docs" / "settings.md").read_text(), \
        "run: .venv/bin/python scripts/docs_settings.py"
