"""Small shared pieces of the calendar: epoch-second conversions and the one query for held windows."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sfa_omf.calendar.intervals import Interval
from sfa_omf.calendar.models import Sliver


def to_s(moment: datetime) -> int:
    return int(moment.timestamp())


def from_s(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def held_windows(
    session: Session,
    after_s: int,
    before_s: int | None = None,
    node_ids: set[int] | None = None,
    exclude_lease: str | None = None,
) -> dict[int, list[Interval]]:
    """Windows held on each node that end after after_s (and start before before_s), sorted by start.

    One query for any number of nodes (all nodes when node_ids is None).
    """
    query = select(Sliver.node_id, Sliver.start_s, Sliver.end_s).where(
        Sliver.holds_node.is_(True), Sliver.end_s > after_s
    )
    if before_s is not None:
        query = query.where(Sliver.start_s < before_s)
    if node_ids is not None:
        query = query.where(Sliver.node_id.in_(node_ids))
    if exclude_lease is not None:
        query = query.where(Sliver.lease_id != exclude_lease)
    held: dict[int, list[Interval]] = defaultdict(list)
    for node_id, start, end in session.execute(query.order_by(Sliver.node_id, Sliver.start_s)):
        held[node_id].append((start, end))
    return held
