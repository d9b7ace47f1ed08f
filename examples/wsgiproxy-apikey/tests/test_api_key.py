"""The filter's own tests: no proxy, no sockets (wsgiproxy.filters.testing)."""

from __future__ import annotations

import pytest
from wsgiproxy_apikey import ApiKey, digest

from wsgiproxy.filters import testing

KEYS = {"billing": digest("s3cret"), "reports": digest("other")}


def test_a_known_key_goes_on_as_its_client_name_and_the_key_is_not_forwarded() -> None:
    f = testing.build(ApiKey, {"keys": KEYS})
    request = testing.request(headers={"X-Api-Key": "s3cret", "X-Api-Client": "admin"})
    assert f.on_request(request) is None
    assert request.headers.get("X-Api-Client") == "billing"
    assert "X-Api-Key" not in request.headers


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong"}, {"X-Api-Key": ""}])
def test_a_missing_or_unknown_key_is_401(headers: dict[str, str]) -> None:
    f = testing.build(ApiKey, {"keys": KEYS})
    answer = f.on_request(testing.request(headers=headers))
    assert answer is not None
    assert answer.status == 401
    assert answer.body == b'{"error": "a valid API key is required"}'
    assert ("WWW-Authenticate", 'ApiKey header="X-Api-Key"') in answer.headers


def test_the_header_can_be_another_one() -> None:
    f = testing.build(ApiKey, {"keys": KEYS, "header": "Api-Token"})
    assert f.on_request(testing.request(headers={"Api-Token": "other"})) is None


def test_a_key_written_in_clear_in_the_routes_file_is_refused_at_load() -> None:
    with pytest.raises(testing.ConfigError, match=r"config\.keys\.billing: must be the SHA-256"):
        testing.build(ApiKey, {"keys": {"billing": "s3cret"}})


def test_a_config_without_keys_is_refused_with_the_proxys_message() -> None:
    with pytest.raises(testing.ConfigError, match=r"config\.keys: is required"):
        testing.build(ApiKey, {})


def test_through_a_chain_the_answer_is_what_the_client_gets() -> None:
    out = testing.run([testing.build(ApiKey, {"keys": KEYS})], testing.request())
    assert (out.status, out.source) == (401, "filter")


def test_the_same_key_under_two_names_is_refused() -> None:
    with pytest.raises(testing.ConfigError, match=r"config\.keys\.copy: the same key as"):
        testing.build(ApiKey, {"keys": {"billing": digest("k"), "copy": digest("k")}})


def test_a_let_through_request_is_marked_authenticated_for_the_cache() -> None:
    request = testing.request(headers={"X-Api-Key": "s3cret"})
    assert testing.build(ApiKey, {"keys": KEYS}).on_request(request) is None
    assert request.authenticated
