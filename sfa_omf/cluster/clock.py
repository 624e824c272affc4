"""The host's clock against the database's: several hosts on one PostgreSQL must agree on the time.

The calendar's background tasks compare rows with the clock of the process that runs them (allocations not provisioned
in time, leases past their end): a leader whose clock is ahead would release other hosts' fresh allocations and end
running leases early, and its node could then be booked twice. So the offset of this host's clock to PostgreSQL's is
measured (``measure_offset_s``: ``clock_timestamp()`` against ``time.time()``, half the round trip counted) when
``serve`` starts (preflight: above MAX_OFFSET_S it does not start) and at each leadership check (a process that far
off does not take the lead, and a leader steps down). Above WARN_OFFSET_S it is logged. SQLite: one host, one clock.
"""

from __future__ import annotations

import time
from typing import Any

#: An offset above this is logged as a warning (NTP is not doing its job).
WARN_OFFSET_S = 2.0
#: An offset above this keeps the process from leading (a leader steps down), and ``serve`` from starting.
MAX_OFFSET_S = 30.0
#: The statement whose answer is the database's clock (seconds since the epoch, a float): clock_timestamp(), not
#: now(), which is the start of the transaction.
DATABASE_CLOCK_SQL = "extract(epoch FROM clock_timestamp())"


def offset_from(sent_at: float, database_epoch: float, answered_at: float) -> float:
    """This host's clock minus the database's: the database read its clock about half-way through the round trip
    (``sent_at`` and ``answered_at``: ``time.time()`` before and after)."""
    return (sent_at + answered_at) / 2 - database_epoch


def measure_offset_s(connection: Any) -> float:
    """This host's clock minus the database's, on ``connection`` (a SQLAlchemy connection to PostgreSQL)."""
    from sqlalchemy import text

    sent_at = time.time()
    database_epoch = float(connection.execute(text(f"SELECT {DATABASE_CLOCK_SQL}")).scalar())
    return offset_from(sent_at, database_epoch, time.time())


def describe(offset_s: float) -> str:
    """The offset in words: how far, and which way."""
    return f"this host's clock is {abs(offset_s):.1f} s {'ahead of' if offset_s > 0 else 'behind'} the database's"


def warning_text(offset_s: float) -> str:
    """The warning of an offset above WARN_OFFSET_S (None of the checks refuses yet)."""
    return (
        f"{describe(offset_s)}: fix the time synchronisation of this host and the database's (NTP: chrony or "
        f"systemd-timesyncd); above {MAX_OFFSET_S:g} s this process will not lead the background tasks"
    )


def refusal_text(offset_s: float) -> str:
    """Why a process this far off does not lead, or start (above MAX_OFFSET_S)."""
    return (
        f"{describe(offset_s)}, more than the {MAX_OFFSET_S:g} s allowed: its background tasks would release "
        "allocations and end leases at the wrong time; fix the time synchronisation of this host and the "
        "database's (NTP: chrony or systemd-timesyncd)"
    )
