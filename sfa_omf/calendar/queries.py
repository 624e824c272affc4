"""Small shared pieces of the calendar: epoch-second conversions and the one query for held windows."""

from __future__ import annotations

import functools
import zlib
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Connection, Select, Table, bindparam, func, select
from sqlalchemy.orm import Session

from sfa_omf.calendar.intervals import Interval
from sfa_omf.calendar.models import Sliver, UserContact
from sfa_omf.calendar.plain_statements import (
    MAX_LISTED,
    PlainStatement,
    execute_plain,
    listed,
    listed_count,
    listed_values,
)


def table_of(model: Any) -> Table:
    """A mapped class's table, for Core INSERT and UPDATE statements on hot write paths (an ORM-enabled statement
    goes through the ORM's bulk machinery on every execution)."""
    return cast(Table, model.__table__)


def to_s(moment: datetime) -> int:
    return int(moment.timestamp())


def from_s(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def held_windows(
    session: Session | Connection,
    after_s: int,
    before_s: int | None = None,
    node_ids: set[int] | None = None,
    exclude_lease: str | None = None,
) -> dict[int, list[Interval]]:
    """Windows held on each node that end after after_s (and start before before_s), sorted by start.

    One query for any number of nodes (all nodes when node_ids is None), in the unit of work of ``session`` (a
    session, or a connection: ``Database.write_connection``).
    """
    held: dict[int, list[Interval]] = defaultdict(list)
    if node_ids is not None and not node_ids:
        return held
    wanted = sorted(node_ids or ())
    nodes_listed = 0 if node_ids is None else listed_count(wanted)
    query = _held_query(before_s is not None, nodes_listed, exclude_lease is not None)
    parameters = {"after_s": after_s, **listed_values("node_ids", wanted)}
    if before_s is not None:
        parameters["before_s"] = before_s
    if exclude_lease is not None:
        parameters["exclude_lease"] = exclude_lease
    connection = session.connection() if isinstance(session, Session) else session  # plain rows: no ORM needed
    for node_id, start, end in execute_plain(connection, query, parameters):
        held[node_id].append((start, end))
    return held


@functools.lru_cache(maxsize=4 * (MAX_LISTED + 2))
def _held_query(by_before: bool, nodes_listed: int, excluding: bool) -> PlainStatement[Select[int, int, int]]:
    """``held_windows``'s statement for one combination of filters, with bound parameters, built once (every
    booking and availability check runs it; building it cost more than running it). ``nodes_listed``: how many node
    ids it names (``listed_values("node_ids", ...)``), 0 for every node."""
    query = select(Sliver.node_id, Sliver.start_s, Sliver.end_s).where(
        Sliver.holds_node.is_(True), Sliver.end_s > bindparam("after_s")
    )
    if by_before:
        query = query.where(Sliver.start_s < bindparam("before_s"))
    if nodes_listed:
        query = query.where(Sliver.node_id.in_(listed("node_ids", nodes_listed)))
    if excluding:
        query = query.where(Sliver.lease_id != bindparam("exclude_lease"))
    return PlainStatement(query.order_by(Sliver.node_id, Sliver.start_s))


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key of a slice's or a user's URN."""
    return zlib.crc32(name.encode("utf-8"))


# One statement per number of keys (a slice's; a slice's and its booker's), without and with the stored e-mail of a
# caller: PostgreSQL evaluates a select list in order, so the locks are taken in the order given, in one round trip.
_LOCKS = [
    tuple(func.pg_advisory_xact_lock(bindparam(f"key{n}", type_=BigInteger)) for n in range(count)) for count in (1, 2)
]
_STORED_EMAIL = select(UserContact.gid_email).where(UserContact.user_urn == bindparam("contact_urn")).scalar_subquery()
_ADVISORY_LOCKS = [PlainStatement(select(*locks)) for locks in _LOCKS]
_ADVISORY_LOCKS_READING_EMAIL = [PlainStatement(select(*locks, _STORED_EMAIL)) for locks in _LOCKS]


def lock_names(session: Session, *names: str, read_email_of: str = "") -> str | None:
    """Take the advisory locks of these URNs until the end of the transaction, in sorted order (never in a cycle).
    Every unit of work that changes what a slice books or who its users are takes its slice's lock first, so they
    happen one after the other (bookings take their booker's too under a per-user limit). PostgreSQL only: on SQLite
    every writer is serialized by BEGIN IMMEDIATE already.

    ``read_email_of``: a user URN whose stored GID e-mail (slices.record_contact) the same round trip reads and
    answers (None: not stored, or not read because there was no lock to take)."""
    keys = [advisory_key(name) for name in sorted(set(names) - {""})]
    if not keys or session.get_bind().dialect.name != "postgresql":
        return None
    parameters: dict[str, Any] = {f"key{n}": key for n, key in enumerate(keys)}
    if not read_email_of:
        execute_plain(session.connection(), _ADVISORY_LOCKS[len(keys) - 1], parameters)  # plain rows: no ORM needed
        return None
    rows = execute_plain(
        session.connection(), _ADVISORY_LOCKS_READING_EMAIL[len(keys) - 1], {**parameters, "contact_urn": read_email_of}
    )
    stored = rows[0][-1]
    return None if stored is None else str(stored)


def lock_slice(session: Session, slice_urn: str) -> None:
    """The slice's advisory lock (``lock_names``), as bookings of the slice take it."""
    lock_names(session, slice_urn)
