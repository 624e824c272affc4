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
import xmlrpc.client
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


#: The range of times accepted anywhere: wide enough for any booking, narrow enough that adding a policy's longest
#: duration can never overflow. A time outside it is a bad argument; a time inside it but beyond what the operator
#: allows is the calendar's policy refusal.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_ACCEPTED_FORMS = "RFC 3339 (2026-12-01T10:00:00Z), a date (2026-12-01), epoch seconds, or +Nh/+Nd/+Nw/+Nm"


def parse_time(value: object, now: datetime | None = None, what: str = "") -> datetime:
    """Parse a time as the clients send it; return an aware UTC datetime between EARLIEST and LATEST.

    Raise BadArgs naming the accepted forms for anything else: another type, unreadable text, or a time out of range
    (never an OverflowError from the arithmetic). ``what`` names the argument in the message.
    """
    try:
        return _bounded(value, now)
    except BadArgs as exc:
        if not what:
            raise
        raise BadArgs(f"{what}: {exc.message}") from exc


def _bounded(value: object, now: datetime | None) -> datetime:
    if isinstance(value, xmlrpc.client.DateTime):  # XML-RPC's dateTime.iso8601, which carries no offset: UTC
        value = value.value
    if isinstance(value, bool) or not isinstance(value, str | int | float | datetime):
        raise BadArgs(f"a time must be a string ({_ACCEPTED_FORMS}), not {type(value).__name__}")
    try:
        moment = _parse(value, now)
    except (OverflowError, OSError, ValueError) as exc:
        raise BadArgs(_out_of_range(value)) from exc
    if not EARLIEST <= moment < LATEST:
        raise BadArgs(_out_of_range(value))
    return moment


def _parse(value: str | int | float | datetime, now: datetime | None) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, int | float):
        return _from_epoch(value)
    text = value.strip()
    if len(text) > 64:  # the longest accepted form is about 35 characters
        raise BadArgs(f"cannot read {text[:40]!r}... as a time: use {_ACCEPTED_FORMS}")
    shorthand = _SHORTHAND.match(text)
    if shorthand:
        count, unit = int(shorthand.group(1)), shorthand.group(2)
        return as_utc(now or utcnow()) + count * _SHORTHAND_UNITS[unit]
    if _EPOCH.match(text):
        return _from_epoch(float(text))
    try:
        parsed = dateutil_parser.isoparse(text)
    except ValueError as exc:
        raise BadArgs(f"cannot read {text[:80]!r} as a time: use {_ACCEPTED_FORMS}") from exc
    return as_utc(parsed)


def _out_of_range(value: object) -> str:
    shown = value.strip()[:80] if isinstance(value, str) else value
    return (
        f"time {shown!r} is out of range: times from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} are accepted "
        "(and the operator's policy limits how far ahead a booking may be)"
    )


def _from_epoch(seconds: float) -> datetime:
    if seconds != seconds:  # NaN compares unequal to itself
        raise BadArgs("epoch time NaN is not a time")
    return datetime.fromtimestamp(seconds, UTC)  # OverflowError/OSError/ValueError: out of range, said by the caller


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: 2026-12-01T10:00:00Z."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")
