"""What is free: the next N free windows per node, the earliest common slot, and which nodes are busy now.

Each answer costs two queries whatever the number of nodes (the nodes, then every held window in the range, ordered
by node and start); the gaps are computed in Python by calendar/intervals.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from sfa_omf.calendar.booking import BookingConflict, unknown_nodes_refusal, unusable_why
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.intervals import align_down, align_up, earliest_common_start, free_windows, is_free, merge
from sfa_omf.calendar.models import Node, Pool, Sliver
from sfa_omf.calendar.queries import from_s, held_windows, to_s
from sfa_omf.calendar.records import Conflict, FreeWindow
from sfa_omf.errors import GeniError, Reason


@dataclass(frozen=True)
class CommonSlot:
    start: datetime
    end: datetime
    nodes: tuple[str, ...]


class Availability:
    def __init__(self, database: Database) -> None:
        self.database = database

    def free_windows(
        self,
        start: datetime,
        horizon: datetime,
        count: int = 10,
        nodes: Sequence[str] | None = None,
        federated_only: bool = False,
        min_length_s: int | None = None,
    ) -> dict[str, list[FreeWindow]]:
        """For each node (all, or the named ones), its first ``count`` free windows in [start, horizon).

        Windows are aligned to the node's grain and at least min_length_s (default: one grain) long. Nodes in
        maintenance have none.
        """
        start_s, horizon_s = to_s(start), to_s(horizon)
        with self.database.read() as session:
            query = select(Node.id, Node.component_id, Node.grain_s, Node.state).join(Pool)
            if nodes is not None:
                query = query.where(Node.component_id.in_(nodes))
            if federated_only:
                query = query.where(Pool.federated.is_(True))
            node_rows = session.execute(query).all()
            busy = held_windows(session, start_s, horizon_s, None if nodes is None else {r.id for r in node_rows})
        answer: dict[str, list[FreeWindow]] = {}
        for node_id, component_id, grain_s, state in node_rows:
            if state != "usable":
                answer[component_id] = []
                continue
            windows = free_windows(
                merge(busy.get(node_id, [])), start_s, horizon_s, grain_s, min_length_s or grain_s, count
            )
            answer[component_id] = [FreeWindow(from_s(a), from_s(b)) for a, b in windows]
        return answer

    def busy_now(self, now: datetime) -> set[str]:
        """Nodes that a booking holds at this moment (for <available now="false"/>)."""
        now_s = to_s(now)
        with self.database.read() as session:
            rows = session.scalars(
                select(Node.component_id)
                .join(Sliver, Sliver.node_id == Node.id)
                .where(Sliver.holds_node.is_(True), Sliver.start_s <= now_s, Sliver.end_s > now_s)
            )
            return set(rows)

    def earliest_slot(
        self,
        duration_s: int,
        after: datetime,
        nodes: Sequence[str] | None = None,
        hardware_type: str | None = None,
        count: int | None = None,
        from_now: bool = False,
        ends_by: datetime | None = None,
    ) -> CommonSlot:
        """The earliest window of duration_s after ``after`` where the named nodes (all of them), or ``count``
        usable federated nodes of a hardware type, are all free.

        ``from_now``: first try [after, the first grain boundary at least duration_s later) itself, a first partial
        slot (a request with no time is booked from now when its nodes are free); otherwise the earliest whole slots.
        ``ends_by`` (with from_now): the client gave no end either, so the window is cut at the last grain boundary
        before this moment (the slice credential's expiry) rather than refused for outliving the slice.
        """
        after_s = to_s(after)
        with self.database.read() as session:
            query = select(Node.id, Node.component_id, Node.grain_s, Node.state).join(Pool)
            if nodes is not None:
                query = query.where(Node.component_id.in_(nodes))
            else:
                query = query.where(Pool.federated.is_(True), Node.state == "usable")
                if hardware_type is not None:
                    query = query.where(Node.hardware_type == hardware_type)
            candidates = session.execute(query).all()
            busy = held_windows(session, after_s, node_ids={row.id for row in candidates})
        if nodes is not None:
            known = {row.component_id: row for row in candidates}
            missing = [name for name in nodes if name not in known]
            if missing:
                raise unknown_nodes_refusal(missing)
            down = [name for name in nodes if known[name].state != "usable"]
            if down:
                # Refused as a booking of a window on these nodes is (geni_code 7, the same words): whatever form the
                # request takes, a node in maintenance (or lost) is a node that cannot be booked.
                window = (from_s(after_s), from_s(after_s + duration_s))
                raise BookingConflict([Conflict(name, *window, unusable_why(known[name].state)) for name in down])
            needed = len(set(nodes))
        else:
            needed = count or 1
        if len(candidates) < needed:
            what = f"of hardware type {hardware_type!r} " if hardware_type else ""
            raise GeniError(
                Reason.NOT_FOUND, f"only {len(candidates)} usable node(s) {what}exist; {needed} were asked for"
            )
        grain = math.lcm(*(row.grain_s for row in candidates))
        latest_s = align_down(to_s(ends_by), grain) if from_now and ends_by is not None else None

        def cut(start_s: int, end_s: int) -> int:  # a window with no end asked for stops before the slice does
            return min(end_s, latest_s) if latest_s is not None and latest_s > start_s else end_s

        if from_now:
            end_s = cut(after_s, align_up(after_s + duration_s, grain))
            free_now = sorted(
                row.component_id for row in candidates if is_free(merge(busy.get(row.id, [])), (after_s, end_s))
            )
            if len(free_now) >= needed:
                return CommonSlot(start=from_s(after_s), end=from_s(end_s), nodes=tuple(free_now[:needed]))
        duration = align_up(duration_s, grain)
        found = earliest_common_start(
            {row.component_id: busy.get(row.id, []) for row in candidates}, after_s, duration, grain, needed
        )
        assert found is not None  # enough candidates: after the last booking every one is free
        start_s, chosen = found
        return CommonSlot(start=from_s(start_s), end=from_s(cut(start_s, start_s + duration)), nodes=tuple(chosen))
