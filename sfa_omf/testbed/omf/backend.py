"""The OMF 6 testbed backend (``[sfa_aggregate] type = omf``).

On an OMF 6 (NITOS-style) testbed the broker does not reserve anything on the nodes: the testbed's resource
controllers (cm_factory, frisbee_factory) ask the broker's inventory, on every request, whether the signer's account
holds an active lease on the node (``GET /resources/nodes?name=``), and refuse otherwise. So the calendar is the
reservation, and what makes a booking real is the inventory answering those questions (inventory.py, rest.py).
Accounts and keys through user_factory (FRCP) are the next step and not done here yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sfa_omf.am.states import Operational
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.unix_accounts import LocalAccount


class OmfTestbed:
    """An OMF 6 testbed whose controllers enforce the leases the inventory (``/resources``) reports."""

    name = "omf"

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """The provisioned lease is what ``/resources/nodes`` reports as active during its slot: the controllers
        enforce it. (Accounts through user_factory: not yet.)"""

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """The inventory reads the calendar's new end: nothing to tell the controllers."""

    def release(self, lease: LeaseRecord) -> None:
        """The lease leaves the inventory's active leases with the calendar: the controllers refuse from then on."""

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        """Ready during the slot (the controllers accept the account's requests), not ready before or after a stop."""
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        return SliverHealth(Operational.READY if lease.start <= now < lease.end else Operational.NOTREADY)

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """Keys are kept in the calendar (user_factory's auth_keys: not yet)."""

    def background_tasks(self) -> Sequence[BackgroundTask]:
        """None yet."""
        return ()


def make_omf_backend(settings: Any) -> OmfTestbed:
    """The backend ``[sfa_aggregate] type = omf`` names."""
    return OmfTestbed()
