"""docs/cache.md's request coalescing as tables, without a socket: the
:class:`~wsgiproxy.cache.coalescing.Coalescer` one worker keeps, driven directly. One
request leads a key, the others follow it (up to the timeout) and are woken when it
releases; a URL whose response could not be stored is not coalesced (hit-for-miss) until
one can be. The same over real sockets is in test_cache_stale.py.

The test process is not monkey-patched, so the followers are real threads, and
``threading.Event`` is the standard library's."""

from __future__ import annotations

import threading
import time

import pytest

from support.net import wait_until
from wsgiproxy.cache.coalescing import Coalescer

A, B = "http://svc.test/a", "http://svc.test/b"


# -- coalesces(): should a miss wait for another request's fetch? ------------------------
@pytest.mark.parametrize(("timeout", "marks", "key", "coalesces"), [
    pytest.param(5.0, [], A, True, id="a key never marked"),
    pytest.param(5.0, [("not_storable", A)], A, False, id="not storable: hit-for-miss"),
    pytest.param(5.0, [("not_storable", A), ("storable", A)], A, True,
                 id="a storable response ends hit-for-miss"),
    pytest.param(5.0, [("storable", A)], A, True, id="storable alone changes nothing"),
    pytest.param(5.0, [("not_storable", B)], A, True, id="another key's mark"),
    pytest.param(5.0, [("not_storable", A), ("not_storable", A), ("storable", A)], A, True,
                 id="marked twice, ended once"),
    pytest.param(0, [], A, False, id="timeout 0: never"),
    pytest.param(0, [("not_storable", A), ("storable", A)], A, False,
                 id="timeout 0: not even when storable"),
])
def test_coalesces(timeout, marks, key, coalesces):
    c = Coalescer(timeout)
    for method, marked in marks:
        getattr(c, method)(marked)
    assert c.coalesces(key) is coalesces


# -- lead / follow / release, one request after another -----------------------------------
LEADER, NONE = "a leader's event", None
STEPS = [
    # (call, key, what it returns); "release" releases the event the key's last lead returned
    pytest.param([("lead", A, LEADER)], id="the first miss leads"),
    pytest.param([("lead", A, LEADER), ("lead", A, NONE)], id="a second lead returns None"),
    pytest.param([("lead", A, LEADER), ("lead", B, LEADER)], id="each key has its own leader"),
    pytest.param([("lead", A, LEADER), ("release", A, NONE), ("lead", A, LEADER)],
                 id="released: the next miss leads again"),
    pytest.param([("follow", A, True)], id="no leader: follow returns at once"),
    pytest.param([("lead", A, LEADER), ("release", A, NONE), ("follow", A, True)],
                 id="follow after the release returns at once"),
    pytest.param([("lead", B, LEADER), ("follow", A, True)],
                 id="another key's leader is not waited for"),
]


@pytest.mark.parametrize("steps", STEPS)
def test_lead_follow_release(steps):
    c = Coalescer(timeout=5.0)
    events: dict[str, threading.Event] = {}
    for call, key, expected in steps:
        if call == "lead":
            done = c.lead(key)
            if expected is LEADER:
                assert isinstance(done, threading.Event)
                assert not done.is_set()
                events[key] = done
            else:
                assert done is None
        elif call == "release":
            c.release(key, events[key])
            assert events[key].is_set()
        else:
            started = time.monotonic()
            assert c.follow(key) is expected
            assert time.monotonic() - started < c.timeout  # it did not wait


def test_a_late_release_keeps_the_next_leaders_claim():
    c = Coalescer(timeout=5.0)
    first = c.lead(A)
    c.release(A, first)
    second = c.lead(A)
    assert second is not None
    c.release(A, first)  # the first fetch's release, once more
    assert c.lead(A) is None  # the second leader still holds the key
    assert not second.is_set()


def test_follow_gives_up_after_the_timeout_when_the_leader_never_releases():
    c = Coalescer(timeout=0.05)
    assert c.lead(A) is not None
    started = time.monotonic()
    assert c.follow(A) is False
    assert time.monotonic() - started >= 0.05
    assert c.lead(A) is None  # the leader still holds it: a follower claims nothing


def _waiting(done: threading.Event) -> int:
    """Threads blocked in ``done.wait()`` now (CPython's Event waits on a Condition)."""
    return len(done._cond._waiters)


def test_release_wakes_every_follower():
    c = Coalescer(timeout=10.0)
    done = c.lead(A)
    assert done is not None
    results: list[bool] = []
    followers = [threading.Thread(target=lambda: results.append(c.follow(A)))
                 for _ in range(3)]
    for t in followers:
        t.start()
    wait_until(lambda: _waiting(done) == 3, 5, message="three followers waiting")
    started = time.monotonic()
    c.release(A, done)
    for t in followers:
        t.join(5)
    assert results == [True, True, True]
    assert time.monotonic() - started < c.timeout  # woken, not timed out
    assert c.lead(A) is not None  # and the key is free for the next miss
