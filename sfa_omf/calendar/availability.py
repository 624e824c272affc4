"""What is free: the next N free windows per node, the earliest common slot, and which nodes are busy now.

Each answer costs two queries whatever the number of nodes (the nodes, then every held window in the range, ordered
by node and start); the gaps are computed in Python by calendar/intervals.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from sfa_omf.calendar.booking import BookingConflict, unknown_nodes_refusal, unusable_why
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.intervals import (
    Interval,
    align_down,
    align_up,
    earliest_common_start,
    earliest_start,
    free_windows,
    is_free,
    merge,
)
from sfa_omf.calendar.models import Node, Pool, Sliver
from sfa_omf.calendar.policy import human_duration
from sfa_omf.calendar.queries import from_s, held_windows, to_s
from sfa_omf.calendar.records import Conflict, FreeWindow
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time


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
        before this moment (the slice credential's expiry) rather than refused for outliving the slice. When the
        earliest slot starts too late for that (without from_now: at or after ``ends_by``), the nodes' bookings are
        the cause, not the request: refused as a conflict (BOOKING_CONFLICT) naming the nodes, until when they are
        booked and how far to renew the slice, never handed on to be refused for outliving the slice.
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
        expires_s = None if ends_by is None else to_s(ends_by)
        starts_by_s = expires_s if latest_s is None else latest_s  # (from now: before the cut, or nothing is left)
        if expires_s is not None and starts_by_s is not None and start_s >= starts_by_s:
            slot, limits = (start_s, start_s + duration), (starts_by_s, expires_s)
            if nodes is None:
                what = f" of hardware type {hardware_type!r}" if hardware_type else ""
                raise GeniError(
                    Reason.BOOKING_CONFLICT,
                    f"nothing was booked: the earliest slot where {needed} usable node(s){what} are free is "
                    f"{_slot_words(slot)}, {_too_late(slot, expires_s, grain)}; renew the slice at its authority "
                    f"until {format_time(from_s(slot[1]))} or later, or ask for fewer nodes",
                )
            held = {row.component_id: merge(busy.get(row.id, [])) for row in candidates}
            # A node free for the first, partial slot (from now) is not what keeps the slot late.
            first = (after_s, cut(after_s, align_up(after_s + duration_s, grain)))
            free_first = {name for name, merged in held.items() if from_now and is_free(merged, first)}
            raise _free_only_too_late(held, free_first, (after_s, duration_s), slot, limits, grain)
        return CommonSlot(start=from_s(start_s), end=from_s(cut(start_s, start_s + duration)), nodes=tuple(chosen))


def _slot_words(slot: Interval) -> str:
    return f"{format_time(from_s(slot[0]))}..{format_time(from_s(slot[1]))}"


def _too_late(slot: Interval, expires_s: int, grain: int) -> str:
    """Why a slot starting at ``slot[0]`` does not fit the slice's time: it starts after the credential expires, or
    too close to it for one whole slot."""
    expiry = format_time(from_s(expires_s))
    if slot[0] >= expires_s:
        return f"after the slice credential expires ({expiry})"
    return f"too close to when the slice credential expires ({expiry}) for a slot of {human_duration(grain)} to fit"


def _free_only_too_late(
    held: Mapping[str, list[Interval]],
    free_first: set[str],
    asked: Interval,
    slot: Interval,
    limits: Interval,
    grain: int,
) -> BookingConflict:
    """The refusal of an earliest slot (``slot``) that starts too late for the slice credential, by the named nodes
    (``held``: their merged held windows, by component id; ``free_first``: those free for a first slot from now) that
    keep it there. ``asked``: after when, for how long; ``limits``: the last moment a slot may start (the last
    boundary before the expiry, or the expiry) and the credential's expiry. Each node whose own earliest free slot
    starts too late is named with that slot and what would let it be booked (a best-effort request reports the
    refusal per node: each says it all); when no node alone is the cause (their free times do not meet before),
    every node held before the slot is named, with a note."""
    after_s, duration_s = asked
    limit_s, expires_s = limits
    duration = slot[1] - slot[0]
    window = (from_s(after_s), from_s(after_s + duration_s))
    late: list[Conflict] = []
    for name, merged in sorted(held.items()):
        start_s = earliest_start(merged, after_s, duration, grain)
        if name not in free_first and start_s >= limit_s:
            own = (start_s, start_s + duration)
            late.append(
                Conflict(
                    name,
                    *window,
                    f"is booked until {format_time(from_s(start_s))}, {_too_late(own, expires_s, grain)}: its "
                    f"earliest free slot is {_slot_words(own)}; renew the slice at its authority until "
                    f"{format_time(from_s(own[1]))} or later, or pick another node",
                )
            )
    if late:
        return BookingConflict(late)
    before = [
        Conflict(
            name,
            *window,
            "is booked",
            clashing=tuple((from_s(a), from_s(b)) for a, b in merged if b > after_s and a < slot[0]),
        )
        for name, merged in sorted(held.items())
        if any(b > after_s and a < slot[0] for a, b in merged)
    ]
    return BookingConflict(
        before,
        note=f"the earliest slot where these nodes are all free is {_slot_words(slot)}, "
        f"{_too_late(slot, expires_s, grain)}; renew the slice at its authority until "
        f"{format_time(from_s(slot[1]))} or later, or pick other nodes",
    )
