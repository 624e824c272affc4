"""Times as sfi.py and omni send them; everything comes back aware and in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from sfa_omf.errors import BadArgs
from sfa_omf.times import format_time, parse_time

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00+02:00", datetime(2026, 12, 1, 8, tzinfo=UTC)),
        ("2026-12-01T10:00:00+00:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),  # no offset: UTC, never local
        ("2026-12-01T10:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("1764583200", datetime(2025, 12, 1, 10, tzinfo=UTC)),
        ("+5d", NOW + timedelta(days=5)),
        ("+3w", NOW + timedelta(weeks=3)),
        ("+2m", NOW + timedelta(weeks=8)),  # sfi's month is four weeks
        ("+6h", NOW + timedelta(hours=6)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_numbers_and_datetimes() -> None:
    assert parse_time(1764583200) == datetime(2025, 12, 1, 10, tzinfo=UTC)
    assert parse_time(datetime(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC)
    paris = timezone(timedelta(hours=1))
    assert parse_time(datetime(2026, 1, 1, 1, tzinfo=paris)) == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["tomorrow", "2026-13-01", "+5y", "", "99999999999999999999"])
def test_bad_times_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(BadArgs) as refusal:
        parse_time(bad)
    assert refusal.value.message


def test_booleans_are_not_times() -> None:
    with pytest.raises(BadArgs):
        parse_time(True)


def test_format_time() -> None:
    assert format_time(datetime(2026, 12, 1, 11, 30, tzinfo=timezone(timedelta(hours=1)))) == "2026-12-01T10:30:00Z"
