"""The OMF backend's Renew and Delete talk to no testbed (the inventory and the slot passes read the calendar), so
a gate whose every slot is held by calls hung on the testbed must not refuse them BUSY: they run at once. Provision
and the users' update still wait for a slot and are refused BUSY after the gate's wait."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.gate import BackendGate, GatedBackend
from sfa_omf.testbed.omf.backend import OmfTestbed


def _lease(state: str) -> LeaseRecord:
    start = datetime(2026, 12, 4, 12, tzinfo=UTC)
    end = start + timedelta(hours=1)
    sliver = SliverRecord(
        "urn:publicid:IDN+tb+sliver+l1-n1", "urn:publicid:IDN+tb+node+n1", "l1", start, end,
        "geni_provisioned", "geni_ready", end,
    )  # fmt: skip
    return LeaseRecord("l1", "urn:publicid:IDN+tb+slice+s", "urn:publicid:IDN+tb+user+u", start, end, state,
                       (sliver,))  # fmt: skip


def test_renew_and_release_on_omf_take_no_slot_while_provision_and_user_updates_wait_for_one() -> None:
    gate = BackendGate(1, "the omf testbed", wait_s=0.2)
    backend = GatedBackend(OmfTestbed(), gate)
    lease = _lease("provisioned")
    refused: list[str] = []
    with gate.slot():  # the one slot, held by a call stuck on the testbed
        done = threading.Event()

        def renew_and_release() -> None:
            backend.renew(lease, lease.end + timedelta(hours=1))
            backend.release(lease)
            done.set()

        worker = threading.Thread(target=renew_and_release)
        worker.start()
        worker.join(timeout=60)
        assert done.is_set(), "renew or release was refused or waited for the held slot"
        for operation in (partial(backend.provision, lease, "u", ()), partial(backend.update_users, lease, ())):
            with pytest.raises(GeniError) as refusal:
                operation()
            refused.append(refusal.value.reason.name)
    assert refused == [Reason.BUSY.name, Reason.BUSY.name]
    assert gate.in_use == 0
