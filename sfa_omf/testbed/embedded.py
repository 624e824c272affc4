"""The embedded default backend (SFA_AGGREGATE_TYPE=embedded): it needs no external system. A provisioned sliver is
ready during its slot and not ready before it (or after geni_stop); the calendar alone is the testbed's state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sfa_omf.am.states import Operational
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.unix_accounts import LocalAccount


class EmbeddedTestbed:
    """The built-in stand-in testbed: the calendar alone is the testbed's state (demo, quickstart, tests)."""

    name = "embedded"

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """Nothing to set up: the booking in the calendar is the reservation (accounts: create_accounts)."""

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """The calendar is the reservation: nothing to change."""

    def release(self, lease: LeaseRecord) -> None:
        """Nothing to undo."""

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        return SliverHealth(Operational.READY if lease.start <= now < lease.end else Operational.NOTREADY)

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """Keys are kept in the calendar; nothing else to update."""

    def background_tasks(self) -> Sequence[BackgroundTask]:
        return ()
