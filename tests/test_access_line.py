"""The access line is written without ``json.dumps``: it must be the very characters
``json.dumps`` makes of the same fields, whatever the client put in them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from wsgiproxy import logs
from wsgiproxy.exchange import Exchange


def exchange(**fields: object) -> Exchange:
    record = Exchange("4bf92f3577b34da6a3ce929d0e0e4736", "GET", "/small", client="10.0.0.1",
                      received_at=100.0)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def tried(*attempts: tuple[str, str, int]) -> Exchange:
    record = exchange(service="bench", status=attempts[-1][2] or 502)
    for host, outcome, status in attempts:
        record.attempted(host, outcome, status)
    return record


@pytest.mark.parametrize("record", [
    pytest.param(exchange(), id="unrouted, no attempt"),
    pytest.param(tried(("127.0.0.1:8001", "response", 200)), id="one attempt"),
    pytest.param(tried(("127.0.0.1:8001", "refused", 0), ("[::1]:8002", "response", 503)),
                 id="two attempts, IPv6 host"),
    pytest.param(exchange(path='/a"b\\c\u00e9\u2028\x01?q=<&>', method="PURGE",
                          client="[2001:db8::1]", cache="hit", upgrade="websocket",
                          complete=False, bytes_sent=2**40, bytes_received=7),
                 id="quotes, escapes, non-ASCII and control characters"),
])
@pytest.mark.parametrize("finished_at", [100.0, 100.0004999, 123.456789, 1e6])
def test_the_line_is_json_dumps_of_the_fields(record: Exchange, finished_at: float) -> None:
    line = logs.access_line(record, finished_at)
    fields = json.loads(line)
    fields_again = logs.access_fields(record, finished_at)
    fields_again["time"] = fields["time"]  # a clock read apart
    assert line == json.dumps(fields_again) + "\n"


def test_the_time_is_an_iso_instant_in_utc() -> None:
    before = datetime.now(logs.UTC)
    stamp = datetime.fromisoformat(json.loads(logs.access_line(exchange(), 100.0))["time"])
    after = datetime.now(logs.UTC)
    assert stamp.utcoffset() == timedelta(0)
    assert before.replace(microsecond=0) <= stamp <= after
