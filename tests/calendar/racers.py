"""A racer process for test_concurrency: opens its own database connection and books when the barrier opens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sfa_omf.calendar.booking import BookingConflict, Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest
from tests.moment import NOW


def window(round_number: int, contender: int, contenders: int) -> tuple[datetime, datetime]:
    """Contenders' windows in one round all overlap each other pairwise (offsets of 30 min, length contenders/2 h)."""
    start = NOW + timedelta(hours=24 * round_number + 1) + timedelta(minutes=30 * contender)
    return start, start + timedelta(minutes=30 * contenders)


def race(url: str, contender: int, contenders: int, rounds: int, node: str, barrier: Any) -> list[bool]:
    """Book ``node`` once per round, in step with the other racers; return which rounds this racer won."""
    database = Database(url)
    bookings = Bookings(database, clock=lambda: NOW)
    won = []
    try:
        for round_number in range(rounds):
            start, end = window(round_number, contender, contenders)
            barrier.wait(timeout=60)
            try:
                bookings.book(
                    f"urn:publicid:IDN+testbed+slice+racer{contender}",
                    NOW + timedelta(days=60),
                    [BookingRequest(node, start, end)],
                )
                won.append(True)
            except BookingConflict:
                won.append(False)
    finally:
        database.dispose()
    return won
