"""The filter API's own rules, without sockets (wsgiproxy.filters.testing): what a
filter may and may not set, the chain's order, keys a client cannot spread, and the
canonical client address."""

from __future__ import annotations

import pytest

from wsgiproxy.filters import Answer, Filter, Headers, Request, Response, testing
from wsgiproxy.filters.builtin.rate_limit import RateLimit
from wsgiproxy.filters.chain import Chain, ChainBuilder
from wsgiproxy.filters.loading import build_spec
from wsgiproxy.forwarded import canonical_address
from wsgiproxy.routes_file import _describe


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "nul\x00"])
def test_a_header_value_with_a_line_break_or_control_character_is_refused(value):
    with pytest.raises(ValueError, match="control character"):
        Headers([("X-A", value)])
    with pytest.raises(ValueError, match="control character"):
        Headers().set("X-A", value)


@pytest.mark.parametrize("name", ["Bad Name", "a:b", "", "X-\u00e9"])
def test_a_header_name_that_is_not_a_token_is_refused(name):
    with pytest.raises(ValueError, match="not a header name"):
        Headers().add(name, "v")


def test_views_keep_their_headers_object():
    request = testing.request()
    with pytest.raises(AttributeError):
        request.headers = Headers()  # type: ignore[misc]


@pytest.mark.parametrize("status", [100, 101, 204, 304, 600, "200"])
def test_a_filter_may_not_set_a_status_that_breaks_the_framing(status):
    response = testing.response()
    with pytest.raises(ValueError, match="may set a status"):
        response.status = status


def test_an_answer_without_a_body_status_has_no_body():
    with pytest.raises(ValueError, match="204 answer has no body"):
        Answer(204, b"x")
    assert Answer(204).headers == ()
    assert Answer(200, b"ok", [("X-A", "1")]).headers == (("X-A", "1"),)  # a tuple: hashable
    with pytest.raises(TypeError):
        Answer(200, "text")  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["http://evil/x", "x", "/a b", "/a\r\n", ""])
def test_a_filter_may_only_set_an_origin_form_target(target):
    with pytest.raises(ValueError, match="not an origin-form target"):
        testing.request().target = target


class Mark(Filter):
    def on_request(self, request: Request) -> Answer | None:
        request.state.setdefault("order", []).append(self.config["n"])
        return Answer(403) if self.config.get("answer") else None

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.add("X-Order", str(self.config["n"]))


def test_request_hooks_in_order_response_hooks_in_reverse_and_an_answer_stops_the_rest():
    chain = [testing.build(Mark, {"n": 1}), testing.build(Mark, {"n": 2, "answer": True}),
             testing.build(Mark, {"n": 3})]
    request = testing.request()
    out = testing.run(chain, request)
    assert request.state["order"] == [1, 2]
    assert out.status == 403
    assert out.headers.get_all("X-Order") == ["2", "1"]


def test_a_reload_keeps_an_unchanged_filter_and_rebuilds_one_whose_settings_changed():
    def spec(secret: str):
        return build_spec({"use": "mark", "config": {"n": 1}}, "proxy.filters[0]", "<t>",
                          None, _describe, lambda name, default: secret, cls=Secretive)
    builder = ChainBuilder()
    builder.begin()
    first = builder.chain("svc", [spec("one")], []).filters[0]
    builder.commit()
    builder.begin()
    again = builder.chain("svc", [spec("one")], []).filters[0]
    builder.commit()
    builder.begin()
    rotated = builder.chain("svc", [spec("two")], []).filters[0]
    builder.commit()
    assert again is first
    assert rotated is not first
    assert first.closed
    assert not rotated.closed


class Secretive(Filter):
    def __init__(self, config, context) -> None:
        super().__init__(config, context)
        self.secret = context.setting("SECRET")
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_filter_that_raised_in_on_request_gets_no_later_hook():
    class Raises(Filter):
        completed = False

        def on_request(self, request):
            raise RuntimeError("boom")

        def on_complete(self, request, outcome):
            Raises.completed = True

    run = Chain("svc", [testing.build(Raises)]).start(testing.request())
    with pytest.raises(Exception, match="filter Raises failed"):
        run.on_request()
    run.on_complete(None)  # type: ignore[arg-type]
    assert not Raises.completed


@pytest.mark.parametrize("path", ["/login", "/%6cogin", "//login", "/./login",
                                  "/x/../login", "/login/again"])
def test_a_rate_limit_on_a_path_counts_every_spelling_of_it(path):
    limit = testing.build(RateLimit, {"limit": "1/minute", "path_prefix": "/login"})
    assert limit.on_request(testing.request(target="/login")) is None
    answer = limit.on_request(testing.request(target=path))
    assert answer is not None
    assert answer.status == 429


def test_an_ipv6_client_is_one_key_for_its_whole_64():
    limit = testing.build(RateLimit, {"limit": "1/minute"})
    assert limit.on_request(testing.request(client="2001:db8:1:2::1")) is None
    answer = limit.on_request(testing.request(client="2001:db8:1:2:ffff::9"))
    assert answer is not None
    assert answer.status == 429
    assert limit.on_request(testing.request(client="2001:db8:1:3::1")) is None


def test_head_counts_with_get():
    limit = testing.build(RateLimit, {"limit": "1/minute", "methods": ["GET"]})
    assert limit.on_request(testing.request("GET")) is None
    assert limit.on_request(testing.request("HEAD")) is not None
    assert limit.on_request(testing.request("POST")) is None


@pytest.mark.parametrize(("seen", "client"), [
    ("::ffff:10.0.0.5", "10.0.0.5"), ("10.0.0.5:4711", "10.0.0.5"),
    ("[2001:db8::1]:443", "2001:db8::1"), ("2001:db8::1", "2001:db8::1"),
    ("not an address", "not an address"),
])
def test_client_addresses_are_compared_in_one_form(seen, client):
    assert canonical_address(seen) == client
