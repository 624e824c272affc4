"""The embedded default backend (SFA_AGGREGATE_TYPE=embedded): it needs no external system. A provisioned sliver is
ready during its slot and not ready before it (or after geni_stop); the calendar alone is the testbed's state.

With the calendar's database it also plans, at Provision, which nodes get the lease's disk image installed under
``[sfa_omf] provisioning_mode`` (sfa_omf/images/provisioning.py): there is no installer on this host, so the plan is
logged and kept in ``deployments`` for the operator and the tests, which is where a real installer would start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime

from sfa_omf.am.states import Operational
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.images.provisioning import ONDEMAND, NodeDeployment, image_left_by_previous_lease, plan_lease
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.unix_accounts import LocalAccount

log = logging.getLogger("sfa_omf.embedded")


class EmbeddedTestbed:
    """The built-in stand-in testbed: the calendar alone is the testbed's state (demo, quickstart, tests)."""

    name = "embedded"
    # Its sliver health is the calendar's view: no thread needed for it in a call answered in the reactor (waits.py).
    local_operations = frozenset({"health"})

    def __init__(self, database: Database | None = None, provisioning_mode: str = ONDEMAND) -> None:
        self.provisioning_mode = provisioning_mode
        self._bookings = Bookings(database) if database is not None else None
        self.deployments: dict[str, tuple[NodeDeployment, ...]] = {}  # lease id -> its plan, per node
        self._lock = threading.Lock()

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """The booking in the calendar is the reservation (accounts: create_accounts); the image plan is made."""
        bookings = self._bookings
        if bookings is None:
            return
        plan = plan_lease(
            self.provisioning_mode,
            lease,
            lambda node: image_left_by_previous_lease(
                lambda name: bookings.leases(node=name, end=lease.start, active_only=False), node, lease
            ),
        )
        with self._lock:
            self.deployments[lease.id] = plan
        for step in plan:
            if step.image:
                log.info(
                    "lease %s: %s %s on %s (%s)",
                    lease.id,
                    "install" if step.reprovision else "keep",
                    step.image,
                    step.node,
                    step.why,
                )

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """The calendar is the reservation: nothing to change."""

    def release(self, lease: LeaseRecord) -> None:
        """Nothing to undo but the plan."""
        with self._lock:
            self.deployments.pop(lease.id, None)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        return SliverHealth(Operational.READY if lease.start <= now < lease.end else Operational.NOTREADY)

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """Keys are kept in the calendar; nothing else to update."""

    def background_tasks(self) -> Sequence[BackgroundTask]:
        return ()
