"""Date and time functions of ``${…}`` expressions (pure; ``zoneinfo`` for the zones).

A *date value* is an ISO 8601 text (``2026-03-29T03:30:00+02:00``, ``2026-03-29``,
``…Z``) or a number of Unix epoch **milliseconds** (what ``now_ms()`` gives). Results are
ISO 8601 texts with the offset of their zone (UTC written ``Z``), so they compose.

* A text without an offset is wall-clock time in the function's ``zone`` (default UTC).
* A wall-clock time that does not exist (inside a spring-forward gap) moves forward by
  the gap (02:30 on the day Berlin goes 02:00 -> 03:00 is 03:30 CEST); one that exists
  twice (the repeated fall-back hour) is its first occurrence.
* ``date_add`` adds days, weeks, months and years on the wall clock of ``zone`` (the same
  local time on the next day, 23 or 25 hours later across a DST change); hours, minutes
  and seconds are elapsed time. Month ends clamp (Jan 31 + 1 month = Feb 28/29).

Bad input raises ``ValueError`` (an ``ExpressionEvalError`` for the step); constant
zones, units and durations are checked when the topology loads (``ARG_CHECKS``).
"""

from __future__ import annotations

import calendar
import difflib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

__all__ = ["ARG_CHECKS", "DATE_FUNCS"]

_UNITS = ("second", "minute", "hour", "day", "week", "month", "year")
_ISO_DURATION = re.compile(
    r"^(?P<sign>[-+])?P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?"
    r"(?:(?P<days>\d+)D)?(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_SHORT_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|mo|y|w|d|h|m|s)")
_SHORT_KEYS = {
    "y": "years",
    "mo": "months",
    "w": "weeks",
    "d": "days",
    "h": "hours",
    "m": "minutes",
    "s": "seconds",
    "ms": "millis",
}


def zone(name: Any) -> tzinfo:
    """``ZoneInfo(name)``; ``ValueError`` naming the zone when it is unknown."""
    if name is None or name in {"UTC", "Z"}:
        return UTC
    if not isinstance(name, str):
        raise ValueError(f"a time zone is a name, not {type(name).__name__}")
    return _zone(name)


@lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, available_timezones(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "IANA names, e.g. Europe/Berlin"
        raise ValueError(f"unknown time zone {name!r} ({hint})") from None


def _settle(dt: datetime) -> datetime:
    """An aware datetime whose wall time exists: a time in a DST gap moves forward."""
    if dt.tzinfo is None or dt.tzinfo is UTC:
        return dt
    # fold=0 in a gap reads the wall time with the offset before the change: the
    # round trip through UTC lands the gap's length later
    back = dt.astimezone(UTC).astimezone(dt.tzinfo)
    return back if back.replace(tzinfo=None) != dt.replace(tzinfo=None) else dt


def to_datetime(value: Any, tz: tzinfo = UTC) -> datetime:
    """A date value as an aware datetime (see the module docstring)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a date: {value!r}")
    if isinstance(value, int | float | Decimal):  # epoch ms (an exact number is one too)
        try:
            return datetime.fromtimestamp(float(value) / 1000, UTC)
        except (OverflowError, OSError, ValueError):  # OSError: EOVERFLOW from the C library
            raise ValueError(
                f"{str(value)[:32]} epoch milliseconds is not in the years 1 to 9999"
            ) from None
    if isinstance(value, datetime):
        dt = value
    else:
        s = str(value).strip()
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date: {s[:64]!r}") from None
    if dt.tzinfo is None:
        return _settle(dt.replace(tzinfo=tz))
    return dt


def iso(dt: datetime) -> str:
    """ISO 8601 with offset; UTC as ``Z``; microseconds only when there are some."""
    out = dt.isoformat()
    return out[:-6] + "Z" if out.endswith("+00:00") and dt.tzinfo is UTC else out


def parse_date(value: Any, fmt: Any = None, tz: Any = None) -> str | None:
    """``parse_date(s, format?, zone?)``: ISO 8601 (or a ``strptime`` format) -> ISO text."""
    if value is None or value == "":
        return None
    where = zone(tz)
    if fmt is None or fmt == "":
        dt = to_datetime(value, where)
    else:
        try:
            dt = datetime.strptime(str(value).strip(), str(fmt))
        except ValueError as exc:
            raise ValueError(f"{str(value)[:64]!r} does not match {fmt!r}: {exc}") from None
        dt = _settle(dt.replace(tzinfo=where)) if dt.tzinfo is None else dt
    return iso(dt.astimezone(where) if tz is not None else dt)


def format_date(value: Any, fmt: Any, tz: Any = None) -> str | None:
    """``format_date(d, format, zone?)``: ``strftime`` text of ``d`` (in ``zone``)."""
    if value is None or value == "":
        return None
    dt = to_datetime(value)
    if tz is not None:
        dt = dt.astimezone(zone(tz))
    return dt.strftime(str(fmt))


def to_zone(value: Any, tz: Any) -> str | None:
    """``to_zone(d, zone)``: the same instant, written in ``zone``'s offset."""
    if value is None or value == "":
        return None
    return iso(to_datetime(value).astimezone(zone(tz)))


def parse_duration(text: Any) -> dict[str, float]:
    """``P1DT2H`` (ISO 8601) or ``1d2h30m`` / ``-90s`` / ``1mo`` -> {unit: amount}."""
    s = str(text).strip()
    m = _ISO_DURATION.match(s.upper()) if s.lstrip("+-")[:1] in ("P", "p") else None
    sign = 1.0
    out: dict[str, float] = {}
    if m is not None:
        sign = -1.0 if m.group("sign") == "-" else 1.0
        out = {k: float(v) for k, v in m.groupdict().items() if v is not None and k != "sign"}
    else:
        body = s
        if body[:1] in "+-":
            sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:].strip()
        pos = 0
        for part in _SHORT_PART.finditer(body):
            if part.start() != pos:
                break
            key = _SHORT_KEYS[part.group(2)]
            out[key] = out.get(key, 0.0) + float(part.group(1))
            pos = part.end()
        if not out or pos != len(body):
            raise ValueError(
                f"not a duration: {s[:32]!r} (ISO 8601 like P1DT2H, or 1d, 2h30m, 90s, 1mo)"
            )
    for key in ("years", "months", "weeks", "days"):
        if key in out and out[key] != int(out[key]):
            raise ValueError(f"{key} must be whole in a duration: {s[:32]!r}")
    return {k: sign * v for k, v in out.items()}


def _add_months(dt: datetime, months: int) -> datetime:
    total = dt.year * 12 + dt.month - 1 + months
    year, month = divmod(total, 12)
    day = min(dt.day, calendar.monthrange(year, month + 1)[1])
    return dt.replace(year=year, month=month + 1, day=day)


def date_add(value: Any, duration: Any, tz: Any = None) -> str | None:
    """``date_add(d, duration, zone?)``: calendar parts on zone's wall clock, then time."""
    if value is None or value == "":
        return None
    parts = parse_duration(duration)
    dt = to_datetime(value)
    where = zone(tz) if tz is not None else dt.tzinfo or UTC
    try:
        return iso(_moved(dt, parts, where))
    except (OverflowError, ValueError):  # "year 100002025 is out of range" and the like
        raise ValueError(
            f"{str(value)[:64]} moved by {str(duration)[:32]} is not in the years 1 to 9999"
        ) from None


def _moved(dt: datetime, parts: dict[str, float], where: tzinfo) -> datetime:
    local = dt.astimezone(where)
    months = int(parts.get("years", 0) * 12 + parts.get("months", 0))
    days = int(parts.get("weeks", 0) * 7 + parts.get("days", 0))
    if months or days:
        wall = local.replace(tzinfo=None)
        if months:
            wall = _add_months(wall, months)
        wall += timedelta(days=days)
        local = _settle(wall.replace(tzinfo=where))
    elapsed = timedelta(
        hours=parts.get("hours", 0),
        minutes=parts.get("minutes", 0),
        seconds=parts.get("seconds", 0),
        milliseconds=parts.get("millis", 0),
    )
    if elapsed:
        local = (local.astimezone(UTC) + elapsed).astimezone(where)
    return local


def date_sub(value: Any, duration: Any, tz: Any = None) -> str | None:
    """``date_sub(d, duration, zone?)``: ``date_add`` of the negated duration."""
    d = str(duration).strip()
    return date_add(value, d[1:] if d.startswith("-") else "-" + d.lstrip("+"), tz)


def start_of(value: Any, unit: Any, tz: Any = None) -> str | None:
    """``start_of(d, unit, zone?)``: the first instant of d's hour/day/week (Monday)/
    month/year in ``zone`` (a day starting in a DST gap starts at the gap's end)."""
    if value is None or value == "":
        return None
    u = _unit(unit)
    dt = to_datetime(value)
    where = zone(tz) if tz is not None else dt.tzinfo or UTC
    wall = dt.astimezone(where).replace(tzinfo=None)
    if u == "second":
        wall = wall.replace(microsecond=0)
    elif u == "minute":
        wall = wall.replace(second=0, microsecond=0)
    elif u == "hour":
        wall = wall.replace(minute=0, second=0, microsecond=0)
    else:
        wall = wall.replace(hour=0, minute=0, second=0, microsecond=0)
        if u == "week":
            wall -= timedelta(days=wall.weekday())
        elif u == "month":
            wall = wall.replace(day=1)
        elif u == "year":
            wall = wall.replace(month=1, day=1)
    if u == "hour":  # the repeated hour: keep the occurrence d is in
        local = dt.astimezone(where)
        return iso(_settle(wall.replace(tzinfo=where, fold=local.fold)))
    return iso(_settle(wall.replace(tzinfo=where)))


def date_diff(a: Any, b: Any, unit: Any = "second") -> float | None:
    """``date_diff(a, b, unit?)``: elapsed time b - a in seconds (or minutes … weeks)."""
    if a is None or b is None or a == "" or b == "":
        return None
    u = _unit(unit)
    if u in ("month", "year"):
        raise ValueError("date_diff counts elapsed time: use second … week")
    seconds = (to_datetime(b) - to_datetime(a)).total_seconds()
    size = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}[u]
    return seconds / size


def epoch_ms(value: Any) -> int | None:
    """``epoch_ms(d)``: Unix epoch milliseconds of a date value."""
    if value is None or value == "":
        return None
    return round(to_datetime(value).timestamp() * 1000)


_UNIT_ALIASES = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}


def _unit(unit: Any) -> str:
    u = str(unit).strip().lower()
    u = _UNIT_ALIASES.get(u, u.removesuffix("s"))
    if u not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of: {', '.join(_UNITS)}")
    return u


DATE_FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "parse_date": (parse_date, 1, 3),
    "format_date": (format_date, 2, 3),
    "to_zone": (to_zone, 2, 2),
    "date_add": (date_add, 2, 3),
    "date_sub": (date_sub, 2, 3),
    "start_of": (start_of, 2, 3),
    "date_diff": (date_diff, 2, 3),
    "epoch_ms": (epoch_ms, 1, 1),
}

# argument index -> check, for arguments written as constants (run when the topology loads)
ARG_CHECKS: dict[str, dict[int, Callable[[Any], Any]]] = {
    "parse_date": {2: zone},
    "format_date": {2: zone},
    "to_zone": {1: zone},
    "date_add": {1: parse_duration, 2: zone},
    "date_sub": {1: parse_duration, 2: zone},
    "start_of": {1: _unit, 2: zone},
    "date_diff": {2: _unit},
}
