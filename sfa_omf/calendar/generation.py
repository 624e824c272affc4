"""The calendar's generation: a counter in the database that every writing unit of work bumps in its own
transaction (database.py does it for every ``Database.write()`` that changed something), so that an answer cached
at generation G is known to be current whenever the database still says G — in this process or any other.

Why it is correct on both databases: the bump commits atomically with the write, so a reader that sees G+1 sees the
write too. A reader reads the generation *before* the data it caches; if a write commits in between (PostgreSQL's
read committed), the data is newer than G, and the next reader sees G+1 and rebuilds — a wasted entry, never a stale
one. On SQLite the read transaction is one snapshot.
"""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from sfa_omf.calendar.models import CalendarGeneration

ROW_ID = 1


def read_generation(session: Session) -> int:
    """The calendar's generation now (0 when the counter row does not exist yet)."""
    value = session.scalar(select(CalendarGeneration.value).where(CalendarGeneration.id == ROW_ID))
    return 0 if value is None else value


def bump_generation(session: Session) -> None:
    """Add one to the generation inside the caller's transaction. Run last in a unit of work: on PostgreSQL the row
    stays locked until the commit, so writers queue on it only for the commit itself."""
    done = session.execute(
        update(CalendarGeneration)
        .where(CalendarGeneration.id == ROW_ID)
        .values(value=CalendarGeneration.value + 1)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]  # a schema made without migration 0007's row
        session.execute(insert(CalendarGeneration).values(id=ROW_ID, value=1))
