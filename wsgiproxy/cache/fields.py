"""The header fields a cache reads, parsed as strictly as their specifications say.

* :func:`http_date` — RFC 9110 §5.6.7: IMF-fixdate, the obsolete RFC 850 and asctime
  forms, names in any case, and nothing else (``UTC``, a two-digit year in IMF form, a
  missing comma, doubled spaces, ``2:01:18`` are not dates: an ``Expires`` like that
  means already expired).
* :func:`age_seconds` — ``Age``: the first value of the first line; a non-integer is
  ignored.
* :func:`cache_control` — ``Cache-Control``: directive names in any case, quoted
  values, delta-seconds read as integers.
* :func:`targeted_cache_control` — ``CDN-Cache-Control`` (RFC 9213): an RFC 8941
  Dictionary; a field that is not a valid one, or gives a non-integer where a number of
  seconds belongs, is ignored as a whole.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Final

__all__ = ["Directives", "age_seconds", "cache_control", "http_date",
           "targeted_cache_control"]

#: Parsed directives: lower-case name -> value (int for delta-seconds, str, or None).
Directives = dict[str, int | str | None]

_DAYS: Final = "mon|tue|wed|thu|fri|sat|sun"
_LONG_DAYS: Final = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                  "nov", "dec")
_MONTH: Final = "|".join(_MONTHS)
_TIME: Final = r"(\d\d):(\d\d):(\d\d)"
_IMF: Final = re.compile(rf"(?:{_DAYS}), (\d\d) ({_MONTH}) (\d{{4}}) {_TIME} gmt", re.I)
_RFC850: Final = re.compile(rf"(?:{_LONG_DAYS}), (\d\d)-({_MONTH})-(\d\d) {_TIME} gmt", re.I)
_ASCTIME: Final = re.compile(rf"(?:{_DAYS}) ({_MONTH}) ([ \d]\d) {_TIME} (\d{{4}})", re.I)

#: Directives whose value is a number of seconds.
_DELTA_SECONDS: Final = frozenset({"max-age", "s-maxage", "min-fresh", "max-stale",
                                   "stale-while-revalidate", "stale-if-error"})


def _timestamp(year: int, month: str, day: int, hour: int, minute: int,
               second: int) -> float | None:
    try:
        return float(calendar.timegm((year, _MONTHS.index(month.lower()) + 1, day, hour,
                                      minute, second)))
    except (ValueError, OverflowError):
        return None


def http_date(value: str | None, now: float | None = None) -> float | None:
    """Seconds since the epoch of an HTTP-date, or None when absent or not one."""
    if not value:
        return None
    if m := _IMF.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
        return _timestamp(int(year), month, int(day), int(hh), int(mm), int(ss))
    if m := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        # RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is in the past.
        this_year = time.gmtime(now).tm_year
        year = this_year - this_year % 100 + int(yy)
        if year > this_year + 50:
            year -= 100
        return _timestamp(year, month, int(day), int(hh), int(mm), int(ss))
    if m := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
        return _timestamp(int(year), month, int(day.strip()), int(hh), int(mm), int(ss))
    return None


def age_seconds(value: str | None) -> float:
    """The ``Age`` of a response: the first value; 0 when absent or not an integer."""
    if not value:
        return 0.0
    first = value.split(",", 1)[0].strip()
    return float(first) if first.isdigit() else 0.0


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def cache_control(value: str | None) -> Directives:
    """``Cache-Control`` directives (RFC 9111 §5.2); the last of a repeated one wins.

    A delta-seconds directive without a valid number is dropped, as CacheControl's
    parser does; a value is unquoted (``max-age="60"``).
    """
    out: Directives = {}
    if not value:
        return out
    for part in _split_commas(value):
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not sep:
            out[name] = None
            continue
        text = _unquote(raw.strip())
        if name in _DELTA_SECONDS:
            if not text.isdigit():
                continue
            out[name] = int(text)
        else:
            out[name] = text
    return out


def _split_commas(value: str) -> list[str]:
    """Comma-separated members, not splitting inside a quoted string."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


# -- RFC 8941 Dictionary, as much as a cache field needs ---------------------------------
_KEY: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER: Final = re.compile(r"-?\d{1,15}")
_DECIMAL: Final = re.compile(r"-?\d{1,12}\.\d{1,3}")
_TOKEN: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_STRING: Final = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"')
_BYTES: Final = re.compile(r":[A-Za-z0-9+/=]*:")


class _Invalid(ValueError):
    pass


def _bare_item(text: str, pos: int) -> tuple[object, int]:
    for pattern, convert in ((_DECIMAL, float), (_INTEGER, int), (_STRING, _unquote),
                             (_TOKEN, str), (_BYTES, str)):
        m = pattern.match(text, pos)
        if m:
            return convert(m.group(0)), m.end()
    if text.startswith(("?0", "?1"), pos):
        return text[pos + 1] == "1", pos + 2
    raise _Invalid(f"no item at {pos}")


def _parameters(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] == ";":
        pos += 1
        while pos < len(text) and text[pos] == " ":
            pos += 1
        m = _KEY.match(text, pos)
        if not m:
            raise _Invalid("bad parameter key")
        pos = m.end()
        if pos < len(text) and text[pos] == "=":
            _, pos = _bare_item(text, pos + 1)
    return pos


def _member(text: str, pos: int) -> tuple[object, int]:
    if pos < len(text) and text[pos] == "(":  # an inner list: its items do not matter here
        pos += 1
        while True:
            while pos < len(text) and text[pos] == " ":
                pos += 1
            if pos < len(text) and text[pos] == ")":
                return [], _parameters(text, pos + 1)
            _, pos = _bare_item(text, pos)
            pos = _parameters(text, pos)
            if pos >= len(text) or text[pos] not in " )":
                raise _Invalid("bad inner list")
    value, pos = _bare_item(text, pos)
    return value, _parameters(text, pos)


def targeted_cache_control(value: str | None) -> Directives | None:
    """``CDN-Cache-Control`` (RFC 9213) as directives, or None when absent or invalid."""
    if value is None:
        return None
    text = value.strip(" ")
    out: Directives = {}
    pos = 0
    try:
        while pos < len(text):
            m = _KEY.match(text, pos)
            if not m:
                raise _Invalid("bad key")
            key, pos = m.group(0), m.end()
            item: object = True
            if pos < len(text) and text[pos] == "=":
                item, pos = _member(text, pos + 1)
            else:
                pos = _parameters(text, pos)
            if key in _DELTA_SECONDS:
                if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                    raise _Invalid(f"{key} is not a number of seconds")
                out[key] = item
            else:
                out[key] = None if item is True else str(item)
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            if pos == len(text):
                break
            if text[pos] != ",":
                raise _Invalid("expected a comma")
            pos += 1
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            if pos == len(text):
                raise _Invalid("trailing comma")
    except _Invalid:
        return None
    return out
