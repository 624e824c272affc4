"""The calendar's generation: a count, kept in the database, of the units of work that wrote to it (database.py bumps
it in every ``Database.write()`` that changed something, in the same transaction), so that an answer cached at
generation G is known to be current whenever the database still says G — in this process or any other.

Why it is correct on both databases: the bump commits atomically with the write, so a reader that sees G+1 sees the
write too. A reader reads the generation *before* the data it caches; if a write commits in between (PostgreSQL's
read committed), the data is newer than G, and the next reader sees G+1 and rebuilds — a wasted entry, never a stale
one. On SQLite the read transaction is one snapshot.

Sharded, so that writers in parallel do not queue on one row: the count is kept in ``SHARDS`` rows, each unit of
work adds 1 to one row chosen at random (a row it locks until its commit, fsync included: with a single row every
writer of every process waited there for the one before it to commit, measured as nearly all of the database's
waits under concurrent Allocates), and the generation is the sum of the rows, read in one statement. The sum is
still exactly the number of writes committed: one statement reads every row from one snapshot, a later snapshot
sees every transaction an earlier one saw and maybe more, and each of those more added exactly 1 to exactly one row
(rows only grow, are never deleted). So the sum changes if and only if a write committed, as the single row did.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from sqlalchemy import CTE, Connection, Insert, Integer, bindparam, func, literal, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from sfa_omf.calendar.models import CalendarGeneration
from sfa_omf.calendar.plain_statements import PlainStatement, execute_plain
from sfa_omf.calendar.queries import table_of

#: Rows the count is spread over. Two writers collide (one waits for the other's commit) when they pick the same
#: row: with 16 writers bumping at once, each meets another on its row in about 40% of writes with 32 rows,
#: against always with one. Readers sum 32 small rows: microseconds.
SHARDS = 32

_READ = select(func.coalesce(func.sum(CalendarGeneration.value), 0))


def read_generation(session: Session) -> int:
    """The calendar's generation now: the number of writing units of work ever committed (0 for a new database)."""
    return int(session.scalar(_READ) or 0)


def bump_generation(session: Session) -> None:
    """Add one to the generation inside the caller's transaction, in one of its rows (an upsert: migration 0018 makes
    the rows, a database made by ``create_all`` has none). Run last in a unit of work: on PostgreSQL the row stays
    locked until the commit."""
    # On the connection: the unit of work is known to have written already (no event needs to see this statement).
    bump_on(session.connection())


def bump_on(connection: Connection) -> None:
    """``bump_generation`` in the transaction of a unit of work that is a connection (``Database.write_connection``)."""
    execute_plain(connection, _bump_statement(connection.dialect.name), {"shard": random.randint(1, SHARDS)})


@functools.lru_cache(maxsize=2)
def _bump_statement(dialect: str) -> PlainStatement[Insert]:
    """The bump as one upsert with a bound shard, built once per dialect (building costs more than running it)."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(table_of(CalendarGeneration)).values(id=bindparam("shard"), value=1)
    return PlainStatement(
        statement.on_conflict_do_update(index_elements=["id"], set_={"value": table_of(CalendarGeneration).c.value + 1})
    )


def bump_after(written: CTE) -> CTE:
    """The bump as a CTE of one PostgreSQL statement that is a unit of work of its own (``Database.write_alone``):
    one is added if ``written`` (a CTE of the rows the statement wrote) has any row, in the same statement, so in
    the same transaction. Its shard is the bound parameter ``bump_parameters`` gives."""
    table = table_of(CalendarGeneration)
    rows = select(bindparam("generation_shard", type_=Integer), literal(1)).select_from(written).limit(1)
    statement = postgresql_insert(table).from_select(["id", "value"], rows)
    return statement.on_conflict_do_update(index_elements=["id"], set_={"value": table.c.value + 1}).cte("bumped")


def bump_parameters() -> dict[str, Any]:
    """The parameters of a ``bump_after`` CTE: a shard chosen at random, as ``bump_generation`` chooses it."""
    return {"generation_shard": random.randint(1, SHARDS)}
