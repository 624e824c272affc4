"""The embedded backend's clock: a provisioned future slot reads geni_notready until its start, geni_ready while it
runs, and geni_notready after geni_stop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.embedded import EmbeddedTestbed

START = datetime(2026, 12, 1, 10, tzinfo=UTC)
END = START + timedelta(hours=1)


def sliver(operational: str) -> tuple[SliverRecord, LeaseRecord]:
    record = SliverRecord("urn:s", "urn:n", "l", START, END, "geni_provisioned", operational, END)
    return record, LeaseRecord("l", "urn:slice", "", START, END, "provisioned", (record,))


def test_ready_only_during_the_slot() -> None:
    backend = EmbeddedTestbed()
    record, lease = sliver("geni_ready")
    assert backend.health(record, lease, START - timedelta(seconds=1)).operational_state == "geni_notready"
    assert backend.health(record, lease, START).operational_state == "geni_ready"
    assert backend.health(record, lease, END - timedelta(seconds=1)).operational_state == "geni_ready"
    assert backend.health(record, lease, END).operational_state == "geni_notready"
    stopped, stopped_lease = sliver("geni_notready")
    assert backend.health(stopped, stopped_lease, START).operational_state == "geni_notready"
