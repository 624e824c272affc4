"""The sliver state tables: what may happen in each state, and clear refusals for the rest."""

from __future__ import annotations

import pytest

from sfa_omf.am.states import (
    ALLOCATION_TRANSITIONS,
    OPERATIONAL_TRANSITIONS,
    Allocation,
    Event,
    IllegalTransition,
    Operational,
    next_allocation,
    next_operational,
    operational_action,
)
from sfa_omf.errors import GeniCode


def test_lifecycle_of_a_future_slot() -> None:
    state = next_allocation(Allocation.UNALLOCATED, Event.ALLOCATE)
    state = next_allocation(state, Event.PROVISION)
    assert state == Allocation.PROVISIONED
    operational = next_operational(Operational.NOTREADY, Event.SLOT_STARTED)
    operational = next_operational(operational, Event.BACKEND_READY)
    assert operational == Operational.READY
    assert next_allocation(state, Event.SLOT_ENDED) == Allocation.UNALLOCATED


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (Allocation.UNALLOCATED, Event.PROVISION),
        (Allocation.PROVISIONED, Event.PROVISION),
        (Allocation.UNALLOCATED, Event.DELETE),
        (Allocation.PROVISIONED, Event.ALLOCATE),
    ],
)
def test_illegal_allocation_events_are_refused(state: Allocation, event: Event) -> None:
    with pytest.raises(IllegalTransition) as refusal:
        next_allocation(state, event)
    assert refusal.value.code == GeniCode.BADARGS
    assert state.value in refusal.value.message and event.value in refusal.value.message


def test_operational_actions() -> None:
    assert operational_action("geni_stop") == Event.STOP
    assert next_operational(Operational.READY, Event.STOP) == Operational.NOTREADY
    with pytest.raises(IllegalTransition) as refusal:
        next_operational(Operational.NOTREADY, Event.STOP)
    assert "possible now" in refusal.value.message
    for bad in ("", "geni_reboot_everything", "geni_slot_started"):
        with pytest.raises(IllegalTransition) as unknown:
            operational_action(bad)
        assert "geni_start" in unknown.value.message


def test_the_tables_only_reach_known_states() -> None:
    assert set(ALLOCATION_TRANSITIONS.values()) <= set(Allocation)
    assert set(OPERATIONAL_TRANSITIONS.values()) <= set(Operational)
    # Every allocation state but unallocated can be deleted; nothing leaves unallocated but allocate.
    assert {s for (s, e) in ALLOCATION_TRANSITIONS if e == Event.DELETE} == {
        Allocation.ALLOCATED,
        Allocation.PROVISIONED,
    }
    assert {e for (s, e) in ALLOCATION_TRANSITIONS if s == Allocation.UNALLOCATED} == {Event.ALLOCATE}
