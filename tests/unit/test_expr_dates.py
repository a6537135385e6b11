"""Date functions of ${...} expressions: parsing, formatting, zones, durations, DST.

The DST cases use both transitions of two zones on each side of the equator's calendar:
Europe/Berlin (2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00) and
America/New_York (2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00), plus
Australia/Sydney (southern hemisphere: 2026-04-05 03:00 -> 02:00, 2026-10-04 02:00 -> 03:00).
"""

from __future__ import annotations

from typing import Any

import pytest

from streamflow.topology.expressions import ExpressionError, ExpressionEvalError, compile_value


def ev(expr: str, **payload: Any) -> Any:
    return compile_value("${" + expr + "}").render({"payload": payload})


# ------------------------------------------------------------------ parse / format / zones


def test_parse_iso_forms() -> None:
    assert ev("parse_date('2026-05-01T10:00:00Z')") == "2026-05-01T10:00:00Z"
    assert ev("parse_date('2026-05-01T10:00:00+02:00')") == "2026-05-01T10:00:00+02:00"
    assert ev("parse_date('2026-05-01')") == "2026-05-01T00:00:00Z"
    assert ev("parse_date('2026-05-01 10:00', null, 'Europe/Berlin')") == (
        "2026-05-01T10:00:00+02:00"
    )
    # an offset in the text wins; the zone then only chooses how the result is written
    assert ev("parse_date('2026-05-01T10:00:00Z', null, 'Asia/Tokyo')") == (
        "2026-05-01T19:00:00+09:00"
    )
    assert ev("parse_date(payload.at)", at=None) is None


def test_parse_with_a_format() -> None:
    assert ev("parse_date('01/05/2026 14:30', '%d/%m/%Y %H:%M', 'Europe/London')") == (
        "2026-05-01T14:30:00+01:00"
    )
    assert ev("parse_date('20260501', '%Y%m%d')") == "2026-05-01T00:00:00Z"
    with pytest.raises(ExpressionEvalError, match="does not match"):
        ev("parse_date('2026-05-01', '%d/%m/%Y')")
    with pytest.raises(ExpressionEvalError, match="not an ISO 8601 date"):
        ev("parse_date(payload.at)", at="yesterday")


def test_epoch_milliseconds_are_dates() -> None:
    assert ev("to_zone(payload.ms, 'UTC')", ms=1_777_629_600_000) == "2026-05-01T10:00:00Z"
    assert ev("epoch_ms('2026-05-01T12:00:00+02:00')") == 1_777_629_600_000
    assert ev("epoch_ms(to_zone(now_ms(), 'Asia/Kolkata'))") > 1_700_000_000_000


def test_format_and_convert() -> None:
    # the BH10 case: a UTC instant as Berlin wall time on the spring-forward day
    assert (
        ev("format_date(payload.at, '%Y-%m-%d %H:%M', 'Europe/Berlin')", at="2026-03-29T01:30:00Z")
        == "2026-03-29 03:30"
    )
    assert (
        ev(
            "format_date(payload.at, '%Y-%m-%d %H:%M %Z', 'Europe/Berlin')",
            at="2026-03-29T00:30:00Z",
        )
        == "2026-03-29 01:30 CET"
    )
    assert ev("to_zone('2026-07-01T12:00:00Z', 'America/New_York')") == (
        "2026-07-01T08:00:00-04:00"
    )
    assert ev("to_zone('2026-01-01T12:00:00Z', 'America/New_York')") == (
        "2026-01-01T07:00:00-05:00"
    )


def test_constant_mistakes_fail_at_load_time() -> None:
    with pytest.raises(ExpressionError, match="'Europe/Berln' \\(did you mean 'Europe/Berlin'"):
        compile_value("${to_zone(payload.at, 'Europe/Berln')}")  # did you mean
    with pytest.raises(ExpressionError, match="not a duration"):
        compile_value("${date_add(payload.at, '3 days')}")
    with pytest.raises(ExpressionError, match="unknown unit 'fortnight'"):
        compile_value("${start_of(payload.at, 'fortnight')}")
    with pytest.raises(ExpressionError, match="takes 2 to 3 argument"):
        compile_value("${format_date(payload.at)}")
    # a zone from the payload is checked per event
    with pytest.raises(ExpressionEvalError, match="unknown time zone"):
        ev("to_zone('2026-01-01T00:00:00Z', payload.tz)", tz="Mars/Olympus")


# ------------------------------------------------------------------ DST transitions

SPRING = [  # zone, the wall time in the gap, where it lands, the day's length in hours
    ("Europe/Berlin", "2026-03-29T02:30:00", "2026-03-29T03:30:00+02:00"),
    ("America/New_York", "2026-03-08T02:30:00", "2026-03-08T03:30:00-04:00"),
    ("Australia/Sydney", "2026-10-04T02:30:00", "2026-10-04T03:30:00+11:00"),
]
AUTUMN = [  # zone, the repeated wall time, its first occurrence
    ("Europe/Berlin", "2026-10-25T02:30:00", "2026-10-25T02:30:00+02:00"),
    ("America/New_York", "2026-11-01T01:30:00", "2026-11-01T01:30:00-04:00"),
    ("Australia/Sydney", "2026-04-05T02:30:00", "2026-04-05T02:30:00+11:00"),
]


@pytest.mark.parametrize(("tz", "wall", "expected"), SPRING)
def test_a_wall_time_in_the_spring_gap_moves_forward(tz: str, wall: str, expected: str) -> None:
    assert ev(f"parse_date('{wall}', null, '{tz}')") == expected


@pytest.mark.parametrize(("tz", "wall", "expected"), AUTUMN)
def test_a_repeated_wall_time_is_its_first_occurrence(tz: str, wall: str, expected: str) -> None:
    assert ev(f"parse_date('{wall}', null, '{tz}')") == expected


@pytest.mark.parametrize(
    ("tz", "before", "next_day", "hours"),
    [
        ("Europe/Berlin", "2026-03-28T12:00:00+01:00", "2026-03-29T12:00:00+02:00", 23),
        ("Europe/Berlin", "2026-10-24T12:00:00+02:00", "2026-10-25T12:00:00+01:00", 25),
        ("America/New_York", "2026-03-07T12:00:00-05:00", "2026-03-08T12:00:00-04:00", 23),
        ("America/New_York", "2026-10-31T12:00:00-04:00", "2026-11-01T12:00:00-05:00", 25),
        ("Australia/Sydney", "2026-04-04T12:00:00+11:00", "2026-04-05T12:00:00+10:00", 25),
        ("Australia/Sydney", "2026-10-03T12:00:00+10:00", "2026-10-04T12:00:00+11:00", 23),
    ],
)
def test_a_day_is_wall_clock_and_24h_is_elapsed(
    tz: str, before: str, next_day: str, hours: int
) -> None:
    assert ev(f"date_add('{before}', '1d', '{tz}')") == next_day
    assert ev(f"date_add('{before}', 'P1D', '{tz}')") == next_day
    assert ev(f"date_diff('{before}', date_add('{before}', '1d', '{tz}'), 'hours')") == hours
    # 24 hours of elapsed time is not the same local time across the change
    after = ev(f"date_add('{before}', '24h', '{tz}')")
    assert after != next_day
    assert ev(f"date_diff('{before}', '{after}', 'h')") == 24
    assert ev(f"date_sub('{next_day}', '1d', '{tz}')") == before


@pytest.mark.parametrize(
    ("tz", "instant", "day_start", "hours_in_day"),
    [
        ("Europe/Berlin", "2026-03-29T20:00:00Z", "2026-03-29T00:00:00+01:00", 23),
        ("Europe/Berlin", "2026-10-25T20:00:00Z", "2026-10-25T00:00:00+02:00", 25),
        ("America/New_York", "2026-03-08T20:00:00Z", "2026-03-08T00:00:00-05:00", 23),
        ("America/New_York", "2026-11-01T20:00:00Z", "2026-11-01T00:00:00-04:00", 25),
    ],
)
def test_start_of_day_on_transition_days(
    tz: str, instant: str, day_start: str, hours_in_day: int
) -> None:
    start = ev(f"start_of('{instant}', 'day', '{tz}')")
    assert start == day_start
    nxt = ev(f"date_add('{start}', '1d', '{tz}')")
    assert ev(f"date_diff('{start}', '{nxt}', 'hour')") == hours_in_day


def test_start_of_hour_in_the_repeated_hour_keeps_its_occurrence() -> None:
    # 02:45 CET (the second 02:xx in Berlin on 2026-10-25) starts at 02:00 CET, not CEST
    assert ev("start_of('2026-10-25T01:45:00Z', 'hour', 'Europe/Berlin')") == (
        "2026-10-25T02:00:00+01:00"
    )
    assert ev("start_of('2026-10-25T00:45:00Z', 'hour', 'Europe/Berlin')") == (
        "2026-10-25T02:00:00+02:00"
    )


def test_start_of_week_month_year() -> None:
    at = "2026-03-29T10:00:00+02:00"  # a Sunday
    assert ev(f"start_of('{at}', 'week', 'Europe/Berlin')") == "2026-03-23T00:00:00+01:00"
    assert ev(f"start_of('{at}', 'month', 'Europe/Berlin')") == "2026-03-01T00:00:00+01:00"
    assert ev(f"start_of('{at}', 'year', 'Europe/Berlin')") == "2026-01-01T00:00:00+01:00"
    # in another zone the same instant can be in another day
    assert ev("start_of('2026-03-01T03:00:00Z', 'month', 'America/New_York')") == (
        "2026-02-01T00:00:00-05:00"
    )


def test_months_clamp_and_negative_durations() -> None:
    assert ev("date_add('2026-01-31T09:00:00Z', '1mo')") == "2026-02-28T09:00:00Z"
    assert ev("date_add('2028-01-31T09:00:00Z', 'P1M')") == "2028-02-29T09:00:00Z"
    assert ev("date_add('2026-05-01T00:00:00Z', '-1d12h')") == "2026-04-29T12:00:00Z"
    assert ev("date_sub('2026-05-01T00:00:00Z', 'PT90M')") == "2026-04-30T22:30:00Z"
    assert ev("date_add('2026-05-01T00:00:00Z', '1y2w')") == "2027-05-15T00:00:00Z"
    assert ev("date_add('2026-05-01T00:00:00Z', '250ms')") == "2026-05-01T00:00:00.250000Z"
    with pytest.raises(ExpressionEvalError, match="not a duration"):
        ev("date_add('2026-05-01T00:00:00Z', payload.d)", d="soon")


def test_a_result_keeps_the_offset_of_its_value_without_a_zone() -> None:
    assert ev("date_add('2026-03-28T12:00:00+01:00', '1d')") == "2026-03-29T12:00:00+01:00"


def test_a_day_whose_midnight_falls_in_the_gap() -> None:
    # Sao Paulo skipped 2018-11-04 00:00-01:00: the day starts at 01:00
    assert ev("start_of('2018-11-04T12:00:00Z', 'day', 'America/Sao_Paulo')") == (
        "2018-11-04T01:00:00-02:00"
    )
    assert ev("date_add('2018-11-03T00:00:00-03:00', '1d', 'America/Sao_Paulo')") == (
        "2018-11-04T01:00:00-02:00"
    )


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("format_date(payload.v, '%Y')", 99999999999999999999),  # OSError EOVERFLOW
        ("format_date(payload.v, '%Y')", -99999999999999),  # year -1199
        ("format_date(payload.v, '%Y')", 1.5e300),  # OverflowError
        ("date_add(payload.v, '99999999y')", "2026-03-29T01:30:00Z"),
        ("date_add(payload.v, '-3000y')", "2026-03-29T01:30:00Z"),
        ("date_sub(payload.v, '1d')", "0001-01-01T00:00:00Z"),
    ],
)
def test_dates_out_of_range_fail_with_a_plain_reason(expr: str, value: Any) -> None:
    """No C-library errno or Python overflow text: the reason names the years 1 to 9999."""
    with pytest.raises(ExpressionEvalError, match="not in the years 1 to 9999") as err:
        ev(expr, v=value)
    assert "Errno" not in str(err.value) and "OverflowError" not in str(err.value)


def test_an_exact_number_of_epoch_milliseconds_is_a_date() -> None:
    from decimal import Decimal

    assert ev("format_date(payload.v, '%Y-%m-%d')", v=Decimal("1700000000000.5")) == "2023-11-14"
