"""Everything that affects a sliver's GENI states lives here, as tables.

Rules:
1. Allocation state changes only through ALLOCATION_TRANSITIONS: (state, event) -> new state. An event not in the
   table for the current state is refused (``IllegalTransition``, geni_code 1 BADARGS... with the states named).
2. Operational state changes only through OPERATIONAL_TRANSITIONS, for provisioned slivers. PerformOperationalAction
   (geni_start, geni_stop, geni_restart) checks each sliver's state as Status reports it against the table before
   anything acts, and records the state the table gives; geni_update_users and sfa_omf_save_image change no state.
3. A provisioned sliver's operational state also follows its time slot: before the slot it reads geni_notready, the
   slot's start is the event ``slot_started`` (-> geni_configuring while the testbed prepares the node, or straight to
   geni_ready with the embedded backend), its end ``slot_ended`` (-> the sliver is released).
4. An unallocated sliver has operational state geni_pending_allocation, an allocated one too (GENI's rule).
"""

from __future__ import annotations

import enum
from typing import TypeVar

from sfa_omf.errors import GeniError, Reason


class Allocation(enum.StrEnum):
    UNALLOCATED = "geni_unallocated"
    ALLOCATED = "geni_allocated"
    PROVISIONED = "geni_provisioned"


class Operational(enum.StrEnum):
    PENDING_ALLOCATION = "geni_pending_allocation"
    NOTREADY = "geni_notready"
    CONFIGURING = "geni_configuring"
    STOPPING = "geni_stopping"
    READY = "geni_ready"
    READY_BUSY = "geni_ready_busy"
    FAILED = "geni_failed"


class Event(enum.StrEnum):
    ALLOCATE = "allocate"
    PROVISION = "provision"
    RENEW = "renew"
    DELETE = "delete"
    EXPIRE = "expire"  # an allocation not provisioned in time, or a slot that ended
    SLOT_STARTED = "slot_started"
    SLOT_ENDED = "slot_ended"
    BACKEND_READY = "backend_ready"
    BACKEND_FAILED = "backend_failed"
    # PerformOperationalAction
    START = "geni_start"
    STOP = "geni_stop"
    RESTART = "geni_restart"
    UPDATE_USERS = "geni_update_users"
    SAVE_IMAGE = "sfa_omf_save_image"  # snapshot a container into the image repository; no state changes


A, Op, E = Allocation, Operational, Event  # short names keep the tables readable

#: (allocation state, event) -> allocation state.
ALLOCATION_TRANSITIONS: dict[tuple[Allocation, Event], Allocation] = {
    (A.UNALLOCATED, E.ALLOCATE): A.ALLOCATED,
    (A.ALLOCATED, E.PROVISION): A.PROVISIONED,
    (A.ALLOCATED, E.RENEW): A.ALLOCATED,
    (A.PROVISIONED, E.RENEW): A.PROVISIONED,
    (A.ALLOCATED, E.DELETE): A.UNALLOCATED,
    (A.PROVISIONED, E.DELETE): A.UNALLOCATED,
    (A.ALLOCATED, E.EXPIRE): A.UNALLOCATED,
    (A.PROVISIONED, E.EXPIRE): A.UNALLOCATED,
    (A.PROVISIONED, E.SLOT_ENDED): A.UNALLOCATED,
}

#: (operational state, event) -> operational state, for provisioned slivers.
OPERATIONAL_TRANSITIONS: dict[tuple[Operational, Event], Operational] = {
    # The slot's own clock.
    (Op.NOTREADY, E.SLOT_STARTED): Op.CONFIGURING,
    (Op.CONFIGURING, E.BACKEND_READY): Op.READY,
    (Op.CONFIGURING, E.BACKEND_FAILED): Op.FAILED,
    (Op.READY, E.BACKEND_FAILED): Op.FAILED,
    # What the experimenter asks for (PerformOperationalAction checks every sliver it acts on here first).
    # geni_start is accepted on a sliver that runs or is starting, changing nothing: omni, jFed and GENI's acceptance
    # tests call it after every Provision, and here a provisioned sliver comes up by itself at its slot's start.
    # geni_stop and geni_restart need a sliver that runs, is starting or failed: stopping a stopped sliver is refused.
    (Op.READY, E.STOP): Op.NOTREADY,
    (Op.CONFIGURING, E.STOP): Op.NOTREADY,
    (Op.FAILED, E.STOP): Op.NOTREADY,
    (Op.NOTREADY, E.START): Op.CONFIGURING,
    (Op.READY, E.START): Op.READY,
    (Op.CONFIGURING, E.START): Op.CONFIGURING,
    (Op.FAILED, E.START): Op.CONFIGURING,  # try again (a container whose start failed starts as it is)
    (Op.READY, E.RESTART): Op.CONFIGURING,
    (Op.CONFIGURING, E.RESTART): Op.CONFIGURING,
    (Op.FAILED, E.RESTART): Op.CONFIGURING,
    (Op.READY, E.UPDATE_USERS): Op.READY,
    (Op.NOTREADY, E.UPDATE_USERS): Op.NOTREADY,
    (Op.CONFIGURING, E.UPDATE_USERS): Op.CONFIGURING,
}

OPERATIONAL_ACTIONS = frozenset({E.START, E.STOP, E.RESTART, E.UPDATE_USERS, E.SAVE_IMAGE})


class IllegalTransition(GeniError):
    def __init__(self, message: str) -> None:
        super().__init__(Reason.BAD_ARGS, message)


State = TypeVar("State", Allocation, Operational)


def _next(
    table: dict[tuple[State, Event], State], state: State, event: Event, among: frozenset[Event] | None = None
) -> State:
    """``among``: the events a refusal names as possible (default: all of the table's)."""
    try:
        return table[(state, event)]
    except KeyError:
        allowed = sorted(e.value for (s, e) in table if s == state and (among is None or e in among))
        raise IllegalTransition(
            f"cannot {event.value} a sliver that is {state.value} (possible now: {', '.join(allowed) or 'nothing'})"
        ) from None


def next_allocation(state: Allocation, event: Event) -> Allocation:
    """The allocation state after ``event``; IllegalTransition (BADARGS) naming what is possible otherwise."""
    return _next(ALLOCATION_TRANSITIONS, state, event)


def next_operational(state: Operational, event: Event) -> Operational:
    """The operational state after ``event``; IllegalTransition (BADARGS) naming what is possible otherwise (for an
    experimenter's action, the actions possible: the slot's own events are not theirs to ask for)."""
    return _next(OPERATIONAL_TRANSITIONS, state, event, OPERATIONAL_ACTIONS if event in OPERATIONAL_ACTIONS else None)


def operational_action(name: str) -> Event:
    """The event for a PerformOperationalAction name; BADARGS naming the supported ones otherwise."""
    for event in OPERATIONAL_ACTIONS:
        if event.value == name:
            return event
    supported = ", ".join(sorted(event.value for event in OPERATIONAL_ACTIONS))
    raise IllegalTransition(f"operational action {name!r} is not supported here (supported: {supported})")
