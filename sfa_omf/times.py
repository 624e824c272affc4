"""Time parsing and formatting. UTC everywhere; an input time without an offset is UTC, never server-local.

Accepted inputs (what sfi.py and omni send):
- RFC 3339 / ISO 8601, with or without offset: ``2026-12-01T10:00:00Z``, ``2026-12-01T10:00:00+02:00``,
  ``2026-12-01T10:00`` (UTC), a date ``2026-12-01`` (midnight UTC);
- ISO 8601 basic form, all digits: ``20261201`` (a date), ``202612011000`` and ``20261201100000`` (date and time,
  UTC); with a T (``20261201T1000``) it is read like any ISO 8601 time;
- epoch seconds as a number, or as a string of 9 to 11 digits (optionally with a fraction) that is not a date of
  the form above: ``1764583200`` (SFA's start_time);
- sfi's shorthands relative to now: ``+5d`` days, ``+3w`` weeks, ``+2m`` months of four weeks (sfi's own meaning),
  and ``+6h`` hours.

Any other all-digit string (``2027``, ``20271301``, ``0``) is refused, with what it would be read as either way: as a
date it is none, and as epoch seconds it would be a moment of 1970 that nobody means. A time that has the form but
cannot be (``2027-02-29``, the leap second ``23:59:60``) is refused saying which part is wrong.
"""

from __future__ import annotations

import calendar
import functools
import logging
import re
import time
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
_DIGITS = re.compile(r"^([0-9]+)(\.[0-9]+)?$")  # ASCII digits only
#: ISO 8601 basic form without a T, by length: YYYYMMDD, YYYYMMDDHHMM, YYYYMMDDHHMMSS.
_COMPACT_LENGTHS = (8, 12, 14)
_COMPACT_FIELDS = ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))  # year, month, day, hour, minute, second
#: An all-digit string of this many digits that is no compact date is epoch seconds: 1973-03-03 up to 5138-11-16
#: (shorter ones read as a moment of 1970 that nobody means; 12 digits would be year 5138 or later, and a 12-digit
#: string that fails to be a date, 202612011260, is a mistyped date, not a moment of the year 8390).
_EPOCH_LENGTHS = range(9, 12)
#: The start of a time in RFC 3339 / ISO 8601 form, to say which part of a well-formed but impossible time is wrong.
_TIME_FIELDS = re.compile(r"^([0-9]{4})-?([0-9]{2})-?([0-9]{2})(?:[T ]([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2}))?)?)?")


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
_ACCEPTED_FORMS = "RFC 3339 (2026-12-01T10:00:00Z), a date (2026-12-01 or 20261201), epoch seconds, or +Nh/+Nd/+Nw/+Nm"


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
    digits = _DIGITS.match(text)
    if digits:
        return _all_digits(text, digits.group(1), fraction=digits.group(2) is not None)
    try:
        parsed = dateutil_parser.isoparse(text)
    except ValueError as exc:
        impossible = _impossible(text)
        if impossible:
            raise BadArgs(f"{text[:80]!r} is not a time: {impossible}") from exc
        raise BadArgs(f"cannot read {text[:80]!r} as a time: use {_ACCEPTED_FORMS}") from exc
    return as_utc(parsed)


def _all_digits(text: str, whole: str, fraction: bool) -> datetime:
    """An all-digit string: a compact ISO 8601 date, else epoch seconds of 9 to 11 digits, else refused naming both
    readings (``20270101`` is 2027-01-01, never 1970-08-23)."""
    compact = _compact_date(whole)
    if compact is not None and not fraction:
        return compact
    if compact is None and len(whole) in _EPOCH_LENGTHS:
        return _from_epoch(float(text))
    if compact is not None:
        as_date = f"the date {format_time(compact)} (which takes no fraction)"
    elif len(whole) in _COMPACT_LENGTHS:
        as_date = "no date (no such month, day or time of day)"
    else:
        as_date = "no date (a compact date has 8, 12 or 14 digits: YYYYMMDD, YYYYMMDDHHMM, YYYYMMDDHHMMSS)"
    try:
        epoch_moment = _from_epoch(float(text))
        as_epoch = format_time(epoch_moment)
        if not EARLIEST <= epoch_moment < LATEST:
            as_epoch += " (out of range: times from 1970 to before 9000)"
    except (OverflowError, OSError, ValueError):
        as_epoch = "out of range"
    why_not_epoch = (
        "a string that is also a date is read as the date"
        if len(whole) in _EPOCH_LENGTHS
        else "epoch seconds are read from 9 to 11 digits only"
    )
    raise BadArgs(
        f"cannot read {text[:40]!r} as a time: as ISO 8601 it is {as_date}; as epoch seconds it would be "
        f"{as_epoch}, but {why_not_epoch}; write the time as 2027-01-01T12:00:00Z (or 20270101T1200Z)"
    )


def _compact_date(whole: str) -> datetime | None:
    """YYYYMMDD[HHMM[SS]] as a UTC datetime; None when ``whole`` is not one (other length, no such day or time)."""
    if len(whole) not in _COMPACT_LENGTHS:
        return None
    padded = whole.ljust(14, "0")  # YYYYMMDD means its midnight, YYYYMMDDHHMM its minute's second 0
    year, month, day, hour, minute, second = (int(padded[start:end]) for start, end in _COMPACT_FIELDS)
    # ISO 8601's 24:00 is the end of the day, the next day's 00:00 (as isoparse reads 20261203T2400).
    end_of_day = (hour, minute, second) == (24, 0, 0)
    try:
        moment = datetime(year, month, day, 0 if end_of_day else hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return moment + timedelta(days=1) if end_of_day else moment


def _impossible(text: str) -> str:
    """What is wrong with a time that has RFC 3339's form but cannot be (``2027-02-29``, ``23:59:60``), "" when it
    is not that."""
    fields = _TIME_FIELDS.match(text)
    if not fields:
        return ""
    year, month, day = (int(part) for part in fields.group(1, 2, 3))
    hour, minute, second = (int(part) if part else 0 for part in fields.group(4, 5, 6))
    if not 1 <= month <= 12:
        return f"no such month: {month:02d} (months are 01 to 12)"
    days = calendar.monthrange(year, month)[1]
    if month == 2 and day == 29 and days == 28:
        return f"no such day: {year} is not a leap year (February {year} has 28 days)"
    if not 1 <= day <= days:
        return f"no such day: {year}-{month:02d} has {days} days"
    if second == 60:
        return "leap seconds are not accepted: write :59 or the next minute's :00"
    if hour > 24 or minute > 59 or second > 59:
        return f"no such time of day: {hour:02d}:{minute:02d}:{second:02d}"
    return ""


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


class UtcLogFormatter(logging.Formatter):
    """Log lines stamped in UTC, ISO 8601 with milliseconds and a Z (2026-12-02T20:08:59.746Z), whatever the
    server's TZ: the same form as every time in the messages beside them."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # logging's name
        """The record's time in UTC: 2026-12-02T20:08:59.746Z."""
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


@functools.lru_cache(maxsize=4096)
def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: 2026-12-01T10:00:00Z. Kept for the last times formatted: a Status
    formats the same few lease times on every poll (strftime costs several times the lookup)."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")
