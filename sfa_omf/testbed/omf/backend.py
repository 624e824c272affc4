"""The OMF 6 testbed backend (``[sfa_aggregate] type = omf``).

On an OMF 6 (NITOS-style) testbed the broker does not reserve anything on the nodes: the testbed's resource
controllers (cm_factory, frisbee_factory) ask the broker's inventory, on every request, whether the signer's account
holds an active lease on the node (``GET /resources/nodes?name=``), and refuse otherwise. So the calendar is the
reservation, and the inventory (inventory.py, rest.py) answers those questions.

What Provision adds, when ``[sfa_frcp] amqp_url`` names the testbed's AMQP broker: the slice's accounts are created
through user_factory, each with its certificate (the account name in emailAddress) and its users' SSH keys
(accounts.py); geni_update_users sets the keys again. A broker that is down answers UNAVAILABLE (11), a controller
that does not answer TIMEDOUT (8), a controller's refusal ERROR (2) with its words; the booking stays allocated and
Provision may be called again (user_factory's steps are idempotent).

Beyond omf_sfa, with the same broker (slots.py): at each provisioned lease's start the image its slivers name is
loaded through frisbee and cm and its nodes powered on; at its end the nodes are powered off and its keys removed;
every controller error or time-out shows in Status as geni_failed with the controller's words. geni_start,
geni_stop and geni_restart are cm_factory's on, off and reset.

A broker that hangs or a controller that does not answer held every call that asked it for the whole time-out: the
FRCP client has breakers (frcp.py: the broker's and each controller's), so after one time-out the calls that need
that peer answer UNAVAILABLE (11) at once, sending nothing, and the slot passes postpone its work, until the
cool-down (``[sfa_aggregate] backend_cooldown_s``) is over. The gate (sfa_omf/testbed/gate.py) is not given them:
Renew and Delete do not talk to the testbed here (the calendar is the reservation) and go on working while it is
down, and a hung cm_factory does not stop Provision's user_factory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sfa_omf.am.states import Operational
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.omf.accounts import AccountCertificates, UserFactory
from sfa_omf.testbed.omf.slots import SlotKeeper
from sfa_omf.testbed.unix_accounts import LocalAccount


class OmfTestbed:
    """An OMF 6 testbed whose controllers enforce the leases the inventory (``/resources``) reports; accounts and
    keys through user_factory, power and images at slot boundaries through cm and frisbee, when there is a broker."""

    name = "omf"
    # Renew and release talk to no testbed here (the inventory and the slot passes read the calendar): the gate
    # (sfa_omf/testbed/gate.py) lets them through without a slot, so hung controllers never make them BUSY. Health
    # reads the slot records in the calendar.
    local_operations = frozenset({"renew", "release", "health"})

    def __init__(
        self,
        user_factory: UserFactory | None = None,
        slots: SlotKeeper | None = None,
        slot_period_s: int = 15,
    ) -> None:
        self.user_factory = user_factory
        self.slots = slots
        self.slot_period_s = slot_period_s

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """The slice's accounts (and the provisioning user's, ``owner``) exist on the testbed with their keys;
        the lease is then what ``/resources/nodes`` reports as active during its slot, and its slot work is due."""
        if self.user_factory is None:
            return
        # The owner without keys of its own in this call (an operator's lease): created, its keys left alone.
        installed = self.slots.with_others_keys(lease.id, accounts) if self.slots is not None else list(accounts)
        self.user_factory.ensure(installed, also=(owner,) if owner else ())
        if self.slots is not None:
            self.slots.provisioned(lease, accounts)

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """The inventory and the slot work read the calendar's new end: nothing to tell the controllers."""

    def release(self, lease: LeaseRecord) -> None:
        """The lease leaves the inventory's active leases with the calendar: the controllers refuse from then on;
        the next slot pass powers its nodes off and removes its keys. A lease that was never provisioned (a
        Provision that failed later) forgets its record."""
        if self.slots is not None and lease.state == "allocated":
            self.slots.records.forget(lease.id)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        """From the lease's slot work when there is a broker; else ready during the slot (the controllers accept
        the account's requests), not ready before or after it or after a stop."""
        if self.slots is not None:
            known = self.slots.health(sliver, lease, now)
            if known is not None:
                return known
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        return SliverHealth(Operational.READY if lease.start <= now < lease.end else Operational.NOTREADY)

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """Each account's authorized_keys becomes exactly its keys plus those other live leases installed for the
        same login (user_factory's auth_keys overwrites the file); a login the lease no longer has keeps only those
        other live leases' keys (or is closed under per-slice)."""
        if self.user_factory is not None:
            installed = self.slots.with_others_keys(lease.id, accounts) if self.slots is not None else list(accounts)
            self.user_factory.set_keys(installed)
            if self.slots is not None:
                self.slots.users_updated(lease, accounts)

    def operate(self, leases: Sequence[LeaseRecord], action: str) -> None:
        """geni_start, geni_stop, geni_restart: cm_factory's on, off, reset on the leases' nodes (GeniError naming
        each node that failed)."""
        if self.slots is not None:
            wanted = {sliver.node for lease in leases for sliver in lease.slivers}
            self.slots.operate(leases, action, self.slots.records.node_names(wanted))

    def background_tasks(self) -> Sequence[BackgroundTask]:
        """The slot boundaries' pass, when there is a broker."""
        if self.slots is None:
            return ()
        return (BackgroundTask("OMF slot boundaries", self.slot_period_s, self.slots.run),)


def make_omf_backend(settings: Any, database: Database | None = None) -> OmfTestbed:
    """The backend ``[sfa_aggregate] type = omf`` names: with ``[sfa_frcp] amqp_url``, an FRCP client signing with
    the aggregate's key (a certificate from the local authority with ``[sfa_frcp] account`` in its emailAddress)
    and believing informs signed by the testbed's controllers only (``[sfa_frcp] controllers``, by default the
    authority's own certificates; under the trusted roots); with the calendar's ``database``, the slot boundaries'
    work too."""
    if settings is None or not getattr(settings, "frcp_amqp_url", ""):
        return OmfTestbed()
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.testbed.gate import COOLDOWN_S, CircuitBreaker
    from sfa_omf.testbed.omf.controllers import Controllers
    from sfa_omf.testbed.omf.frcp import ControllerSigners, FrcpClient, SignatureChecker
    from sfa_omf.testbed.omf.slot_records import SlotRecords
    from sfa_omf.times import utcnow
    from sfa_omf.trust.gid import load_gid_chain_file
    from sfa_omf.trust.pki import load_private_key_file
    from sfa_omf.trust.roots import load_trusted_roots

    aggregate_dir = os.path.join(settings.data_dir, "aggregate")
    aggregate_urn = load_gid_chain_file(os.path.join(aggregate_dir, "am.gid"))[0].urn or ""
    authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    certificates = AccountCertificates(authority.key, authority.chain, settings.interface_hrn, settings.hostname)
    # The aggregate's key, with a certificate from the local authority naming the FRCP account in emailAddress.
    signer = certificates.signer(
        settings.frcp_account, load_private_key_file(os.path.join(aggregate_dir, "am.pkey")), aggregate_urn
    )
    client = FrcpClient(
        settings.frcp_amqp_url,
        signer=signer,
        # Not every trusted chain: the local authority certifies the slices' accounts too, whose keys their users
        # read; only the controllers answer.
        checker=SignatureChecker(
            load_trusted_roots(settings.trusted_roots_dir),
            controllers=ControllerSigners(settings.interface_hrn, settings.frcp_controller_urns),
        ),
        timeout_s=settings.frcp_timeout_s,
        # The aggregate's client's breakers (the broker's, each controller's): its calls and the slot passes all
        # stop asking a hung broker or controller.
        breakers=functools.partial(CircuitBreaker, cooldown_s=getattr(settings, "backend_cooldown_s", COOLDOWN_S)),
    )
    user_factory = UserFactory(client, settings.frcp_user_factory, certificates)
    if database is None:
        return OmfTestbed(user_factory)
    controllers = None
    if settings.frcp_cm_factory:
        controllers = Controllers(
            client,
            settings.frcp_cm_factory,
            settings.frcp_frisbee_factory,
            settings.frcp_boot_timeout_s,
            settings.frcp_foreign_error_grace_s,
        )
    # A claim older than the longest start (PXE, load, boot off PXE, power on) belongs to a process that died.
    stale_after_s = 4 * settings.frcp_boot_timeout_s + 10 * settings.frcp_timeout_s
    slots = SlotKeeper(SlotRecords(database), controllers, user_factory, settings.account_policy, utcnow, stale_after_s)
    return OmfTestbed(user_factory, slots, settings.frcp_slot_period_s)
