"""Time parsing and formatting. UTC everywhere; an input time without an offset is UTC, never server-local.

Accepted inputs (what sfi.py and omni send):
- RFC 3339 / ISO 8601, with or without offset: ``2026-12-01T10:00:00Z``, ``2026-12-01T10:00:00+02:00``,
  ``2026-12-01T10:00`` (UTC), a date ``2026-12-01`` (midnight UTC);
- epoch seconds as a number or a numeric string: ``1764583200``;
- sfi's shorthands relative to now: ``+5d`` days, ``+3w`` weeks, ``+2m`` months of four weeks (sfi's own meaning),
  and ``+6h`` hours.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from dateutil import parser as dateutil_parser

from sfa_omf.errors import BadArgs

_SHORTHAND = re.compile(r"^\+(\d{1,6})([hdwm])$")
_SHORTHAND_UNITS = {
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "m": timedelta(weeks=4),
}
_EPOCH = re.compile(r"^\d{1,12}(\.\d+)?$")


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_time(value: str | int | float | datetime, now: datetime | None = None) -> datetime:
    """Parse a time as the clients send it; return an aware UTC datetime. Raise BadArgs with the accepted forms."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, bool):
        raise BadArgs(f"{value!r} is not a time")
    if isinstance(value, int | float):
        return _from_epoch(value)
    text = value.strip()
    shorthand = _SHORTHAND.match(text)
    if shorthand:
        count, unit = int(shorthand.group(1)), shorthand.group(2)
        return as_utc(now or utcnow()) + count * _SHORTHAND_UNITS[unit]
    if _EPOCH.match(text):
        return _from_epoch(float(text))
    try:
        parsed = dateutil_parser.isoparse(text)
    except (ValueError, OverflowError) as exc:
        raise BadArgs(
            f"cannot read {text!r} as a time: use RFC 3339 (2026-12-01T10:00:00Z), a date (2026-12-01), "
            "epoch seconds, or +Nh/+Nd/+Nw/+Nm"
        ) from exc
    return as_utc(parsed)


def _from_epoch(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise BadArgs(f"epoch time {seconds!r} is out of range") from exc


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: 2026-12-01T10:00:00Z."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")
