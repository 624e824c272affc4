"""The aggregate manager's core: one method per AM API v3 call, synchronous, no sockets (sans-IO).

Each method takes plain data (the caller's verified-or-not chain, the call's arguments) and returns the envelope's
``value`` as plain Python data, or raises GeniError. Order inside every method: authorize (trust/), read the request
(rspec/), act on the calendar (calendar/) and the testbed (testbed/), answer (rspec/ writers).
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from rspec.advertisement import lease_view, write_advertisement
from rspec.manifest import write_manifest
from rspec.model import (
    CONTAINER_SLIVER_TYPE,
    AdvertisedNode,
    Advertisement,
    Booking,
    DiskImage,
    FreeWindow,
    Horizon,
    LeaseView,
    Login,
    Manifest,
    ManifestLease,
    ManifestSliver,
    Request,
    RequestLease,
    SliverType,
)
from rspec.parse_request import KnownNode, RequestPolicy, parse_request
from sfa_omf.am.advertiser import Advertiser
from sfa_omf.am.caller_keys import KeyRefusal, RegisteredKeys
from sfa_omf.am.containers import act as act_on_containers
from sfa_omf.am.containers import (
    check_one_node_per_lease,
    check_request,
    node_health,
    node_sliver_of,
    save_image,
    ssh_answering,
)
from sfa_omf.am.containers import manifest_sliver as container_manifest_sliver
from sfa_omf.am.containers import plan as plan_containers
from sfa_omf.am.containers import sliver_dict as container_dict
from sfa_omf.am.credentials import split_credentials
from sfa_omf.am.states import (
    Allocation,
    Event,
    IllegalTransition,
    Operational,
    next_allocation,
    next_operational,
    operational_action,
)
from sfa_omf.am.withdrawals import Withdrawals
from sfa_omf.calendar.availability import Availability, CommonSlot
from sfa_omf.calendar.booking import (
    AlapExtension,
    BookingConflict,
    Bookings,
    HoldEnd,
    ProvisionHold,
    RenewalRead,
    Rounding,
    allocation_expiry_s,
    reach_before_next_booking,
    refuse_expired_allocation,
    unknown_nodes_refusal,
    unusable_why,
)
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import is_source_slice
from sfa_omf.calendar.intervals import align_down, align_up
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.kept_reads import KeptSliceLeases
from sfa_omf.calendar.plain_statements import MAX_LISTED
from sfa_omf.calendar.policy import Policy, human_duration, max_duration_counted_from
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import BookingRequest, Conflict, LeaseRecord, NodeRecord, SliceView, SliverRecord
from sfa_omf.calendar.slices import Contact, Slices
from sfa_omf.errors import BadArgs, GeniError, Reason, TrustError
from sfa_omf.images.catalogue import check_requested_images, node_images
from sfa_omf.images.instances import LIVE, Instance, Instances
from sfa_omf.images.records import ImageRecord
from sfa_omf.images.store import ImageStore
from sfa_omf.notify.alerts import Alerts
from sfa_omf.registry.accounts import Accounts, LeaseLogins, lease_logins
from sfa_omf.registry.records import Records
from sfa_omf.registry.removed_marks import is_removed_mark, may_be_cut, removed_mark_parts
from sfa_omf.testbed.base import OperatingBackend, SliverHealth, TestbedBackend
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.unix_accounts import LocalAccount, UnixAccounts, WrittenKeys
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.credential import same_urn
from sfa_omf.trust.gid import GidChain
from sfa_omf.trust.rights import METHOD_OPERATIONS
from sfa_omf.trust.speaksfor import verify_speaks_for
from sfa_omf.trust.ticket import TicketSlot, issue_ticket
from sfa_omf.trust.verifier import CredentialVerifier, VerifiedCredential
from sfa_omf.waits import blocking, in_reactor_call
from sfa_omf.xrn import check_urn_characters, hrn_to_urn, is_urn, parse_urn

log = logging.getLogger("sfa_omf.am")

GENI_NS = "http://www.geni.net/resources/rspec/3"
#: A Renew refused for these reasons is a "refused renewal" the slice's users are told of (bad arguments are not).
RENEWAL_REFUSALS = frozenset({Reason.POLICY, Reason.BOOKING_CONFLICT})
OL_NS = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
AVAILABILITY_NS = "http://sfa-omf.org/rspec/ext/availability/1"


@dataclass(frozen=True)
class AggregateSettings:
    """What the aggregate says about itself and how it books."""

    authority_hrn: str
    hostname: str = "127.0.0.1"
    api_urls: Mapping[str, str] = field(default_factory=dict)  # AM API version -> URL
    default_duration: timedelta = timedelta(hours=1)
    horizon: timedelta = timedelta(days=14)
    free_windows: int = 10
    max_request_bytes: int = 4 * 1024 * 1024

    @functools.cached_property
    def urn(self) -> str:  # cached: it is written on every advertised node
        return hrn_to_urn(self.authority_hrn, "authority+am")


class Aggregate:
    """AM API v3 over the calendar. Thread-safe: every call is its own unit of work."""

    def __init__(
        self,
        settings: AggregateSettings,
        database: Database,
        verifier: CredentialVerifier,
        policy: Policy | None = None,
        clock: Callable[[], datetime] = utcnow,
        backend: TestbedBackend | None = None,
        identity: tuple[rsa.RSAPrivateKey, GidChain] | None = None,
        accounts: Accounts | None = None,
        unix_accounts: UnixAccounts | None = None,
        images: ImageStore | None = None,
        instances: Instances | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.identity = identity  # the aggregate's own key and GID chain, to sign tickets
        self.backend: TestbedBackend = backend or EmbeddedTestbed()
        self.policy = policy or Policy()
        self.verifier = verifier
        self.clock = clock
        self.inventory = Inventory(database, self.policy)
        # (A backend with a reconciler says how long it takes to finish a call cut short: Provision's BUSY tells it.)
        settle_s = getattr(self.backend, "settle_s", None)
        self.bookings = Bookings(database, self.policy, settings.authority_hrn, clock=clock, testbed_settle_s=settle_s)
        self.kept_leases = KeptSliceLeases(self.bookings)  # Status's reads, kept while the calendar is unchanged
        self.availability = Availability(database)
        self.slices = Slices(database)
        self.accounts = accounts or Accounts(database)
        self.unix_accounts = unix_accounts  # None: the operator manages Unix accounts (create_accounts = no)
        # Slices whose keys could not be taken out of their logins, and why: rows of the calendar (a restart or a new
        # leader forgets none), which retire_ended tries again at every pass.
        self.withdrawals = Withdrawals(database, lambda: self.clock())
        self.records = Records(database)  # the local registry's users: their registered SSH keys
        # ...and their registered GIDs: a local user acts with the key the registry holds for them now.
        self.registered_keys = RegisteredKeys(self.records, settings.authority_hrn)
        # The image repository; the aggregate only reads its rows (labels, what runs where), never the files.
        self.images = images or ImageStore(database, "")
        self.instances = instances  # containers inside bookings; None: this aggregate runs none
        self.advertiser = Advertiser(
            database, settings.horizon, settings.free_windows, self.policy.default_grain_s, self._advertised_nodes
        )
        # Asked first for a provisioned sliver's health (node agents: a lost node's running leases have failed);
        # None from it, or no check, leaves the answer to the backend.
        self.node_health: Callable[[SliverRecord, LeaseRecord, datetime], SliverHealth | None] | None = None
        self.alerts = Alerts(database, clock)  # events that are not lease states, for the notifier

    # -- authorization --------------------------------------------------------------------------------------------
    def authorize(
        self,
        method: str,
        caller_chain: GidChain,
        credentials: Any,
        target_urn: str | None,
        options: Mapping[str, Any] | None = None,
    ) -> VerifiedCredential:
        """The caller may call ``method`` on ``target_urn`` with one of these credentials (trust/), or GeniError.

        With the option geni_speaking_for, a tool calls for a user: its geni_abac credential is checked first and
        the user becomes the caller whose credentials are judged.
        """
        call_credentials = split_credentials(credentials)
        now = self.clock()
        speaking_for = (options or {}).get("geni_speaking_for")
        connected = caller_chain
        if speaking_for:
            self.verifier.verify_caller(caller_chain, now)  # the tool itself must be trusted
            caller_chain = verify_speaks_for(
                caller_chain, call_credentials.speaks_for, str(speaking_for), self.verifier.roots, now
            )
        verified = self.verifier.check_call(
            caller_chain, call_credentials.privilege, target_urn, METHOD_OPERATIONS[method], now
        )
        self._check_registered_keys(connected, caller_chain, verified)
        return verified

    def _check_registered_keys(self, connected: GidChain, caller_chain: GidChain, verified: VerifiedCredential) -> None:
        """Users of this aggregate's own authority act with the key its registry holds for them now (caller_keys.py):
        the certificate the call is made with, the user a tool speaks for, the credential's owner and each user who
        delegated it; and a slice of the authority is the one its registry holds under that name now (the
        credential's target). FORBIDDEN for a caller's certificate, CREDENTIAL_MISMATCH (as for an owner who is not
        the caller, or another target) for a credential."""
        for chain in (connected, caller_chain) if caller_chain is not connected else (connected,):
            leaf = chain[0] if chain else None
            refused = self.registered_keys.refusal(leaf.urn or "", leaf.key_id) if leaf is not None else None
            if refused is not None:
                raise TrustError(Reason.CALLER_UNTRUSTED, _caller_refusal(refused))
        refused = self.registered_keys.refusal(verified.owner_urn, verified.owner_key_id)
        if refused is not None:
            raise TrustError(
                Reason.OWNER_MISMATCH,
                f"this credential was issued to {refused.urn} with a key the registry of "
                f"{self.settings.authority_hrn} no longer holds for that user "
                + ("(the user was removed)" if refused.removed else "(an earlier holder of the name, or an old key)")
                + "; ask the registry for a new credential with the registered key (sfi.py: delete the *.cred "
                "files in ~/.sfi and call again)",
            )
        # Whoever delegated the credential answers for it on every use: a local user removed (or whose key the
        # registry no longer holds) no longer lends their rights through credentials they delegated earlier.
        for delegator_urn, delegator_key_id in verified.delegators:
            refused = self.registered_keys.refusal(delegator_urn, delegator_key_id)
            if refused is not None:
                raise TrustError(
                    Reason.OWNER_MISMATCH,
                    f"this credential was delegated by {refused.urn}, whom the registry of "
                    f"{self.settings.authority_hrn} "
                    + ("no longer registers (the user was removed)" if refused.removed else "holds with another key")
                    + ": a delegation lasts only while its delegator is registered; ask a researcher of the slice "
                    "(or the registry) for a new credential",
                )
        refused = self.registered_keys.slice_refusal(verified.target_urn, verified.target_key_id)
        if refused is not None:
            where = f"the registry of {self.settings.authority_hrn}"
            raise TrustError(
                Reason.TARGET_MISMATCH,
                (
                    f"this credential is for slice {refused.urn}, which was removed from {where}"
                    if refused.removed
                    else f"this credential is for an earlier slice {refused.urn}, removed from {where} and its name "
                    "registered again (another slice, another GID)"
                )
                + "; ask the registry for a new slice credential (it gives one to the researchers of the slice "
                "registered under that name now; sfi.py: delete the slice's *.cred file in ~/.sfi and call again)",
            )

    # -- GetVersion -----------------------------------------------------------------------------------------------
    def get_version(self) -> dict[str, Any]:
        rspec_version = {
            "type": "GENI",
            "version": "3",
            "schema": "http://www.geni.net/resources/rspec/3/request.xsd",
            "namespace": GENI_NS,
            "extensions": [OL_NS, AVAILABILITY_NS],
        }
        ad_version = {**rspec_version, "schema": "http://www.geni.net/resources/rspec/3/ad.xsd"}
        return {
            "geni_api": 3,
            "geni_api_versions": dict(self.settings.api_urls),
            "geni_request_rspec_versions": [rspec_version],
            "geni_ad_rspec_versions": [ad_version],
            "geni_credential_types": [
                {"geni_type": "geni_sfa", "geni_version": "3"},
                {"geni_type": "geni_sfa", "geni_version": "2"},
            ],
            "geni_single_allocation": 0,
            "geni_allocate": "geni_many",
            "geni_handles_speaksfor": True,
            "sfa": 3,
            "interface": "aggregate",
            "hrn": self.settings.authority_hrn,
            "urn": self.settings.urn,
            "testbed": "sfa-omf",
            "hostname": self.settings.hostname,
            "code_tag": "sfa-omf",
        }

    # -- ListResources --------------------------------------------------------------------------------------------
    def list_resources(self, caller_chain: GidChain, credentials: Any, options: Mapping[str, Any]) -> str:
        self.authorize("ListResources", caller_chain, credentials, None, options)
        _check_rspec_version(options, required=True, method="ListResources")
        return self.advertiser.document(
            self.clock(),
            lease_view(options.get("list_leases")),
            bool(options.get("geni_available")),
            compressed=bool(options.get("geni_compressed")),
        )

    def list_resources_reference(self, now: datetime, options: Mapping[str, Any]) -> str:
        """ListResources' document written the straightforward way, as before the advertiser (the calendar's
        services, one call each, no cache): the oracle that tests/am/test_advertiser.py and
        benchmarks/list_resources_bench.py compare the advertiser with. No authorization."""
        nodes = self.inventory.list_nodes(federated_only=True)
        if options.get("geni_available"):
            busy = self.availability.busy_now(now)
            nodes = [node for node in nodes if node.state == "usable" and node.component_id not in busy]
        horizon_end = now + self.settings.horizon
        windows = self.availability.free_windows(
            now, horizon_end, count=self.settings.free_windows, nodes=[node.component_id for node in nodes]
        )
        leases = self.bookings.leases(start=now)
        advertised = {node.component_id for node in nodes}
        repository = self.images.images()  # once per call, whatever the number of nodes
        ad = Advertisement(
            nodes=tuple(self._advertised(node, repository) for node in nodes),
            bookings=tuple(
                Booking(
                    id=lease.id,
                    start=lease.start,
                    end=lease.end,
                    component_ids=tuple(n for n in lease.nodes if n in advertised),
                    slice_urn=lease.slice_urn,
                )
                for lease in leases
                if any(n in advertised for n in lease.nodes)
            ),
            now=now,
            grain=timedelta(seconds=self.policy.default_grain_s),
            horizon=Horizon(now, horizon_end, self.settings.free_windows),
            free_windows={
                name: tuple(FreeWindow(window.start, window.end) for window in found) for name, found in windows.items()
            },
        )
        document = write_advertisement(
            ad, lease_view(options.get("list_leases")), held_now=self.availability.busy_now(now)
        ).decode("utf-8")
        return _maybe_compressed(document, options)

    def _advertised_nodes(self, nodes: Sequence[NodeRecord]) -> tuple[AdvertisedNode, ...]:
        """The nodes as advertised, with the images each can run (the repository read once, whatever the count)."""
        repository = self.images.images()
        return tuple(self._advertised(node, repository) for node in nodes)

    def _advertised(self, node: NodeRecord, repository: Sequence[ImageRecord]) -> AdvertisedNode:
        images = tuple(
            DiskImage(
                name=image.name,
                os=image.os or None,
                version=image.version or None,
                description=image.description or None,
            )
            for image in node_images(node, repository)
        )
        return AdvertisedNode(
            component_id=node.component_id,
            component_manager_id=self.settings.urn,
            component_name=node.component_name,
            exclusive=node.exclusive,
            hardware_types=(node.hardware_type,) if node.hardware_type else (),
            sliver_types=(SliverType(name="raw-pc", disk_images=images),),
            in_service=node.state == "usable",
            grain=timedelta(seconds=node.grain_s) if node.grain_s != self.policy.default_grain_s else None,
        )

    # -- Allocate -------------------------------------------------------------------------------------------------
    def allocate(
        self, caller_chain: GidChain, slice_urn: str, credentials: Any, rspec: str, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        return self._allocate(caller_chain, slice_urn, credentials, rspec, options).answer

    def _allocate(
        self,
        caller_chain: GidChain,
        slice_urn: str,
        credentials: Any,
        rspec: str,
        options: Mapping[str, Any],
        take_over: bool = False,
        new_only: bool = False,
        method: str = "Allocate",
    ) -> _Allocated:
        """Allocate, answering also what it wrote: the leases it booked and the slice's users before it.

        ``new_only`` (CreateSliver, GetTicket): a request that names only leases the slice holds (by their ids) is
        refused (ALREADY_EXISTS) before anything is written; Allocate answers the slice's manifest instead.

        ``take_over`` (v2 CreateSliver): a requested lease that one of the caller's own allocations in the slice
        (allocated, never provisioned, still in its time) already is, with the same nodes, slivers and window, is not
        booked again but taken over (``_Allocated.taken``): it is what an earlier CreateSliver of this request booked
        before it was cut short (its process killed between its Allocate and its Provision), never shown to the
        caller, and retrying the call must not clash with it. Another member's allocation is never taken over (it
        waits for that member's own Provision, with their users): it stays allocated. A requested
        lease that one of the slice's current provisioned leases already is (the same nodes and slivers; the same
        window, or for "as soon as possible" the lease holding now or the window an earlier call found) is refused
        (ALREADY_EXISTS) before anything is written: it is what an earlier CreateSliver of this request made, and
        its retry must not book a second slot.

        ``method`` is the API method the caller called (Allocate, CreateSliver): refusals name it and its methods."""
        _check_urn(slice_urn, "slice")
        if is_source_slice(slice_urn, self.settings.authority_hrn):
            # (A slice credential for it could come from a registry older than the one refusing the name.)
            raise BadArgs(
                f"{slice_urn} is not a slice one can book in: slice names starting with 'external-' are reserved "
                "for the testbed's own reservations (those made directly in the testbed, which this aggregate "
                "mirrors); register a slice with another name and book in it (nothing was booked)"
            )
        verified = self.authorize("Allocate", caller_chain, credentials, slice_urn, options)
        # A caller who is not a user of this aggregate's authority books federated nodes only: a private pool's node
        # is refused to them as a node the aggregate does not have, in the same words (its existence stays unknown).
        foreign = not self.registered_keys.is_local_user(verified.owner_urn)
        users = self._vouched_users(slice_urn, verified.owner_urn, _users_sent(options))
        now = self.clock().replace(microsecond=0)  # a booking from now starts on a whole second
        request = parse_request(
            rspec,
            now=now,
            policy=RequestPolicy(
                default_duration=self.settings.default_duration,
                grain=timedelta(seconds=self.policy.default_grain_s),
                component_manager_id=self.settings.urn,  # a slice's whole request names other aggregates' nodes too
                # SFA durations count grains of each node's own grain
                known_nodes=functools.partial(self._known_nodes, federated_only=foreign),
            ),
            allocate_options=dict(options),
            slice_urn=slice_urn,  # SFA leases of other slices, sent back from an advertisement, are left out
        )
        if not request.nodes:
            named = list(request.left_to_others[:5]) + (
                [f"{len(request.left_to_others) - 5} more"] if len(request.left_to_others) > 5 else []
            )
            others = f" (its nodes are for {', '.join(named)}; this aggregate is {self.settings.urn})" if named else ""
            raise BadArgs(f"the request RSpec names no node of this aggregate{others}: nothing to book")
        if len(request.nodes) > self.policy.max_nodes_per_request:
            raise GeniError(
                Reason.POLICY,
                f"the request names {len(request.nodes)} nodes, over this aggregate's limit of "
                f"{self.policy.max_nodes_per_request} per request (policy rule max_nodes_per_request): split it",
            )
        # Each node of each lease is a sliver written now and again by Provision in one unit of work holding the
        # calendar's write lock: bounded, as the nodes are, before any work (the hunt's 24 000 held it 30 s).
        pairs = sum(len(lease.nodes) for lease in request.leases)
        if pairs > self.policy.max_leases_per_request:
            raise GeniError(
                Reason.POLICY,
                f"the request books {pairs} node-windows (each node of each lease), over this aggregate's limit of "
                f"{self.policy.max_leases_per_request} per request (policy rule max_leases_per_request): split it "
                "into several requests, or book longer windows instead of many short ones",
            )
        # The image repository matters only to container slivers: a request without any does not read it.
        asks_containers = any(node.sliver_type == CONTAINER_SLIVER_TYPE for node in request.nodes)
        repository = self.images.images() if asks_containers else []
        containers = check_request(
            request, self.instances, self.policy.max_instances_per_node, repository, verified.owner_urn
        )  # before anything is written
        if containers and self.instances is not None and self.instances.plans is not None:
            check_one_node_per_lease(request, containers)
        wanted: list[BookingRequest] = []
        best_effort = bool(options.get("geni_best_effort"))
        # (geni_best_effort) nodes in maintenance, or lost, of leases with no start: refused, as Bookings refuses them.
        down_refused: list[Conflict] = []
        named_ids = {lease.existing_id for lease in request.leases if lease.existing_id}
        # The slice's leases, read once, only when the request names some by id or a CreateSliver may take some over.
        held = self.bookings.leases(slice_urn=slice_urn) if take_over or named_ids else []
        leftovers = _leftover_allocations(held, now, verified.owner_urn) if take_over else []
        # (v2 CreateSliver) the slice's current provisioned leases: a retry of the call that made one books nothing.
        provisioned = [lease for lease in held if lease.state == "provisioned" and lease.end > now] if take_over else []
        held_already: list[LeaseRecord] = []
        taken: list[LeaseRecord] = []
        reused_by_id = _reused_leases(held, named_ids, now)
        reused = sorted(reused_by_id)
        # Other slices' leases named by id with their own windows (ended or not): bookings an advertisement showed
        # (sfi's `-l all` sent back), not the caller's to book. The nodes they hold are left out of such a lease; a
        # node the caller added under one is booked as a new lease. Named with another window, or naming no other
        # slice's lease, an id is only a label. Read only when the request names leases the slice does not hold.
        windows = self.bookings.windows_of(named_ids - {lease.id for lease in held})
        shown: dict[str, frozenset[str]] = {}  # request client_ids left out, by the other slice's lease id
        for lease in request.leases:
            other = windows.get(lease.existing_id or "")
            if (
                other is not None
                and other[0] != slice_urn
                and lease.start is not None
                and (lease.start, lease.start + lease.duration) == other[1:3]
            ):
                theirs = {c for c in lease.nodes if self._component_of(request.node(c)) in other[3]}
                shown[lease.existing_id or ""] = frozenset(theirs)
        if shown and all(
            set(lease.nodes) <= shown.get(lease.existing_id or "", frozenset()) for lease in request.leases
        ):
            raise GeniError(
                Reason.BAD_ARGS,
                f"every lease of this request is another slice's current booking ({', '.join(sorted(shown))}), as "
                f"an advertisement shows them: nothing to book for {slice_urn}; add leases of your own (an "
                "<ol:lease client_id=...> without id, or an SFA <lease> with your slice_id)",
            )
        for lease in request.leases:
            left_out = shown.get(lease.existing_id or "")
            if left_out:
                if set(lease.nodes) <= left_out:
                    continue  # another slice's booking, shown by an advertisement and sent back
                lease = replace(lease, nodes=tuple(c for c in lease.nodes if c not in left_out))
            components = [self._component_of(request.node(client_id)) for client_id in lease.nodes]
            kept = reused_by_id.get(lease.existing_id or "")
            if kept is not None:
                wanted += _added_to_kept_lease(kept, lease, request, components, containers, slice_urn)
                # (v2 CreateSliver) the slice's allocation it names is provisioned with it.
                same = kept if kept in leftovers else None
            else:
                same = None
                grain_s = (
                    self._grain_s(components, federated_only=foreign)
                    if lease.start is None and (leftovers or provisioned)
                    else 0
                )
                if leftovers:
                    same = _matching_allocation(lease, request, components, containers, leftovers, grain_s)
                if same is None and provisioned:
                    made = _matching_allocation(lease, request, components, containers, provisioned, grain_s, now)
                    if made is not None:
                        held_already.append(made)
                        continue
            if same is not None:
                if same.end > verified.expires:
                    raise GeniError(
                        Reason.POLICY,
                        f"the window for {', '.join(same.nodes)} ends at {format_time(same.end)}, after the slice "
                        f"credential expires ({format_time(verified.expires)}); renew the slice at its authority first",
                    )
                leftovers.remove(same)
                taken.append(same)
                continue
            if kept is not None:
                continue
            down: set[str] = set()
            if lease.start is None:
                # As soon as possible; with no time at all (from_now), from now itself when the nodes are free, and
                # (no end asked for either) no later than the slice credential allows.
                slot, refused_down = self._earliest_slot_of_usable(
                    lease, components, now, verified.expires, best_effort, federated_only=foreign
                )
                down_refused += refused_down
                down = {conflict.node for conflict in refused_down}
                if slot is None:
                    continue  # every node of this lease is down: refused, nothing of it to book
                start, end = slot.start, slot.end
            else:
                start, end = lease.start, lease.start + lease.duration
            for client_id, component in zip(lease.nodes, components, strict=True):
                if component in down:
                    continue
                node = request.node(client_id)
                wanted.append(
                    BookingRequest(
                        node=component,
                        start=start,
                        end=end,
                        client_id=client_id,
                        lease_label=lease.client_id or "",
                        # A container sliver's image is its containers', not one to install on the node.
                        disk_image="" if client_id in containers else node.disk_image or "",
                        from_now=lease.from_now,
                    )
                )
        taken_images = [
            BookingRequest(node=sliver.node, start=lease.start, end=lease.end, disk_image=sliver.disk_image)
            for lease in taken
            for sliver in lease.slivers
        ]
        if held_already:  # before anything is written
            raise GeniError(Reason.ALREADY_EXISTS, _held_already_message(held_already, method))
        # Before anything is written: an unknown image books nothing (nor provisions a taken-over allocation).
        self._check_images([*wanted, *taken_images], verified.owner_urn, federated_only=foreign)
        if not wanted and down_refused:
            # Best effort that can book nothing at all is refused whole, as Bookings.book refuses it.
            raise BookingConflict(down_refused)
        if not wanted and not taken and new_only:
            raise GeniError(
                Reason.ALREADY_EXISTS,
                f"the slice holds every lease this request names already ({', '.join(reused)}): {method} books new "
                f"leases only; send the new leases alone ({_renew_method(method)} changes a lease's end; "
                "DeleteSliver, then the request, starts over)",
            )
        if not wanted:  # every lease asked for is the slice's already: nothing to book
            users_before = None
            if users:  # as a booking would have: the users sent join the slice (Provision puts their keys in)
                users_before = self._users_of(slice_urn)
                self.slices.update_users(slice_urn, users)
            return _Allocated(self._describe_slice(slice_urn, None), (), users_before, tuple(taken))
        users_before = self._users_of(slice_urn) if users else {}  # read only when there is something to put back
        try:
            result = self.bookings.book(
                slice_urn,
                verified.expires,
                wanted,
                owner_urn=verified.owner_urn,
                best_effort=best_effort,
                users=users,
                contact=_contact(caller_chain, verified.owner_urn),
                read_slice=True,  # the manifest's leases, nodes and users, read in the booking's transaction
                federated_only=foreign,
            )
        except BookingConflict as refused:
            own = self.bookings.leases(slice_urn=slice_urn)
            holds = self.bookings.provision_hold_ends(lease.id for lease in own if _allocation_lapsed(lease, now))
            note = _own_leases_note(refused.conflicts, own, now, method, holds)
            if not note and not down_refused:
                raise
            # Nothing was booked: the down nodes of leases with no start are named with the nodes Bookings refused.
            raise BookingConflict([*refused.conflicts, *down_refused], note=note) from None
        try:
            # Again once booked: an image removed meanwhile (its removal saw no lease yet) fails this call instead.
            self._check_images(wanted, verified.owner_urn, federated_only=foreign)
            plan_containers(self.instances, result.leases, containers, now)
            answer = self._describe_slice(slice_urn, None, result.slice_view)
        except BaseException:
            # The call fails, so nothing it wrote may stay: the leases go, and the slice's users are as they were.
            self.bookings.discard(lease.id for lease in result.leases)
            if users:
                self.slices.update_users(slice_urn, users_before, replace=True)
            raise
        # geni_best_effort: what could not be booked is reported per requested node, with why and when it is free.
        answer["geni_slivers"] += [
            {
                "geni_sliver_urn": "",
                "geni_component_id": conflict.node,
                "geni_expires": "",
                "geni_allocation_status": str(Allocation.UNALLOCATED),
                "geni_operational_status": str(Operational.PENDING_ALLOCATION),
                "geni_error": conflict.describe(),
                "geni_start_time": format_time(conflict.start),
                "geni_end_time": format_time(conflict.end),
            }
            for conflict in (*result.refused, *down_refused)
        ]
        return _Allocated(answer, result.leases, users_before if users else None, tuple(taken))

    def _earliest_slot_of_usable(
        self,
        lease: RequestLease,
        components: Sequence[str],
        now: datetime,
        ends_by: datetime,
        best_effort: bool,
        federated_only: bool = False,
    ) -> tuple[CommonSlot | None, list[Conflict]]:
        """The earliest slot of a lease with no start (``components``: its nodes), and the refusals of its nodes that
        are down (in maintenance, or lost).

        Without ``best_effort`` a down node refuses the whole request (``Availability.earliest_slot``'s
        BookingConflict, before anything is written). With it, the lease's other nodes get the earliest slot where
        they are all free, and each down node is refused for that window, as ``Bookings.book`` refuses a down node of
        a best-effort booking; every node down: no slot, each refused for the window earliest_slot names.

        A duration the client gave (not ``from_now``) must be whole slots of the nodes' grain, as with a start: it
        was rounded up silently (3000 s booked as an hour), where the same lease with a start is refused.

        ``federated_only`` (a caller of another authority): a private pool's node is refused as a node the calendar
        does not hold is (``unknown_nodes_refusal``: the words and code of Availability.earliest_slot's, and of a
        booking's)."""
        asked = list(components)
        duration_s = int(lease.duration.total_seconds())
        grain_s = self._grain_s(asked, federated_only=federated_only)
        if not lease.from_now and duration_s % grain_s:
            shorter, longer = align_down(duration_s, grain_s), align_up(duration_s, grain_s)
            whole = [f"{seconds} s ({human_duration(seconds)})" for seconds in (shorter, longer) if seconds > 0]
            named = ", ".join(asked[:3]) + (", ..." if len(asked) > 3 else "")
            raise GeniError(
                Reason.BAD_ARGS,
                f"{named}: booked in slots of {human_duration(grain_s)}, and a duration of {duration_s} s is not a "
                f"whole number of them; ask for {' or '.join(whole)}",
            )
        if federated_only:
            shown = {
                node.component_id for node in self.inventory.list_nodes(component_ids=set(asked)) if node.federated
            }
            missing = [name for name in asked if name not in shown]
            if missing:
                raise unknown_nodes_refusal(missing)
        down: list[Conflict] = []
        while True:
            try:
                slot = self.availability.earliest_slot(
                    duration_s, now, nodes=asked, from_now=lease.from_now, ends_by=ends_by
                )
            except BookingConflict as refused:
                if not best_effort:
                    raise
                down += refused.conflicts
                gone = {conflict.node for conflict in refused.conflicts}
                asked = [component for component in asked if component not in gone]
                if not asked:
                    return None, down
                continue  # again without them (another may have gone down meanwhile)
            return slot, [replace(conflict, start=slot.start, end=slot.end) for conflict in down]

    def _known_nodes(self, component_ids: frozenset[str], federated_only: bool = False) -> dict[str, KnownNode]:
        """The calendar's nodes among these component_ids (a URN's authority in any case), for reading a request;
        ``federated_only``: but those of private pools (for a caller of another authority)."""
        if len(component_ids) > self.policy.max_nodes_per_request:
            return {}  # the request is refused for its size once read: its nodes need no look-up
        return {
            named: KnownNode(node.component_id, timedelta(seconds=max(node.grain_s, 1)))
            for named, node in self.inventory.find_nodes(component_ids).items()
            if node.federated or not federated_only
        }

    def _grain_s(self, components: Sequence[str], federated_only: bool = False) -> int:
        """The slot length that fits the slots of all these nodes (as Availability.earliest_slot takes it);
        ``federated_only``: of those in federated pools only (a caller of another authority)."""
        grains = [
            max(node.grain_s, 1)
            for node in self.inventory.list_nodes(component_ids=set(components))
            if node.federated or not federated_only
        ]
        return math.lcm(*grains) if grains else max(self.policy.default_grain_s, 1)

    # -- CreateSliver (AM API v2) ---------------------------------------------------------------------------------
    def create_sliver(
        self, caller_chain: GidChain, slice_urn: str, credentials: Any, rspec: str, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """AM API v2's CreateSliver: Allocate, then Provision exactly the slivers this call booked (the slice's other
        allocations stay as they are), answering the slice's manifest. v2 has no allocated-but-not-provisioned
        state, so when anything after the booking fails the call is undone whole: the leases it booked are given
        back and the slice's users are put back as they were before it.

        A CreateSliver cut short between its Allocate and its Provision (its process killed) leaves the slice an
        allocation the client never saw: the same call again takes it over and provisions it instead of clashing
        with it (``_allocate``'s ``take_over``). A taken-over allocation is never undone by this call: when the call
        fails (its Provision refused BUSY because the earlier call is provisioning it still, or the testbed failed),
        it stays as the earlier call left it, to be provisioned by that call, taken over by the next try or released
        when its time to be provisioned is over. The same call again once it succeeded is refused ALREADY_EXISTS,
        naming the lease, and books nothing."""
        allocated = self._allocate(
            caller_chain, slice_urn, credentials, rspec, options, take_over=True, new_only=True, method="CreateSliver"
        )
        booked = [sliver.urn for lease in (*allocated.leases, *allocated.taken) for sliver in lease.slivers]
        try:
            self.provision(caller_chain, booked, credentials, options)
            return self._describe_slice(slice_urn, None)
        except BaseException:
            self._undo_allocation(slice_urn, allocated)
            raise

    def _undo_allocation(self, slice_urn: str, allocated: _Allocated) -> None:
        """Give back the leases a failed call booked, by id, as if never booked (nobody is told of them), and put
        the slice's users back. The allocations it took over are left as they are: they are an earlier call's, which
        may have provisioned them meanwhile (or be provisioning them now). A failure here is logged: the call's own
        error is the one to report."""
        booked = {lease.id for lease in allocated.leases}
        try:
            current = [lease for lease in self.bookings.leases(slice_urn=slice_urn) if lease.id in booked]
            for lease in current:
                if lease.state == "provisioned":  # (only when the answer failed after Provision)
                    self._end_lease(lease)
            try:
                self.bookings.discard(booked)
            except Exception as exc:  # the testbed keeps a record of a job it may have made (an OAR time-out)
                log.warning("cancelling leases %s instead of discarding them: %s", ", ".join(sorted(booked)), exc)
                for lease in current:
                    self._end_lease(lease, provisioned=False)
                    self.bookings.cancel(lease.id)  # the reconciler deletes a job it finds for them
            if allocated.users_before is not None:
                self.slices.update_users(slice_urn, allocated.users_before, replace=True)
            self.withdraw_keys_if_done(slice_urn)
        except Exception:
            log.exception("could not undo the allocation of leases %s in %s", ", ".join(sorted(booked)), slice_urn)

    def _check_images(self, wanted: Sequence[BookingRequest], user: str, federated_only: bool = False) -> None:
        """Every disk image the request names runs on its node (the repository's or the node's own) and ``user``
        may use it (not somebody else's private image), else BADARGS naming the images that node can run.
        ``federated_only`` (a caller of another authority): a private pool's node is left to the booking, as a node
        the calendar does not hold is (which refuses both in the same words)."""
        asked = {(request.node, request.disk_image) for request in wanted if request.disk_image}
        if not asked:
            return
        nodes = self.inventory.list_nodes(component_ids={node for node, _ in asked})
        shown = {node.component_id: node for node in nodes if node.federated or not federated_only}
        check_requested_images(sorted(asked), shown, self.images.images(), user)

    def _component_of(self, node: Any) -> str:
        if not node.component_id:
            raise BadArgs(
                f"node {node.client_id!r} names no component_id: choose one of the advertised nodes "
                "(sfa-omf books named nodes)"
            )
        return str(node.component_id)

    def _users_of(self, slice_urn: str) -> dict[str, list[str]]:
        """The slice's users and keys as they are now (none for a slice not seen yet)."""
        try:
            return {user.user_urn: list(user.ssh_keys) for user in self.slices.get(slice_urn).users}
        except GeniError as error:
            if error.reason != Reason.NOT_FOUND:
                raise
            return {}

    def ticket(
        self, caller_chain: GidChain, slice_urn: str, credentials: Any, rspec: str, options: Mapping[str, Any]
    ) -> str:
        """SFA's GetTicket: book the slots (as Allocate does) and answer with the aggregate's signed promise of them.
        The slots are held until the allocation expires; Provision (v3) or CreateSliver (v2) makes them real."""
        if self.identity is None:
            raise GeniError(Reason.UNSUPPORTED, "this aggregate has no signing identity configured for tickets")
        answer = self._allocate(caller_chain, slice_urn, credentials, rspec, options, new_only=True).answer
        booked = {s["geni_sliver_urn"] for s in answer["geni_slivers"] if s["geni_sliver_urn"]}
        slots = [
            TicketSlot(lease.id, sliver.node, sliver.urn, lease.start, lease.end)
            for lease in self.bookings.leases(slice_urn=slice_urn)
            for sliver in lease.slivers
            if sliver.urn in booked and sliver.allocation_state == Allocation.ALLOCATED
        ]
        if not slots:
            raise GeniError(Reason.BOOKING_CONFLICT, "nothing could be booked, so there is nothing to promise")
        expires = min(
            sliver.expires
            for lease in self.bookings.leases(slice_urn=slice_urn)
            for sliver in lease.slivers
            if sliver.urn in booked
        )
        key, chain = self.identity
        return issue_ticket(caller_chain, slice_urn, expires, slots, answer["geni_rspec"], key, chain)

    # -- Describe, Status -------------------------------------------------------------------------------------------
    def describe(
        self,
        caller_chain: GidChain,
        urns: Sequence[str],
        credentials: Any,
        options: Mapping[str, Any],
        method: str = "Describe",
    ) -> dict[str, Any]:
        """Describe the slice or slivers named; ``method`` is the one called (v2's ListResources of a slice), which
        a refusal names."""
        slice_urn, sliver_urns = self._resolve(urns)
        self.authorize("Describe", caller_chain, credentials, slice_urn, options)
        _check_rspec_version(options, required=True, method=method)
        sfa_leases = lease_view(options.get("list_leases")) is not LeaseView.GENI  # as ListResources reads it
        answer = self._describe_slice(slice_urn, sliver_urns, sfa_leases=sfa_leases)
        answer["geni_rspec"] = _maybe_compressed(answer["geni_rspec"], options)
        return answer

    def status(
        self, caller_chain: GidChain, urns: Sequence[str], credentials: Any, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        slice_urn, sliver_urns, leases = self._resolve_with_leases(urns)
        self.authorize("Status", caller_chain, credentials, slice_urn, options)
        if leases is None:
            # A slice named: its leases as kept while the calendar is unchanged (what clients poll). Slivers named
            # are read fresh (nearly always with their slice, above): a kept read of another moment could miss a
            # sliver another process just booked.
            leases = self.kept_leases.leases(slice_urn) if sliver_urns is None else self._leases(slice_urn, sliver_urns)
        return {"geni_urn": slice_urn, "geni_slivers": self._sliver_dicts(slice_urn, sliver_urns, leases)}

    # -- Provision, Renew, Delete, PerformOperationalAction, Shutdown ------------------------------------------------
    def provision(
        self, caller_chain: GidChain, urns: Sequence[str], credentials: Any, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Provision the slice's allocated leases (those named, or all): the testbed first, then the keys in the
        local logins, then the calendar records them provisioned with the users sent; a failure undoes what was done
        (docs/api-contract.md, "Nothing half-done"). With users, the leases provisioned before get them too (on the
        testbed, in the logins, in container plans): Provision again is sfi's way to add keys."""
        slice_urn, sliver_urns = self._resolve(urns)
        verified = self.authorize("Provision", caller_chain, credentials, slice_urn, options)
        asked_at = self.clock()  # an allocation in its time now is provisioned, however long the testbed takes
        leases = self._leases_to_act_on(slice_urn, sliver_urns)
        if not leases:
            raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no allocated slivers here to provision")
        _refuse_part_of_a_lease(leases, sliver_urns, "provisioned")
        self._refuse_unknown_slivers(slice_urn, sliver_urns, leases)
        _refuse_ended(leases, asked_at)
        # (The calendar refuses them too: this spares the testbed work it would undo.) The holds are read only for a
        # lapsed allocation: one a Provision cut short holds is not released before the hold ends.
        lapsed = [lease for lease in leases if lease.state == "allocated" and _allocation_lapsed(lease, asked_at)]
        holds = self.bookings.provision_hold_ends(lease.id for lease in lapsed)
        for lease in lapsed:
            expiries = [to_s(sliver.expires) for sliver in lease.slivers]
            refuse_expired_allocation(lease.id, expiries, to_s(lease.end), to_s(asked_at), holds.get(lease.id))
        # One short write before anything slow: the sweep leaves these allocations while the testbed works, and
        # another Provision of them is refused (BUSY) until this one ends. One that another Provision finished since
        # they were read is not held: the testbed is not asked for it again.
        hold = self.bookings.hold_for_provision([lease.id for lease in leases if lease.state == "allocated"], asked_at)
        pending = [lease for lease in leases if lease.id in hold.lease_ids]
        testbed_may_hold: set[str] = set()  # filled by a failing _provision_held
        try:
            return self._provision_held(
                caller_chain, slice_urn, sliver_urns, verified, leases, pending, hold, testbed_may_hold, options
            )
        except BaseException:
            self._end_provision_hold_quietly(hold, testbed_may_hold)
            raise

    def _provision_held(
        self,
        caller_chain: GidChain,
        slice_urn: str,
        sliver_urns: set[str] | None,
        verified: VerifiedCredential,
        leases: Sequence[LeaseRecord],
        pending: Sequence[LeaseRecord],
        hold: ProvisionHold,
        testbed_may_hold: set[str],
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``provision`` once its allocations (``pending``) are held from the sweep (``hold``): the testbed, the
        logins, then the calendar, which ends the hold; a failure undoes what it did and adds to ``testbed_may_hold``
        the leases the testbed may still hold (``provision`` ends the hold but for them)."""
        users = self._vouched_users(slice_urn, verified.owner_urn, _users_sent(options))
        owner = self.accounts.login_for(verified.owner_urn, slice_urn)
        # Provision again with more users (alone or next to allocations): the leases provisioned before get them too,
        # on the testbed and in their plans, as with geni_update_users (sfi has no geni_update_users).
        provisioned_before = [lease for lease in leases if lease.state == "provisioned"] if users else []
        # (What the testbed of those leases has now: they go back to it if the call fails.)
        old_accounts = self._local_accounts(slice_urn) if provisioned_before else []
        accounts = self._local_accounts(slice_urn, also=verified.owner_urn, sent=users)
        if self.unix_accounts is not None and pending:
            # The testbed may need them (OAR runs jobs as the caller's); keys come after. Only the accounts that
            # get a key, and the caller's (_write_slice_keys).
            for account in accounts:
                if account.ssh_keys or account.login == owner:
                    self.unix_accounts.ensure(account.login)
        done: list[LeaseRecord] = []
        prepared: list[str] = []
        asked: LeaseRecord | None = None  # the lease the testbed is being asked for
        pushed: list[LeaseRecord] = []  # provisioned before, and given the new users on the testbed
        written: list[WrittenKeys] = []  # the logins' blocks for the slice this call changed
        keys = [key for account in accounts for key in account.ssh_keys]
        try:
            self._users_to_testbed(provisioned_before, accounts, old_accounts)
            pushed = provisioned_before
            for lease in pending:
                if self.instances is not None:  # the plan first: the lease's job may start at once and read it
                    prepared.append(lease.id)  # before: a prepare that fails halfway is undone too
                    self.instances.prepare(lease.id, owner, keys, self.clock())
                # The testbed first: if it is down the booking stays allocated and a retry works later.
                asked = lease
                self.backend.provision(lease, owner, accounts)
                asked = None
                done.append(lease)
            if self.unix_accounts is not None and (pending or provisioned_before):
                # Before the calendar records anything (put back if the call fails). Only the caller's own login
                # made a link fails the call: another member's is theirs to mend, and must not fail this one.
                written = self._write_slice_keys(accounts, slice_urn, {owner}, verified.owner_urn)
            # Recorded whole: every lease provisioned and the users sent, in one unit of work.
            recorded = self.bookings.mark_provisioned_all(
                [lease.id for lease in pending], slice_urn, users, _contact(caller_chain, verified.owner_urn), hold
            )
        except BaseException as failure:
            # Nothing half-provisioned: the retry provisions all of them again.
            if self.unix_accounts is not None:
                self.unix_accounts.restore_slice_keys(written, slice_urn)
            self._users_back_on_testbed(pushed, old_accounts)
            still_held = self._release_quietly(done)
            # Their hold stays (the sweep leaves them to the reconciler): leases the testbed could not release...
            testbed_may_hold.update(still_held)
            if (
                asked is not None
                and isinstance(failure, GeniError)
                and (failure.reason == Reason.TIMEDOUT or failure.maybe_made)
            ):
                still_held.add(asked.id)  # the testbed may have made its job: its plan is kept
                if failure.maybe_made:
                    # ...and the one it says it may hold (OAR keeps its job row for its reconciler, which ends the
                    # hold): a time-out alone (OMF: nothing to adopt) leaves the allocation to the sweep.
                    testbed_may_hold.add(asked.id)
            if self.instances is not None:  # no plan left for a job, no address held: the call wrote nothing...
                # ...except for jobs that may exist: they need their plan and their containers' addresses.
                self.instances.unprepare(
                    [lease_id for lease_id in prepared if lease_id not in still_held], self.clock()
                )
            raise
        self._testbed_follows_renewals(slice_urn, verified.owner_urn, pending, recorded)
        if self.instances is not None and provisioned_before:  # their plans get the keys too (the rounds repair)
            self.instances.rewrite_keys([lease.id for lease in provisioned_before], keys)
        return self._describe_slice(slice_urn, sliver_urns)

    def _testbed_follows_renewals(
        self, slice_urn: str, owner_urn: str, given: Sequence[LeaseRecord], recorded: Sequence[LeaseRecord]
    ) -> None:
        """A Renew that ran while the testbed was provisioning (``given``: the leases as the testbed got them) moved
        an end the testbed did not see: the Renew found the lease allocated, with no reservation to move, and the
        calendar recorded it provisioned with the new end (``recorded``). The testbed's reservation follows it now.
        If the testbed cannot follow, the renewal is undone as a Renew whose testbed cannot follow is: the lease
        keeps the end the testbed holds (the slice's users are told that the renewal was refused); the Provision
        itself is done (a failure here is logged, the reconciler compares the testbed with the calendar)."""
        as_given = {lease.id: lease for lease in given}
        followed: list[str] = []
        for after in recorded:
            before = as_given.get(after.id)
            if before is None or after.end == before.end:
                continue
            try:
                self.backend.renew(before, after.end)
                followed.append(after.id)
            except GeniError as exc:
                why = (
                    f"lease {after.id} was renewed to {format_time(after.end)} while it was being provisioned and "
                    f"the testbed could not follow ({exc.message}): it keeps its end {format_time(before.end)}"
                )
                log.warning("%s", why)
                try:
                    self.bookings.renew_all([(after.id, before.end, "")])
                except GeniError as back:
                    log.warning("lease %s keeps its renewed end in the calendar: %s", after.id, back.message)
                self.alerts.renewal_refused(
                    slice_urn, owner_urn, sorted(sliver.urn for sliver in after.slivers), after.end, why
                )
        if self.instances is not None and followed:  # the plans of the leases' containers follow their slot
            self.instances.refresh_slots(followed)

    def renew(
        self,
        caller_chain: GidChain,
        urns: Sequence[str],
        credentials: Any,
        expiration: Any,
        options: Mapping[str, Any],
        slice_named: bool = False,
    ) -> list[dict[str, Any]]:
        """Move the end of the slivers' leases. A new end inside a slot rounds up to the slot's end (never less than
        asked). With geni_extend_alap a lease goes to the end asked for (rounded up the same way) unless the slice
        credential's expiry, the maximum duration, the next booking of one of its nodes or a per-slice or per-user
        limit comes first: then to the last whole slot before that (its note says what stopped it); a lease that
        cannot end later than it does keeps its end (never shortened). A Renew naming the slice (``slice_named``: AM
        API v2's RenewSliver, which names it, renews the slivers it picks) never shortens either: a lease that starts
        or ends after the end asked for keeps its end, and the call is refused only if it can renew no lease at all.
        The slice credential of this call decides how far a lease may go (the slice may have been renewed at its
        authority since Allocate). Each sliver says what changed (sfa_omf_renewal)."""
        slice_urn, sliver_urns, read = self._resolve_for_renewal(urns)
        verified = self.authorize("Renew", caller_chain, credentials, slice_urn, options)
        new_end = parse_time(expiration, now=self.clock(), what="expiration time")
        try:
            alap = bool(options.get("geni_extend_alap"))
            whole = slice_named or sliver_urns is None
            return self._renew(slice_urn, sliver_urns, verified, new_end, alap, read, whole)
        except GeniError as exc:
            if exc.reason in RENEWAL_REFUSALS:  # the slice's users hear of it (notify/alerts.py), after the fact
                self.alerts.renewal_refused(
                    slice_urn, verified.owner_urn, sorted(sliver_urns or ()), new_end, exc.message
                )
            raise

    def _renew(
        self,
        slice_urn: str,
        sliver_urns: set[str] | None,
        verified: VerifiedCredential,
        new_end: datetime,
        alap: bool,
        read: RenewalRead | None,
        slice_named: bool = False,
    ) -> list[dict[str, Any]]:
        """``read``: the leases, when ``_resolve_for_renewal`` read them already (else they are read here);
        ``slice_named``: the call names the slice (a lease after the end asked for is left as it is)."""
        if new_end > verified.expires and not alap:  # a sliver never outlives the slice credential
            raise GeniError(
                Reason.POLICY,
                f"cannot renew to {format_time(new_end)}: that is beyond the slice credential's expiry "
                f"{format_time(verified.expires)}; renew the slice at its authority and call again with the new "
                "slice credential, or ask for geni_extend_alap",
            )
        leases = self._leases_to_act_on(slice_urn, sliver_urns) if read is None else read.leases
        if not leases:
            raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to renew")
        _refuse_part_of_a_lease(leases, sliver_urns, "renewed")
        if read is None:  # (a read of the call holds every sliver it names)
            self._refuse_unknown_slivers(slice_urn, sliver_urns, leases)
        now = self.clock()
        _refuse_ended(leases, now)
        renewals: list[tuple[str, datetime, Rounding]] = []
        kept: dict[str, str] = {}  # lease id -> why it keeps its end
        stopped: dict[str, str] = {}  # lease id -> why geni_extend_alap extends it less than asked
        extending = alap and new_end > now
        # Neither with geni_extend_alap nor naming the slice is a lease shortened: one that ends after the end asked
        # for (rounded up to its slots) keeps its end. (An end in the past is refused as without them.)
        sparing = (alap or slice_named) and new_end > now
        after_asked = {lease.id for lease in leases if lease.end > new_end} if sparing else set()
        grains, states, node_grains = (
            self._lease_grains_and_states(leases) if extending or after_asked else ({}, {}, {})
        )
        if extending and read is not None:  # the node states as the renewal read them (its statement checks again)
            states = {row.component_id: row.node_state for rows in read.checks.values() for row in rows}
        alap_ends = self._alap_ends(leases, new_end, verified.expires, grains, states, node_grains) if extending else {}
        for lease in leases:
            lapsed = _allocation_lapsed(lease, now)  # (the calendar refuses it: as without alap, it says why)
            if lease.id in after_asked and not lapsed and to_s(lease.end) > align_up(to_s(new_end), grains[lease.id]):
                kept[lease.id] = _spared_because(lease, new_end, slice_named)
            elif lease.id in alap_ends and new_end > lease.end and not lapsed:
                # It extends, never shortens: a lease that cannot end later stays as it is.
                reachable, why = alap_ends[lease.id]
                if reachable <= lease.end:
                    kept[lease.id] = f"geni_extend_alap cannot extend it: {why}"
                else:
                    renewals.append((lease.id, reachable, "down"))
                    if to_s(reachable) < align_up(to_s(new_end), grains[lease.id]):  # short of the end asked for
                        stopped[lease.id] = why
            else:
                renewals.append((lease.id, new_end, "up"))
        if not renewals and not alap:  # (named by the slice: every lease starts or ends after the end asked for)
            because = "; ".join(f"lease {lease.id} {_after_the_end(lease, new_end)}" for lease in leases)
            raise BadArgs(
                f"nothing to renew to {format_time(new_end)} in slice {slice_urn}: {because}. A Renew naming the "
                "slice extends leases and never shortens one: ask for a later end, or name a lease's slivers to end "
                "it earlier (Delete to cancel it)"
            )
        # The calendar first, every lease in one unit of work; then the testbed, and if it cannot follow, every
        # lease goes back as it was (on the testbed too): a Renew is done whole or not at all.
        try:
            written = self.bookings.renew_all(renewals, slice_expires=verified.expires, read=read) if renewals else []
        except BookingConflict as refused:
            raise self._renewal_conflict(refused, leases) from None
        by_id = {lease.id: lease for lease in written}
        renewed = [by_id.get(lease.id, lease) for lease in leases]
        followed: list[LeaseRecord] = []
        try:
            for before, after in zip(leases, renewed, strict=True):
                # The state as the renewal found it, under the lease's lock: a Provision that committed since the
                # leases were read (before authorizing) made a testbed reservation that must follow too. (One that
                # was still at work on the testbed moves the reservation itself, once it recorded the lease.)
                if after.state == "provisioned" and after.end != before.end:
                    self.backend.renew(before, after.end)
                    followed.append(before)
        except BaseException:
            self.bookings.renew_all([(lease.id, lease.end, "") for lease in leases if lease.id in by_id])
            for lease in followed:
                try:
                    self.backend.renew(lease, lease.end)
                except GeniError as exc:  # the reconciler compares the testbed with the calendar
                    log.warning("lease %s keeps its renewed end on the testbed: %s", lease.id, exc.message)
            raise
        if self.instances is not None:  # the plans of the leases' containers follow their slot
            self.instances.refresh_slots([lease.id for lease in followed])
        answer = []
        for before, after in zip(leases, renewed, strict=True):
            note = _renewal_note(before, after, kept.get(before.id, ""), stopped.get(before.id, ""))
            answer += [
                {**self._sliver_dict(sliver, after), "sfa_omf_renewal": note}
                for sliver in after.slivers
                if sliver_urns is None or sliver.urn in sliver_urns
            ]
        return answer

    def _lease_grains(self, leases: Sequence[LeaseRecord]) -> dict[str, int]:
        """Each lease's slot length as the calendar's renewal rounds its end: a boundary of every node's slots, the
        lcm of their grains (by lease id; one read of the nodes)."""
        return self._lease_grains_and_states(leases)[0]

    def _lease_grains_and_states(
        self, leases: Sequence[LeaseRecord]
    ) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
        """``_lease_grains``, and the state and the slot length of each of the leases' nodes (by component id), from
        the same read."""
        nodes = self.inventory.list_nodes(component_ids={node for lease in leases for node in lease.nodes})
        grain_of = {node.component_id: max(node.grain_s, 1) for node in nodes}
        grains = {
            lease.id: math.lcm(*(grain_of.get(node, 1) for node in lease.nodes)) if lease.nodes else 1
            for lease in leases
        }
        return grains, {node.component_id: node.state for node in nodes}, grain_of

    def _alap_ends(
        self,
        leases: Sequence[LeaseRecord],
        asked: datetime,
        credential_expires: datetime,
        grains: Mapping[str, int],
        node_states: Mapping[str, str],
        node_grains: Mapping[str, int],
    ) -> dict[str, tuple[datetime, str]]:
        """geni_extend_alap: each lease's latest reachable end, with what limits it in words. The end asked for,
        rounded up to the lease's slots as a plain Renew rounds it, unless something comes first: the slice
        credential's expiry, the operator's maximum duration (counted as the calendar's renewal counts it:
        ``max_duration_counted_from``, over ``node_grains`` by component id) or the next booking of one of its nodes
        (one read of the bookings after the leases' ends); then the last slot boundary before it (``grains``: each
        lease's slot length, ``_lease_grains``); then the per-slice and per-user limits (``Bookings.limits_reach``,
        the leases in turn). A lease with a node that is not usable (in
        maintenance, or lost: ``node_states`` by component id) reaches only its own end: it is kept, not extended,
        while the other leases are (a plain Renew of it is refused, as a booking of the node is)."""
        longest = self.policy.max_duration_s
        caps: dict[str, tuple[int, str]] = {}
        for lease in leases:
            grain = grains[lease.id]
            start_s = to_s(lease.start)
            counted_from_s = max_duration_counted_from(start_s, (node_grains.get(node, 1) for node in lease.nodes))
            since = (
                f"its start ({format_time(lease.start)})"
                if counted_from_s == start_s
                else f"its first whole slot ({format_time(from_s(counted_from_s))}; it was booked from now, at "
                f"{format_time(lease.start)}, and the part of a slot it began in is not counted)"
            )
            limits = [
                (
                    align_down(to_s(credential_expires), grain),
                    f"the slice credential expires at {format_time(credential_expires)} (renew the slice at its "
                    "authority, then renew the lease with the new slice credential); leases end on slot boundaries",
                ),
                (
                    align_down(counted_from_s + longest, grain),
                    f"a lease lasts at most {human_duration(longest)} from {since}; leases end on slot boundaries",
                ),
            ]
            ceiling = min(limits, key=lambda found: found[0])
            asked_up = align_up(to_s(asked), grain)
            asked_for = (asked_up, f"the end asked for is {format_time(asked)}")
            caps[lease.id] = asked_for if asked_up <= ceiling[0] else ceiling
        busy = self._held_between(leases, max(end_s for end_s, _ in caps.values()))
        ends: dict[str, tuple[datetime, str]] = {}
        for lease in leases:
            down = [node for node in lease.nodes if node_states.get(node, "usable") != "usable"]
            if down:
                ends[lease.id] = (lease.end, f"{down[0]} {unusable_why(node_states[down[0]])}")
                continue
            held = {node: busy.get(node, []) for node in lease.nodes}
            end_s, why = reach_before_next_booking(to_s(lease.end), caps[lease.id], held, grains[lease.id])
            ends[lease.id] = (from_s(end_s), why)
        # Then the per-slice and per-user limits over what is left (one read; in the leases' order, as the renewal
        # checks them: the extensions granted so far count against the next ones). Else the renewal refused the
        # whole Renew on the first lease over a limit instead of extending each as far as the limits allow.
        wanted = [
            AlapExtension(lease.id, lease.owner_urn, to_s(lease.end), to_s(ends[lease.id][0]), grains[lease.id])
            for lease in leases
            if lease.id in ends and ends[lease.id][0] > lease.end
        ]
        for lease_id, (end_s, why) in self.bookings.limits_reach(wanted).items():
            ends[lease_id] = (from_s(end_s), why)
        return ends

    def _held_between(self, leases: Sequence[LeaseRecord], until_s: int) -> dict[str, list[tuple[int, int]]]:
        """The windows held on the leases' nodes that end after the earliest of their ends and start before
        ``until_s``, by node: one read."""
        after_s = min((to_s(lease.end) for lease in leases), default=0)
        return self.bookings.held_windows_of({node for lease in leases for node in lease.nodes}, after_s, until_s)

    def _renewal_conflict(self, refused: BookingConflict, leases: Sequence[LeaseRecord]) -> GeniError:
        """A Renew's extension that another booking holds (or a node out of use refuses), in a Renew's words: which
        lease cannot be extended to what, who holds the time, and how far it can go."""
        grains = self._lease_grains(leases)
        said: list[str] = []
        for conflict in refused.conflicts:
            lease = next(
                (found for found in leases if conflict.node in found.nodes and found.end == conflict.start), None
            )
            if lease is None:
                said.append(conflict.describe())
                continue
            reach = lease.end
            if conflict.clashing:
                first = min(start for start, _ in conflict.clashing)
                reach = max(from_s(align_down(to_s(first), grains[lease.id])), lease.end)
            how_far = (
                f"it can be extended to {format_time(reach)} at the latest (ask for that end, or for geni_extend_alap)"
                if reach > lease.end
                else f"it cannot be extended now and keeps its end {format_time(lease.end)}"
            )
            said.append(
                f"lease {lease.id} cannot be extended to {format_time(conflict.end)}: {conflict.describe()}; {how_far}"
            )
        return GeniError(Reason.BOOKING_CONFLICT, f"nothing was renewed: {'; '.join(said)}")

    def delete(
        self, caller_chain: GidChain, urns: Sequence[str], credentials: Any, options: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        at_once = self._delete_allocation_at_once(caller_chain, urns, credentials, options)
        if at_once is not None:
            return at_once
        slice_urn, sliver_urns, read = self._resolve_with_leases(urns)
        self.authorize("Delete", caller_chain, credentials, slice_urn, options)
        deleted = []
        leases = self._leases(slice_urn, sliver_urns) if read is None else read
        if not leases:
            raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to delete")
        _refuse_part_of_a_lease(leases, sliver_urns, "deleted")
        if read is None:  # (a read of the call holds every sliver it names)
            self._refuse_unknown_slivers(slice_urn, sliver_urns, leases)
        for lease in leases:
            self._end_lease(lease)
            deleted.append(self.bookings.cancel(lease.id))
        self.withdraw_keys_if_done(slice_urn)
        return [self._sliver_dict(sliver, lease) for lease in deleted for sliver in lease.slivers]

    def _delete_allocation_at_once(
        self, caller_chain: GidChain, urns: Sequence[str], credentials: Any, options: Mapping[str, Any]
    ) -> list[dict[str, Any]] | None:
        """The commonest Delete in one statement (PostgreSQL): the slivers named are all of one allocated lease (never
        provisioned: nothing to release on the testbed) of the one slice the call's credentials name, and no
        containers run here. The caller is authorized on that slice first, exactly as below; the statement cancels the
        lease only if it is that slice's and its slivers are exactly those named (some of them only: the usual path
        refuses, in _refuse_part_of_a_lease). Anything else answers None, having written nothing, and the Delete takes
        its usual path: it reads the slivers, authorizes their own slice, and answers or refuses as it always did (an
        unknown sliver before a bad credential)."""
        if self.instances is not None or self.database.is_sqlite:
            return None
        named = self._named_slivers(urns)
        if not named or len(named) > MAX_LISTED:  # (more than one statement can name: the usual path)
            return None
        try:
            slice_urn = self._credentials_slice(credentials)
            if slice_urn is None:
                return None
            self.authorize("Delete", caller_chain, credentials, slice_urn, options)
        except GeniError:
            return None
        lease = self.bookings.cancel_allocated_holding(slice_urn, named)
        if lease is None:
            return None
        self.withdraw_keys_if_done(slice_urn)
        return [self._sliver_dict(sliver, lease) for sliver in lease.slivers]

    def _credentials_slice(self, credentials: Any) -> str | None:
        """The slice the call's privilege credentials are for, when they name one slice (verified: cached)."""
        now = self.clock()
        slices = set()
        for xml in split_credentials(credentials).privilege:
            try:
                verified = self.verifier.verify(xml, now)
            except GeniError:
                continue
            if verified.target_type == "slice":
                slices.add(verified.target_urn)
        return slices.pop() if len(slices) == 1 else None

    def perform_operational_action(
        self, caller_chain: GidChain, urns: Sequence[str], credentials: Any, action: str, options: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        slice_urn, sliver_urns = self._resolve(urns)
        verified = self.authorize("PerformOperationalAction", caller_chain, credentials, slice_urn, options)
        event = operational_action(str(action))
        leases = self._leases(slice_urn, sliver_urns)
        now = self.clock()
        if sliver_urns is None:  # the slice's leases whose slot is over are being released: not acted on
            leases = [lease for lease in leases if not _lease_ended(lease, now)] or leases
        if not leases:
            raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to act on")
        self._refuse_unknown_slivers(slice_urn, sliver_urns, leases)
        _refuse_ended(leases, now)
        if event == Event.UPDATE_USERS:
            return self._update_users(slice_urn, verified.owner_urn, sliver_urns, leases, options)
        if event != Event.SAVE_IMAGE:  # (it saves one container; the users above are the whole slice's)
            _refuse_part_of_a_lease(leases, sliver_urns, "started, stopped and restarted")
        left_out: dict[str, str] = {}  # lease id -> why a call naming the slice left it as it is
        if event != Event.SAVE_IMAGE and sliver_urns is None:
            # Named by the slice: the leases running now are acted on, the others left as they are (as Provision
            # and Renew naming the slice leave out what they cannot act on); refused only if none runs.
            leases, left_out = _leases_running_now(slice_urn, leases, str(action), now)
        else:
            _refuse_unprovisioned(leases, str(action))
        if event == Event.SAVE_IMAGE:
            if self.instances is None:
                raise GeniError(Reason.UNSUPPORTED, "this aggregate runs no containers: there is nothing to save")
            named = [urn for urn in ([urns] if isinstance(urns, str) else urns) if urn != node_sliver_of(urn)]
            if len(named) == 1 and not options.get("sfa_omf_instance"):
                options = {**options, "sfa_omf_instance": named[0]}  # the one container named by its URN
            save_image(self.instances, leases, options, verified.owner_urn, self.clock())
            return self._sliver_dicts(slice_urn, sliver_urns)
        _check_slots_running(leases, str(action), now)  # the checks before anything acts: a refusal changes nothing
        if self.instances is not None:
            self.instances.check_operable(str(action), [lease.id for lease in leases])
        # On OAR with containers the job (the node sliver) runs on: the action is the containers', checked above.
        node_slivers_switch = self.instances is None or self.instances.plans is None
        recorded = self._checked_transitions(leases, event) if node_slivers_switch else {}
        if isinstance(self.backend, OperatingBackend):  # the testbed first: if it fails, nothing is recorded
            self.backend.operate(leases, event.value)
        if self.instances is not None:
            act_on_containers(self.instances, event, leases, self._slice_keys(slice_urn), now)
        # The testbeds here have acted when operate returns: a lease the table put in geni_configuring is ready (the
        # table's backend_ready), as Status reports it and the web calendar and the CLI show it.
        recorded = {
            lease_id: next_operational(state, Event.BACKEND_READY) if state == Operational.CONFIGURING else state
            for lease_id, state in recorded.items()
        }
        for state in sorted(set(recorded.values())):  # (one write, but for a geni_start of running and stopped ones)
            self.bookings.set_operational_states([lease_id for lease_id, to in recorded.items() if to == state], state)
        return self._sliver_dicts(slice_urn, sliver_urns, left_out=left_out)

    def _checked_transitions(self, leases: Sequence[LeaseRecord], event: Event) -> dict[str, Operational]:
        """The operational state each lease is to record after ``event``, from the one transition table
        (states.py), checked for every sliver of the leases (an action switches whole leases) in the state Status
        reports now; BADARGS naming the sliver, its state and the actions possible from it otherwise."""
        containers = self._containers_of(leases)
        recorded: dict[str, Operational] = {}
        for lease in leases:
            reached: set[Operational] = set()
            for sliver in lease.slivers:
                health = node_health(containers.get(sliver.urn, [])) or self._health(sliver, lease)
                try:
                    reached.add(next_operational(Operational(health.operational_state), event))
                except IllegalTransition as refusal:
                    raise BadArgs(f"{refusal.message}: sliver {sliver.urn}; nothing was changed") from None
            # Slivers of one lease switch together; started from different states, the testbed says when all run.
            if reached:
                recorded[lease.id] = reached.pop() if len(reached) == 1 else Operational.CONFIGURING
        return recorded

    def _update_users(
        self,
        slice_urn: str,
        caller_urn: str,
        sliver_urns: set[str] | None,
        leases: list[LeaseRecord],
        options: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """geni_update_users: geni_users is the complete new set; keys left out stop working. No list is no
        "remove all". The testbed follows first, then the logins; the calendar records the new set only once both
        have (a failure puts both back). Another user's keys are only those known to be theirs (``_vouched_users``)."""
        sent = _users_sent(options)
        if not sent:
            raise BadArgs(
                "geni_update_users needs the option geni_users: the complete list of users and their keys "
                "(nothing was changed)"
            )
        users = self._vouched_users(slice_urn, caller_urn, sent)
        old_accounts = self._local_accounts(slice_urn)
        accounts = self._local_accounts(slice_urn, sent=users, replace=True)
        provisioned = [lease for lease in leases if lease.state == "provisioned"]
        self._users_to_testbed(provisioned, accounts, old_accounts)
        written: list[WrittenKeys] = []
        try:
            if self.unix_accounts is not None and provisioned:
                # Before the calendar records the new set (put back if the call fails); only the caller's own login
                # made a link fails the call (set_slice_keys).
                callers = {
                    account.login
                    for account in accounts
                    if any(same_urn(user_urn, caller_urn) for user_urn in account.user_urns)
                }
                written = self._write_slice_keys(accounts, slice_urn, callers, caller_urn)
                # A user left out of the list: their account loses this slice's keys too.
                gone = {account.login for account in old_accounts} - {account.login for account in accounts}
                written += self.unix_accounts.remove_slice_keys(gone, slice_urn)
            self.slices.update_users(slice_urn, users, replace=True)
        except BaseException:
            if self.unix_accounts is not None:
                self.unix_accounts.restore_slice_keys(written, slice_urn)
            self._users_back_on_testbed(provisioned, old_accounts)
            raise
        if self.instances is not None:  # a job yet to start makes its containers with the new keys
            # Every provisioned lease of the slice, not only those named: the users are the whole slice's.
            whole_slice = [
                lease.id for lease in self.bookings.leases(slice_urn=slice_urn) if lease.state == "provisioned"
            ]
            self.instances.rewrite_keys(whole_slice, [key for account in accounts for key in account.ssh_keys])
        return self._sliver_dicts(slice_urn, sliver_urns)

    def _write_slice_keys(
        self, accounts: Sequence[LocalAccount], slice_urn: str, callers: set[str], caller_urn: str
    ) -> list[WrittenKeys]:
        """The slice's block of each login holds the login's keys (``UnixAccounts.set_slice_keys``; a link in one of
        ``callers`` fails the call). A login is made (useradd) only for the caller and for users with a key accepted
        for this slice (sent by themselves, registered here, recorded for them): a member naming users with no such
        key (made up, of any authority, up to geni_users' bound per call) makes no account for them. Such a login
        that exists already gets its block emptied (``remove_slice_keys``, which makes none). What changed is
        returned for ``restore_slice_keys``."""
        assert self.unix_accounts is not None
        keyed = [account for account in accounts if account.ssh_keys or account.login in callers]
        keyless = sorted({account.login for account in accounts} - {account.login for account in keyed})
        if keyless:
            log.info(
                "%s named %d user(s) in %s with no SSH key accepted for them: no local account is made for them "
                "(%s); their own call, or a key registered for them here, makes it",
                caller_urn,
                len(keyless),
                slice_urn,
                ", ".join(keyless[:5]) + (", ..." if len(keyless) > 5 else ""),
            )
        written = self.unix_accounts.set_slice_keys(keyed, slice_urn, required_logins=callers)
        if keyless:
            try:
                written += self.unix_accounts.remove_slice_keys(keyless, slice_urn)
            except BaseException:
                self.unix_accounts.restore_slice_keys(written, slice_urn)
                raise
        return written

    def _users_to_testbed(
        self, leases: Sequence[LeaseRecord], accounts: Sequence[LocalAccount], old_accounts: Sequence[LocalAccount]
    ) -> None:
        """The testbed's users of these provisioned leases become ``accounts``; when it fails for one, those done
        go back to ``old_accounts`` (the call fails and writes nothing) and the error is raised."""
        updated: list[LeaseRecord] = []
        try:
            for lease in leases:
                self.backend.update_users(lease, accounts)
                updated.append(lease)
        except BaseException:
            self._users_back_on_testbed(updated, old_accounts)
            raise

    def _users_back_on_testbed(self, leases: Sequence[LeaseRecord], old_accounts: Sequence[LocalAccount]) -> None:
        """A call that gave these leases new users on the testbed fails: they go back to the users they had. A
        failure here is logged: the call's own error is the one to report."""
        for lease in leases:
            try:
                self.backend.update_users(lease, old_accounts)
            except GeniError as exc:
                log.warning("lease %s keeps the new users on the testbed: %s", lease.id, exc.message)

    def shutdown(
        self, caller_chain: GidChain, slice_urn: str, credentials: Any, options: Mapping[str, Any] | None = None
    ) -> bool:
        """Stop everything of the slice now; it books nothing more until an operator releases it. ``options``: the
        call's (geni_speaking_for: a tool shuts the slice down for a user, as with every other method)."""
        _check_urn(slice_urn, "slice")
        verified = self.authorize("Shutdown", caller_chain, credentials, slice_urn, options)
        self.slices.set_shut_down(slice_urn, True, expires=verified.expires)  # first: no new booking slips in
        leases = self.bookings.leases(slice_urn=slice_urn)
        # Their users are told who cancelled them and why (unlike after their own Delete): noted before cancelling.
        self.alerts.cancelling(
            slice_urn,
            [lease.id for lease in leases],
            verified.owner_urn,
            f"slice shut down at {self.settings.urn} (GENI Shutdown)",
            "It books nothing more here until the operator releases it: contact the operator",
        )
        for lease in leases:
            self._end_lease(lease)
            self.bookings.cancel(lease.id)
        self._withdraw_keys_or_retry(slice_urn)
        return True

    def withdraw_keys_if_done(self, slice_urn: str) -> None:
        """A slice with no provisioned lease left loses its keys in the local accounts: users log in during their
        slots, not after them. A slice the registry removed (``slice_urn`` marked): the logins its members' keys were
        written in, under the slice's own URN (``_removed_slice_blocks``)."""
        if self.unix_accounts is None:
            return
        if in_reactor_call():  # files of local accounts: never in the reactor thread (waits.py)
            blocking(self.withdraw_keys_if_done, slice_urn)
            return
        if any(lease.state == "provisioned" for lease in self.bookings.leases(slice_urn=slice_urn)):
            return
        if is_removed_mark(slice_urn):
            blocks = self._removed_slice_blocks(slice_urn)
            if blocks is not None:
                self.unix_accounts.remove_slice_keys(blocks[1], blocks[0])
            return
        self.unix_accounts.remove_slice_keys([account.login for account in self._local_accounts(slice_urn)], slice_urn)

    def _removed_slice_blocks(self, marked_urn: str) -> tuple[str, list[str]] | None:
        """A slice the registry removed, renamed ``marked_urn`` ("URN (removed TIME)", registry/records.py): the URN
        its blocks are labelled with, and the logins they were written in, read from what the removal kept (the
        login it retired for the slice, its members' URNs marked) and never derived anew (a login derived now could
        be another user's). A login the slice registered again under that URN uses now, while it has a provisioned
        lease, keeps its block (the same label: the new slice's keys). None (logged) when the URN, cut to fit the
        mark, cannot be told."""
        marked = removed_mark_parts(marked_urn)
        if marked is None:
            return None
        members = []
        for user in self.slices.get(marked_urn).users:
            parts = removed_mark_parts(user.user_urn)
            members.append(parts[0] if parts is not None else user.user_urn)
        found = lease_logins(self.database, [marked_urn, *members])
        slice_urn = marked[0]
        if may_be_cut(marked_urn):
            longer = sorted(urn for urn in found.retired if urn.startswith(slice_urn))
            if len(longer) != 1:
                log.warning("the keys of the removed slice %s stay in its logins: its URN cannot be told", marked_urn)
                return None
            slice_urn = longer[0]
        logins: set[str] = set()
        if self.accounts.policy == "shared":
            logins.add(self.accounts.shared_login)
        elif self.accounts.policy == "per-slice":
            login = found.login_of(marked_urn)  # the one its removal retired
            if login is not None:
                logins.add(login)
        else:
            logins.update(login for member in members if (login := _written_login(found, member)) is not None)
        if any(lease.state == "provisioned" for lease in self.bookings.leases(slice_urn=slice_urn)):
            logins -= {account.login for account in self._local_accounts(slice_urn)}
        return slice_urn, sorted(logins)

    @property
    def withdrawals_due(self) -> dict[str, str]:
        """The slices whose keys are still to be taken out of their logins, and why (read from the calendar)."""
        return {due.slice_urn: due.reason for due in self.withdrawals.due()}

    def _withdraw_keys_or_retry(self, slice_urn: str, due: bool | None = None) -> None:
        """``withdraw_keys_if_done``; a failure is logged with the slice and why, and the slice is written due
        (``Withdrawals``, am/withdrawals.py): retire_ended, in whichever process leads, tries again at each of its
        passes until it succeeds, which deletes the row. ``due``: whether the slice is known to be due already (None:
        not known, read when the withdrawal succeeds)."""
        if self.unix_accounts is None and not due:
            return  # no key is ever written, so none is due (a row of an earlier create_accounts = yes: retire_ended)
        try:
            self.withdraw_keys_if_done(slice_urn)
        except Exception as exc:  # (the other slices are still to do)
            reason = exc.message if isinstance(exc, GeniError) else f"{type(exc).__name__}: {exc}"
            self.withdrawals.failed(slice_urn, reason)
            return
        self.withdrawals.succeeded(slice_urn, due)

    def finish_testbed_cancellations(self, lease_ids: Sequence[str]) -> None:
        """Leases the testbed's reconciler cancelled in the calendar itself (an OAR Delete whose answer came too late,
        finished by the reconciler): what Delete does after the calendar is done here, run by the server after the
        round. Each lease's containers are destroyed, and its slice's keys taken out of the local accounts when it
        has no provisioned lease left. A failure is logged; the other leases are done all the same."""
        for lease_id in lease_ids:
            try:
                window = self.bookings.windows_of([lease_id]).get(lease_id)
                if window is None:
                    log.warning("lease %s, cancelled by the testbed's reconciler, is not in the calendar", lease_id)
                    continue
                slice_urn = window[0]
                # (Cancelled: read with the inactive leases.)
                for lease in self.bookings.leases(slice_urn=slice_urn, active_only=False):
                    if lease.id == lease_id:
                        self._destroy_containers(lease)
                self._withdraw_keys_or_retry(slice_urn)
            except Exception as exc:  # (the next lease's are still to do)
                log.warning(
                    "lease %s: what its Delete does after the calendar could not be finished: %s", lease_id, exc
                )

    def retire_ended(self) -> int:
        """Provisioned leases whose slot is over: release them on the testbed, take their slices' keys away.
        Run periodically by the server; returns how many leases ended. Each slice's keys are withdrawn on their own:
        one that fails (logged) fails no other, and is tried again at every later pass until it succeeds (the
        leases are ended already: only the calendar's due withdrawals remember it, am/withdrawals.py)."""
        ended = self.bookings.retire_ended()
        for lease in ended:
            try:
                self._end_lease(lease, provisioned=True)
            except GeniError as exc:  # the testbed ends the reservation itself at its end; its reconciler checks
                log.warning("lease %s ended but the testbed did not release it: %s", lease.id, exc.message)
        due = {withdrawal.slice_urn for withdrawal in self.withdrawals.due()}
        for slice_urn in sorted({lease.slice_urn for lease in ended} | due):
            self._withdraw_keys_or_retry(slice_urn, slice_urn in due)
        return len(ended)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _resolve_with_leases(self, urns: Sequence[str]) -> tuple[str, set[str] | None, list[LeaseRecord] | None]:
        """``_resolve``, and the leases ``_leases`` would answer then, in one read when the URNs name slivers that
        all belong to active leases of one slice (nearly always); otherwise (a slice URN, an unknown or inactive
        sliver) the leases are None and nothing differs from ``_resolve``: read them after authorizing."""
        named = self._named_slivers(urns)
        if named:
            leases = self.bookings.leases_holding_slivers(named)
            if _hold_in_one_slice(named, leases):
                return leases[0].slice_urn, named, leases
        slice_urn, sliver_urns = self._resolve(urns)
        return slice_urn, sliver_urns, None

    def _resolve_for_renewal(self, urns: Sequence[str]) -> tuple[str, set[str] | None, RenewalRead | None]:
        """``_resolve_with_leases`` for Renew: the same one read also brings what the renewal checks, so that a
        renewal of one lease is one more statement (on PostgreSQL)."""
        named = self._named_slivers(urns)
        if named:
            read = self.bookings.leases_for_renewal(named)
            if _hold_in_one_slice(named, read.leases):
                return read.leases[0].slice_urn, named, read
        slice_urn, sliver_urns = self._resolve(urns)
        return slice_urn, sliver_urns, None

    def _named_slivers(self, urns: Sequence[str]) -> set[str]:
        """The node slivers named, when ``urns`` is a valid list of sliver URNs only (else empty: _resolve says why)."""
        if isinstance(urns, str):
            urns = [urns]
        if not isinstance(urns, (list, tuple)) or not urns or not all(isinstance(urn, str) for urn in urns):
            return set()
        if any(_urn_type(urn) != "sliver" for urn in urns):
            return set()
        return {node_sliver_of(urn) for urn in urns}

    def _resolve(self, urns: Sequence[str]) -> tuple[str, set[str] | None]:
        """The slice a URN list is about, and the sliver URNs it names (None: the whole slice)."""
        if isinstance(urns, str):
            urns = [urns]
        if not urns:
            raise BadArgs("name a slice URN or sliver URNs")
        slices = [urn for urn in urns if _urn_type(urn) == "slice"]
        # A container's URN names its node's sliver: the call acts on (and answers for) that sliver and its containers.
        slivers = {node_sliver_of(urn) for urn in urns if _urn_type(urn) == "sliver"}
        others = [urn for urn in urns if _urn_type(urn) not in ("slice", "sliver")]
        if others:
            raise BadArgs(f"{others[0]} is neither a slice nor a sliver URN")
        if (slices and slivers) or len(set(slices)) > 1:
            raise BadArgs("name one slice, or slivers of one slice")
        if slices:
            return slices[0], None
        owners = self.bookings.slices_of_slivers(slivers)
        if not owners:
            raise GeniError(Reason.NOT_FOUND, f"no such sliver here: {sorted(slivers)[0]}")
        if len(owners) > 1:
            raise BadArgs("the slivers named belong to different slices")
        return owners.pop(), slivers

    def _end_lease(self, lease: LeaseRecord, provisioned: bool | None = None) -> None:
        """Release the lease on the testbed (when provisioned) and destroy its containers. When the testbed's jobs
        run them (OAR), the release is what destroys them: their rows say destroyed (and free their addresses) only
        once it succeeded, so a failed release leaves them live and a retry finishes the job. Here, they go first."""
        if in_reactor_call():  # the testbed's requests and the containers' commands: in a thread (waits.py)
            blocking(self._end_lease, lease, provisioned)
            return
        on_nodes = self.instances is not None and self.instances.plans is not None
        if not on_nodes:
            self._destroy_containers(lease)
        if lease.state == "provisioned" if provisioned is None else provisioned:
            self.backend.release(lease)
        if on_nodes:
            self._destroy_containers(lease)

    def _destroy_containers(self, lease: LeaseRecord) -> None:
        """Nothing outlives a lease: its containers go with it (a failure here is retried by run_instances)."""
        if self.instances is None:
            return
        try:
            self.instances.destroy_lease(lease.id, self.clock())
        except GeniError as exc:
            log.warning("lease %s: its containers could not all be destroyed yet: %s", lease.id, exc.message)

    def run_instances(self) -> tuple[list[str], list[str]]:
        """The containers' clock: start those of slots that began, destroy those of leases that are over and any
        container of ours no lease has. Run periodically by the server; returns (started, destroyed) names."""
        if self.instances is None:
            return [], []
        return self.instances.tick(self.clock(), self._slice_keys, self._testbed_state)

    def _testbed_state(self, slice_urn: str, lease_id: str) -> SliverHealth | None:
        """A provisioned lease's operational state on the testbed, with its words (the node agents', else the
        backend's: an OAR job killed reads geni_failed or geni_notready); None when the experimenter stopped it."""
        lease = next((found for found in self.bookings.leases(slice_urn=slice_urn) if found.id == lease_id), None)
        if lease is None or not lease.slivers:
            return SliverHealth(Operational.FAILED, "the lease is no longer recorded")
        sliver = lease.slivers[0]
        if sliver.operational_state == Operational.NOTREADY:
            return None
        return self._health(sliver, lease)

    def _slice_keys(self, slice_urn: str) -> list[str]:
        """Every SSH key of the slice's users (what a container's root accepts)."""
        return [key for account in self._local_accounts(slice_urn) for key in account.ssh_keys]

    def _end_provision_hold_quietly(self, hold: ProvisionHold, testbed_may_hold: set[str]) -> None:
        """End a failed Provision's hold on its allocations but those the testbed may still hold (the call's own error
        is the one to report): if the calendar cannot be reached, the hold lapses by itself and the sweep takes them
        then."""
        try:
            self.bookings.end_provision_hold(hold, testbed_may_hold)
        except Exception as exc:
            log.warning("could not end the hold of a failed Provision on its allocations: %s", exc)

    def _release_quietly(self, leases: Sequence[LeaseRecord]) -> set[str]:
        """Give back on the testbed what a failing call had provisioned there (its error is the one to report).
        Returns the ids of the leases the testbed may still hold (their release failed)."""
        still_held: set[str] = set()
        for lease in leases:
            try:
                self.backend.release(lease)
            except GeniError as exc:  # the reconciler deletes what is left: the lease is not provisioned here
                log.warning("could not give back lease %s on the testbed: %s", lease.id, exc.message)
                still_held.add(lease.id)
        return still_held

    def _vouched_users(
        self, slice_urn: str, caller_urn: str, sent: Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]]:
        """The users a call sent, each with the keys that may go into that user's login: keys in a user's login come
        from that user, never from another member of the slice (with per-user accounts the login is the user's own,
        kept across slices). The caller's own entry keeps every key, and so does every entry when the members share
        the caller's login by design (per-slice, shared). Another user keeps only the keys known to be theirs:
        registered for them in the local registry, or recorded for them in this slice already (which came from
        them, or were known to be theirs). The other keys are left out (logged), but the entry is not refused and
        its user stays a member: omni and jFed send every slice member's keys from the clearinghouse. Reads only."""
        if self.accounts.policy != "per-user":
            return {user_urn: list(keys) for user_urn, keys in sent.items()}
        vouched: dict[str, list[str]] = {}
        recorded: dict[str, list[str]] | None = None
        for user_urn, keys in sent.items():
            if same_urn(user_urn, caller_urn):
                vouched[user_urn] = list(keys)
                continue
            if recorded is None:
                recorded = self._users_of(slice_urn)
            known = {_key_material(key) for key in [*recorded.get(user_urn, []), *self._registered_keys(user_urn)]}
            vouched[user_urn] = [key for key in keys if _key_material(key) in known]
            if len(vouched[user_urn]) < len(keys):  # routine with omni and jFed: not a warning
                log.info(
                    "%s sent %d SSH key(s) for %s in %s that are not known to be theirs: left out of their login "
                    "(their own call, or their record in the local registry, puts keys there)",
                    caller_urn,
                    len(keys) - len(vouched[user_urn]),
                    user_urn,
                    slice_urn,
                )
        return vouched

    def _registered_keys(self, user_urn: str) -> list[str]:
        """The SSH keys the local registry holds for this user (none for a user it does not know)."""
        record = self.records.get(parse_urn(user_urn).hrn) if is_urn(user_urn) else None
        return list(record.keys) if record is not None and record.urn == user_urn else []

    def local_accounts(self, slice_urn: str) -> list[LocalAccount]:
        """The slice's local logins with their users' SSH keys (what node agents set up at a lease's start)."""
        return self._local_accounts(slice_urn)

    def _local_accounts(
        self,
        slice_urn: str,
        also: str | None = None,
        sent: Mapping[str, Sequence[str]] | None = None,
        replace: bool = False,
    ) -> list[LocalAccount]:
        """The slice's users grouped by the local login they map to, with their keys: those sent with the slice
        (geni_users, sfa_users) and those registered in the local registry. ``also``: a user (the caller) who
        must have an account even without keys. ``sent``: users of this call, not written yet, merged in (or, with
        ``replace``, instead of the slice's)."""
        recorded = [] if replace else self.slices.get(slice_urn).users
        # (A removed slice's members are kept marked, for withdraw_keys_if_done only: no login of theirs is made.)
        users = {user.user_urn: list(user.ssh_keys) for user in recorded if not is_removed_mark(user.user_urn)}
        for user_urn, keys in (sent or {}).items():
            known = users.setdefault(user_urn, [])
            known.extend(key for key in keys if key not in known)
        if also is not None:
            users.setdefault(also, [])
        by_login: dict[str, tuple[list[str], list[str]]] = {}
        for user_urn, keys in users.items():
            registered = self._registered_keys(user_urn)
            urns, login_keys = by_login.setdefault(self.accounts.login_for(user_urn, slice_urn), ([], []))
            urns.append(user_urn)
            login_keys.extend(key for key in [*keys, *registered] if key not in login_keys)
        return [LocalAccount(login, tuple(urns), tuple(keys)) for login, (urns, keys) in sorted(by_login.items())]

    def _leases(self, slice_urn: str, sliver_urns: set[str] | None) -> list[LeaseRecord]:
        leases = self.bookings.leases(slice_urn=slice_urn)
        if sliver_urns is None:
            return leases
        return [lease for lease in leases if any(s.urn in sliver_urns for s in lease.slivers)]

    def _leases_to_act_on(self, slice_urn: str, sliver_urns: set[str] | None) -> list[LeaseRecord]:
        """``_leases`` for Provision and Renew: a call naming the whole slice leaves out allocations whose time to be
        provisioned is over, and provisioned leases whose slot is over (the sweeps release them within a minute; they
        are refused, which would refuse the whole call). Named by their sliver URNs, they are kept: the refusal says
        why."""
        leases = self._leases(slice_urn, sliver_urns)
        if sliver_urns is not None:
            return leases
        now = self.clock()
        live = [lease for lease in leases if not _allocation_lapsed(lease, now) and not _lease_ended(lease, now)]
        return live or leases  # (only lapsed or ended ones: the refusal names them)

    def _refuse_unknown_slivers(
        self, slice_urn: str, sliver_urns: set[str] | None, leases: Sequence[LeaseRecord]
    ) -> None:
        """SEARCHFAILED, before anything is done, for sliver URNs named that the slice never held here (a typo,
        another aggregate's sliver) next to ones it holds (``leases``: its active leases holding those named). A
        sliver of a lease of the slice deleted (or ended) already is not refused: it changes nothing (Delete twice).
        The slice's past leases are read only when a sliver named is not among ``leases``."""
        if sliver_urns is None:
            return
        missing = sliver_urns - {sliver.urn for lease in leases for sliver in lease.slivers}
        if not missing:
            return
        held_ever = self.bookings.leases(slice_urn=slice_urn, active_only=False)
        unknown = sorted(missing - {sliver.urn for lease in held_ever for sliver in lease.slivers})
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise GeniError(
                Reason.NOT_FOUND,
                f"no such sliver here: {shown} (slice {slice_urn} never held it at this aggregate); nothing was "
                "changed: name only the slice's slivers, or the slice URN",
            )

    def _slice_view(self, slice_urn: str, sliver_urns: set[str] | None) -> SliceView:
        """The slice's leases (those holding these slivers), their nodes and the slice's users (none when it holds no
        lease here), read now in one statement."""
        view = self.bookings.slice_view(slice_urn)
        leases, nodes = list(view.leases), view.nodes
        if sliver_urns is not None:
            leases = [lease for lease in leases if any(s.urn in sliver_urns for s in lease.slivers)]
            shown = {sliver.node for lease in leases for sliver in lease.slivers}
            nodes = {node: seen for node, seen in nodes.items() if node in shown}
        return SliceView(leases=tuple(leases), nodes=nodes, users=view.users if leases else ())

    def _health(self, sliver: SliverRecord, lease: LeaseRecord) -> SliverHealth:
        if sliver.allocation_state != Allocation.PROVISIONED:
            return SliverHealth(Operational.PENDING_ALLOCATION)
        now = self.clock()
        if self.node_health is not None:
            known = self.node_health(sliver, lease, now)
            if known is not None:
                return known
        if "health" in getattr(self.backend, "local_operations", ()):
            return self.backend.health(sliver, lease, now)
        return blocking(self.backend.health, sliver, lease, now)  # (OAR asks its API: never in the reactor thread)

    def _sliver_dict(self, sliver: SliverRecord, lease: LeaseRecord) -> dict[str, Any]:
        allocation = str(sliver.allocation_state)
        now = self.clock()
        if allocation == Allocation.PROVISIONED and lease.end <= now:
            # Its slot is over and the sweep has yet to release it: shown as the states table has it once over.
            allocation = str(next_allocation(Allocation.PROVISIONED, Event.SLOT_ENDED))
            health = SliverHealth(
                Operational.PENDING_ALLOCATION,
                f"the slot of lease {lease.id} ended at {format_time(lease.end)} and it is being released; Allocate "
                "again",
            )
        elif allocation == Allocation.ALLOCATED and _allocation_lapsed(lease, now):
            # Not provisioned in time and the sweep has yet to release it: shown as the states table has it once
            # expired (from the lease record alone: no statement more on Status's path).
            allocation = str(next_allocation(Allocation.ALLOCATED, Event.EXPIRE))
            health = SliverHealth(
                Operational.PENDING_ALLOCATION,
                f"lease {lease.id} {LAPSED_ALLOCATION} "
                f"{format_time(_allocation_expiry(lease))} and it is being released; Allocate again",
            )
        else:
            health = self._health(sliver, lease)
        return {
            "geni_sliver_urn": sliver.urn,
            "geni_expires": format_time(_sliver_expiry(sliver, lease)),
            "geni_allocation_status": allocation,
            "geni_operational_status": str(health.operational_state),
            "geni_error": health.error,
            "geni_start_time": format_time(lease.start),
            "geni_end_time": format_time(lease.end),
        }

    def _sliver_dicts(
        self,
        slice_urn: str,
        sliver_urns: set[str] | None,
        leases: list[LeaseRecord] | None = None,
        left_out: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Each sliver's status, each followed by its containers' (a container is a sliver of its own). ``left_out``:
        lease id -> why a PerformOperationalAction did not act on it, in the geni_resource_status of its slivers and
        containers (AM API v3's field for an aggregate's own word on a sliver in that answer; geni_error is for an
        action that failed, and omni would report the call as failed at the aggregate)."""
        chosen = leases if leases is not None else self._leases(slice_urn, sliver_urns)
        containers = self._containers_of(chosen)
        answering = ssh_answering(i for found in containers.values() for i in found)  # at once, 1 s for them all
        pending = self.instances.pending_actions(lease.id for lease in chosen) if self.instances is not None else {}
        now = self.clock()
        answer = []
        for lease in chosen:
            for sliver in lease.slivers:
                if sliver_urns is not None and sliver.urn not in sliver_urns:
                    continue
                mine = containers.get(sliver.urn, [])
                entry = self._sliver_dict(sliver, lease)
                failed = node_health(mine)
                if failed is not None and entry["geni_operational_status"] != str(Operational.PENDING_ALLOCATION):
                    entry.update(geni_operational_status=str(failed.operational_state), geni_error=failed.error)
                allocation, waiting = entry["geni_allocation_status"], pending.get(lease.id, "")
                entries = [entry] + [container_dict(i, lease, now, allocation, answering, waiting) for i in mine]
                why = (left_out or {}).get(lease.id)
                if why:
                    for each in entries:
                        each["geni_resource_status"] = why
                answer += entries
        return answer

    def _containers_of(self, leases: Sequence[LeaseRecord]) -> dict[str, list[Instance]]:
        """The live containers of these leases, by the sliver URN of their node."""
        if self.instances is None:
            return {}
        found: dict[str, list[Instance]] = {}
        for instances in self.instances.of_leases(lease.id for lease in leases).values():
            for instance in instances:
                if instance.state in LIVE:
                    found.setdefault(instance.sliver_urn, []).append(instance)
        return found

    def _describe_slice(
        self, slice_urn: str, sliver_urns: set[str] | None, view: SliceView | None = None, sfa_leases: bool = False
    ) -> dict[str, Any]:
        """The slice's manifest and sliver statuses; ``view``: the slice as a booking just read it (Allocate), in
        place of reading its leases, their nodes and its users here; ``sfa_leases``: the manifest has SFA's <lease>
        elements too (list_leases "all" or "leases")."""
        if view is None:
            view = self._slice_view(slice_urn, sliver_urns)
        leases = list(view.leases)
        nodes = view.nodes
        users = view.users if leases else ()
        # Once per user, not per sliver: the first use creates the mapping (registry/accounts.py).
        logins = [self.accounts.login_for(user.user_urn, slice_urn) for user in users]
        manifest_slivers: list[ManifestSliver] = []
        # One <node> per client_id and node, however many leases hold it: jFed and omni match manifest nodes to the
        # request's by client_id, and a manifest sent back would name a client_id twice. Only leases that show the
        # node alike share it (the same image, no containers): a <node> holds one image, and one lease's would hide
        # the other's. Index in manifest_slivers, by (client_id, node, image).
        node_elements: dict[tuple[str, str, str], int] = {}
        grains = self._own_grains(leases) if sfa_leases else {}  # read only for SFA's view
        containers = self._containers_of(leases)
        for lease in leases:
            for sliver in lease.slivers:
                node = nodes.get(sliver.node)
                mine = containers.get(sliver.urn, [])
                client_id = sliver.client_id or (node.component_name if node else sliver.node)
                alike = (client_id, sliver.node, sliver.disk_image or "")
                shown = node_elements.get(alike) if not mine else None
                if shown is not None:  # its sliver_id stays the first lease's; this one's is in geni_slivers
                    first = manifest_slivers[shown]
                    manifest_slivers[shown] = replace(first, lease_ids=(*first.lease_ids, lease.id))
                else:
                    if not mine:
                        node_elements[alike] = len(manifest_slivers)
                    manifest_slivers.append(
                        ManifestSliver(
                            sliver_id=sliver.urn,
                            client_id=client_id,
                            component_id=sliver.node,
                            component_manager_id=self.settings.urn,
                            component_name=node.component_name if node else None,
                            exclusive=node.exclusive if node else True,
                            # The manifest shows the image under the one sliver type advertised (GENI puts it there).
                            sliver_type=CONTAINER_SLIVER_TYPE if mine else "raw-pc" if sliver.disk_image else None,
                            disk_image=sliver.disk_image or None,
                            lease_ids=(lease.id,),
                            hostname=node.component_name if node else None,
                            logins=tuple(
                                Login(username=login, hostname=node.component_name if node else "") for login in logins
                            ),
                            grain=grains.get(sliver.node),
                        )
                    )
                manifest_slivers += [
                    container_manifest_sliver(
                        instance,
                        sliver.client_id or sliver.node,
                        self.settings.urn,
                        node.component_name if node else None,
                        lease.id,
                    )
                    for instance in mine
                ]
        slivers = self._sliver_dicts(slice_urn, sliver_urns, leases)
        manifest = Manifest(
            slivers=tuple(manifest_slivers),
            leases=tuple(
                ManifestLease(
                    id=lease.id,
                    start=lease.start,
                    end=lease.end,
                    client_id=lease.client_id or None,
                    # The lease's sliver when it holds one node; one of several nodes' would name a part of it.
                    sliver_id=lease.slivers[0].urn if len(lease.slivers) == 1 else None,
                )
                for lease in leases
            ),
            generated=self.clock(),
            # When the slivers answered expire: the latest of them (an allocation expires before its lease ends; a
            # container, a sliver of its own, with its lease).
            expires=max(
                (
                    lease.end if containers.get(sliver.urn) else _sliver_expiry(sliver, lease)
                    for lease in leases
                    for sliver in lease.slivers
                    if sliver_urns is None or sliver.urn in sliver_urns
                ),
                default=None,
            ),
            slice_urn=slice_urn,
            grain=timedelta(seconds=self.policy.default_grain_s),
        )
        return {
            "geni_urn": slice_urn,
            "geni_rspec": write_manifest(manifest, sfa_leases=sfa_leases).decode("utf-8"),
            "geni_slivers": slivers,
        }

    def _own_grains(self, leases: Sequence[LeaseRecord]) -> dict[str, timedelta]:
        """The nodes of these leases whose grain differs from the aggregate's, with their grain (SFA's lease view of
        a manifest counts each lease's duration in grains of its nodes)."""
        held = {sliver.node for lease in leases for sliver in lease.slivers}
        return {
            node.component_id: timedelta(seconds=node.grain_s)
            for node in self.inventory.list_nodes(component_ids=held)
            if node.grain_s > 0 and node.grain_s != self.policy.default_grain_s
        }


@dataclass(frozen=True)
class _Allocated:
    """What an Allocate answered and wrote: the leases it booked, and the slice's users before it (None: it sent
    none, so it changed none)."""

    answer: dict[str, Any]
    leases: tuple[LeaseRecord, ...]
    users_before: dict[str, list[str]] | None
    taken: tuple[LeaseRecord, ...] = ()  # the slice's allocations taken over (take_over), not booked by this call


def _sliver_expiry(sliver: SliverRecord, lease: LeaseRecord) -> datetime:
    """When a sliver expires: an allocation at its own expiry unless provisioned in time, else with its lease."""
    return sliver.expires if sliver.allocation_state == Allocation.ALLOCATED else lease.end


def _reused_leases(held: Sequence[LeaseRecord], named_ids: set[str], now: datetime) -> dict[str, LeaseRecord]:
    """The slice's current leases (of ``held``) the request names by the id the aggregate gave them (an ol:lease id
    seen in a manifest, sent back with the request), by id. An id that names no current lease of the slice (one that
    ended, an allocation not provisioned in time, which the calendar is releasing, or a client's own label that looks
    like one) is only a label: that lease is booked. (Another slice's current lease is left out by ``_allocate``.)"""
    return {
        lease.id: lease
        for lease in held
        if lease.id in named_ids and lease.end > now and not _allocation_lapsed(lease, now)
    }


def _leftover_allocations(held: Sequence[LeaseRecord], now: datetime, owner_urn: str) -> list[LeaseRecord]:
    """The slice's allocations (of ``held``) that a v2 CreateSliver by ``owner_urn`` may take over: that user's own
    (what an earlier CreateSliver of theirs, cut short, left), allocated, never provisioned (every sliver still
    geni_allocated) and still in their time to be provisioned. Another member's allocation (a v3 Allocate waiting for
    its own Provision, with its own users) is never taken over: it stays allocated."""
    return [
        lease
        for lease in held
        if lease.owner_urn == owner_urn
        and lease.state == "allocated"
        and all(sliver.allocation_state == Allocation.ALLOCATED for sliver in lease.slivers)
        and not _allocation_lapsed(lease, now)
    ]


def _added_to_kept_lease(
    kept: LeaseRecord,
    lease: RequestLease,
    request: Request,
    components: Sequence[str],
    containers: Mapping[str, Any],
    slice_urn: str,
) -> list[BookingRequest]:
    """What a requested lease that names one of the slice's current leases by its id adds to it: its nodes the lease
    holds are kept as they are (a manifest sent back with more leases books only the new ones), its other nodes are
    booked for the lease's window. BadArgs when the request asks for another window (moving a lease is a Renew) or
    for containers on a node the lease holds already (they are planned when a node is booked)."""
    asked = (lease.start, lease.duration) if lease.start is not None else (kept.start, lease.duration)
    if asked != (kept.start, kept.end - kept.start):
        window = (
            f"{format_time(lease.start)} to {format_time(lease.start + lease.duration)}"
            if lease.start is not None
            else f"{human_duration(int(lease.duration.total_seconds()))} as soon as possible"
        )
        raise BadArgs(
            f"lease {kept.id} of slice {slice_urn} holds {', '.join(kept.nodes)} from {format_time(kept.start)} "
            f"to {format_time(kept.end)}; the request names it with another window ({window}): call Renew to move "
            "its end, or send the new window without the lease's id (a client_id instead) to book it as a new lease"
        )
    added = []
    for client_id, component in zip(lease.nodes, components, strict=True):
        if component in kept.nodes:
            if client_id in containers:
                raise BadArgs(
                    f"node {client_id!r} asks for containers in lease {kept.id}, which holds it already: containers "
                    "are planned when a node is booked; Delete that lease's sliver and Allocate it again with them"
                )
            continue
        added.append(
            BookingRequest(
                node=component,
                start=kept.start,
                end=kept.end,
                client_id=client_id,
                lease_label=kept.client_id,
                disk_image="" if client_id in containers else request.node(client_id).disk_image or "",
            )
        )
    return added


def _own_leases_note(
    conflicts: Sequence[Conflict],
    own: Sequence[LeaseRecord],
    now: datetime,
    method: str = "Allocate",
    holds: Mapping[str, HoldEnd] | None = None,
) -> str:
    """For a refused booking: which of the clashes are the calling slice's own leases, and what to do instead (a
    manifest sent back as a request, without the leases' ids, asks for its leases again). An allocation not
    provisioned in time is being released: the time is free again within a minute, or, held by a Provision cut
    short or kept for the testbed after a failed one (``holds``: the live holds, by lease id), when the hold ends or
    a Delete frees it. ``method`` is the one called."""
    clashes: list[str] = []
    lapsed: list[str] = []
    held: list[str] = []
    kept: list[str] = []
    for conflict in conflicts:
        for lease in own:
            if conflict.node in lease.nodes and lease.start < conflict.end and conflict.start < lease.end:
                clash = f"{conflict.node} by lease {lease.id}"
                if not _allocation_lapsed(lease, now):
                    clashes.append(clash)
                elif holds and lease.id in holds:
                    hold = holds[lease.id]
                    until = format_time(from_s(hold.until_s))
                    if hold.left_for_testbed:
                        kept.append(f"{clash}, kept until {until} at the latest")
                    else:
                        held.append(f"{clash}, held until {until}")
                else:
                    lapsed.append(clash)
    notes = []
    if clashes:
        notes.append(
            f"the slice holds some of these itself ({', '.join(clashes)}): a lease of the slice is not booked "
            f"again; leave it out of the request ({method} adds to what the slice holds) or name it by its id "
            f"(<ol:lease id=...> as the manifest shows it); to change its end call {_renew_method(method)}"
        )
    if lapsed:
        notes.append(
            f"some are the slice's allocations not provisioned in time ({', '.join(lapsed)}), which are being "
            f"released: {method} again in a minute"
        )
    if held:
        notes.append(
            f"some are the slice's allocations not provisioned in time but held by a Provision ({'; '.join(held)}), "
            f"released when the hold ends, not before: if no call of yours is at work on them, Delete them to free "
            f"them now, then {method} again"
        )
    if kept:
        notes.append(
            f"some are the slice's allocations not provisioned in time but kept for the testbed, which may have made "
            f"their jobs in a Provision that failed ({'; '.join(kept)}): Delete them to free them now, then {method} "
            "again"
        )
    return "; ".join(notes)


def _renew_method(method: str) -> str:
    """The method that moves a lease's end, in the API of ``method`` (AM API v2's CreateSliver, or v3)."""
    return "RenewSliver" if method == "CreateSliver" else "Renew"


def _held_already_message(leases: Sequence[LeaseRecord], method: str) -> str:
    """Why a request the slice holds provisioned already books nothing, naming its leases, and what to do."""
    held = "; ".join(
        f"{', '.join(lease.nodes)} is booked by its lease {lease.id} from {format_time(lease.start)} to "
        f"{format_time(lease.end)}"
        for lease in leases
    )
    return (
        f"the slice holds what this request asks for already ({held}): nothing was booked or changed. To keep it "
        f"longer call {_renew_method(method)}; to book one more slot, give the times of another slot (and leave the "
        f"leases the slice holds out of the request)"
    )


def _matching_allocation(
    lease: RequestLease,
    request: Request,
    components: Sequence[str],
    containers: Mapping[str, Any],
    allocations: Sequence[LeaseRecord],
    grain_s: int,
    current_at: datetime | None = None,
) -> LeaseRecord | None:
    """The allocation that is exactly this requested lease, booked by an earlier call of the same request: the same
    label, the same nodes with the same slivers (client_id, disk image) and the same window; for "as soon as
    possible", the window that earlier call found: as long as asked, or (a slot from now) up to the next boundary of
    the nodes' slots (``grain_s``), or, with ``current_at``, any window holding that time (a provisioned lease an
    earlier call booked from now, renewed since). None for a lease with container slivers (their plans are made
    with the booking)."""
    if any(client_id in containers for client_id in lease.nodes):
        return None
    slivers = sorted(
        (component, client_id, request.node(client_id).disk_image or "")
        for client_id, component in zip(lease.nodes, components, strict=True)
    )
    for allocation in allocations:
        length = allocation.end - allocation.start
        if lease.start is not None and (allocation.start, length) != (lease.start, lease.duration):
            continue
        found_then = lease.duration <= length < lease.duration + timedelta(seconds=grain_s)
        holds_now = current_at is not None and allocation.start <= current_at < allocation.end
        if lease.start is None and not (found_then or holds_now):
            continue
        held = sorted((sliver.node, sliver.client_id, sliver.disk_image) for sliver in allocation.slivers)
        if held == slivers and allocation.client_id == (lease.client_id or ""):
            return allocation
    return None


def _caller_refusal(refused: KeyRefusal) -> str:
    """Why a local user's certificate is refused, and what to do, in words."""
    if refused.removed:
        return (
            f"{refused.urn} is no longer registered at this aggregate's authority (the user was removed): its "
            "certificate is not accepted here any more; ask the authority's operator to register you again"
        )
    return (
        f"the certificate you call with names {refused.urn} but holds another key than the one this "
        "aggregate's registry holds for that user now (an earlier holder of the name, or a certificate replaced "
        "since): call with the certificate the registry issued you (sfi.py: delete the *.gid and *.cred files in "
        "~/.sfi and call again)"
    )


def _key_material(key: str) -> tuple[str, ...]:
    """What makes an SSH public key the key it is: its type and base64 blob, not its comment."""
    return tuple(key.split()[:2])


def _users_sent(options: Mapping[str, Any]) -> dict[str, list[str]]:
    """The users and keys a call sent (geni_users, sfa_users; checked by the contract): user URN -> keys."""
    users: dict[str, list[str]] = {}
    for option in ("geni_users", "sfa_users"):
        for user in options.get(option) or []:
            keys = users.setdefault(user["urn"], [])
            keys.extend(key for key in user["keys"] if key not in keys)
    return users


def _written_login(found: LeaseLogins, user_urn: str) -> str | None:
    """The login a member of a removed slice had (per-user policy): their mapping, else (removed since) the login
    their removal retired; never one derived now."""
    mapped = found.mapped.get(user_urn)
    if mapped is not None:
        return mapped
    retired = found.retired.get(user_urn)
    return retired[-1][1] if retired else None


def _urn_type(urn: str) -> str:
    try:
        return parse_urn(urn).type
    except BadArgs:
        return ""


def _check_urn(urn: str, kind: str) -> None:
    check_urn_characters(urn, f"the {kind} URN")
    if not is_urn(urn) or _urn_type(urn) != kind:
        raise BadArgs(f"{urn!r} is not a {kind} URN (urn:publicid:IDN+<authority>+{kind}+<name>)")


def _refuse_part_of_a_lease(leases: Sequence[LeaseRecord], sliver_urns: set[str] | None, done_together: str) -> None:
    """BADARGS, before anything is written, when the call names some of a lease's slivers but not all of them: the
    lease is the unit of the calendar and of the testbeds (one OAR job, one OMF reservation for all its nodes), so an
    operation on it acts on every one of its slivers, never on slivers the caller did not name. ``done_together``:
    what happens to a lease's slivers together, in words ("deleted", "renewed"). A call naming the slice
    (``sliver_urns`` None) names every sliver. geni_best_effort changes nothing: these calls are all or nothing."""
    if sliver_urns is None:
        return
    for lease in leases:
        left_out = sorted(sliver.urn for sliver in lease.slivers if sliver.urn not in sliver_urns)
        if not left_out:
            continue
        shown = ", ".join(left_out[:10]) + (f" and {len(left_out) - 10} more" if len(left_out) > 10 else "")
        raise BadArgs(
            f"lease {lease.id} holds {len(lease.slivers)} slivers and the call names only "
            f"{len(lease.slivers) - len(left_out)} of them; not named: {shown}. A lease's slivers are {done_together} "
            "together (one reservation on the testbed): name all of them, or the slice URN. Nothing was changed"
        )


def _check_slots_running(leases: Sequence[LeaseRecord], action: str, now: datetime) -> None:
    """BADARGS unless every lease's slot runs at ``now``: a provisioned lease for later must not switch nodes that
    another slice holds now. The refusal says what to do instead."""
    for lease in leases:
        if not lease.start <= now < lease.end:
            raise BadArgs(
                f"{action}: the slot of lease {lease.id} is {format_time(lease.start)} to {format_time(lease.end)}, "
                f"not now; geni_start/stop/restart act during the slot (nothing was changed): "
                f"{_during_the_slot(lease, action)}"
            )


def _during_the_slot(lease: LeaseRecord, action: str) -> str:
    """What to do about ``action`` on a lease whose slot is ahead, in words."""
    start = format_time(lease.start)
    if lease.state != "provisioned":
        return f"Provision it before its slot begins, at {start}: a provisioned lease starts by itself then"
    if action == Event.START:
        return f"a provisioned lease starts by itself when its slot begins, at {start}; nothing to do now"
    return f"call {action} again from {start}, when its slot begins (or Delete the lease to give the slot up)"


def _refuse_unprovisioned(leases: Sequence[LeaseRecord], action: str) -> None:
    """BADARGS for a lease that is not provisioned: operational actions act on provisioned slivers only."""
    for lease in leases:
        if lease.state != "provisioned":
            raise BadArgs(f"{action} needs provisioned slivers; lease {lease.id} is {lease.state}: Provision first")


def _leases_running_now(
    slice_urn: str, leases: Sequence[LeaseRecord], action: str, now: datetime
) -> tuple[list[LeaseRecord], dict[str, str]]:
    """geni_start/stop/restart naming the slice: the provisioned leases whose slot runs at ``now``, to act on, and
    for each other lease (its slot ahead, or not provisioned) why it is left as it is. BADARGS, before anything
    acts, when no lease runs: naming an allocation of the current slot to Provision, or when the next slot begins."""
    running = [lease for lease in leases if lease.state == "provisioned" and lease.start <= now < lease.end]
    acting = {lease.id for lease in running}
    left_out: dict[str, str] = {}
    for lease in leases:
        if lease.id in acting:
            continue
        if lease.start > now:
            why = f"its slot is {format_time(lease.start)} to {format_time(lease.end)}, not now: "
            why += _during_the_slot(lease, action)
        elif _allocation_lapsed(lease, now):
            why = f"it {LAPSED_ALLOCATION} {format_time(_allocation_expiry(lease))}; Allocate again"
        else:
            why = f"it is {lease.state}: Provision it first"
        left_out[lease.id] = f"{action} left lease {lease.id} as it is: {why}"
    if running:
        return running, left_out
    _refuse_unprovisioned([lease for lease in leases if lease.start <= now], action)
    upcoming = min(leases, key=lambda lease: lease.start)
    raise BadArgs(
        f"{action}: no lease of slice {slice_urn} runs now; the next, lease {upcoming.id}, runs from "
        f"{format_time(upcoming.start)} to {format_time(upcoming.end)}; geni_start/stop/restart act during the slot "
        f"(nothing was changed): {_during_the_slot(upcoming, action)}"
    )


def _check_rspec_version(options: Mapping[str, Any], required: bool, method: str) -> None:
    """Match geni_rspec_version leniently: type (any case) and version (numerically); the schema URL is ignored
    because sfi.py may send a wrong one."""
    version = options.get("geni_rspec_version")
    if version is None:
        if required:
            raise BadArgs(f"{method} needs the option geni_rspec_version, e.g. {{type: GENI, version: 3}}")
        return
    if not isinstance(version, dict):
        raise BadArgs("geni_rspec_version must be a struct {type, version}")
    kind = str(version.get("type", "")).lower()
    try:
        number = float(str(version.get("version", "")))
    except ValueError:
        number = -1
    if kind != "geni" or number != 3:
        raise GeniError(
            Reason.BAD_VERSION,
            f"RSpec {str(version.get('type'))[:80]!r} {str(version.get('version'))[:80]!r} is not supported: "
            "this aggregate speaks GENI 3",
        )


def _maybe_compressed(document: str, options: Mapping[str, Any]) -> str:
    if options.get("geni_compressed"):
        return base64.b64encode(zlib.compress(document.encode("utf-8"))).decode("ascii")
    return document


def _hold_in_one_slice(named: set[str], leases: Sequence[LeaseRecord]) -> bool:
    """Whether the leases read hold every sliver named and all belong to one slice."""
    held = {sliver.urn for lease in leases for sliver in lease.slivers}
    return named <= held and len({lease.slice_urn for lease in leases}) == 1


def _allocation_lapsed(lease: LeaseRecord, now: datetime) -> bool:
    """An allocation not provisioned in time: the calendar refuses to provision or renew it (booking.py)."""
    if lease.state != "allocated":
        return False
    return allocation_expiry_s([to_s(sliver.expires) for sliver in lease.slivers], to_s(lease.end)) <= to_s(now)


#: What a lapsed allocation's geni_error says in Status (AM API v2's SliverStatus shows it ``failed``).
LAPSED_ALLOCATION = "was not provisioned in time: its time to be provisioned ended at"


def _allocation_expiry(lease: LeaseRecord) -> datetime:
    """When an allocated lease's time to be provisioned ends (``allocation_expiry_s``)."""
    return from_s(allocation_expiry_s([to_s(sliver.expires) for sliver in lease.slivers], to_s(lease.end)))


def _renewal_note(before: LeaseRecord, after: LeaseRecord, kept_because: str = "", stopped_because: str = "") -> str:
    """What a renewal changed, in words: the lease's new end (and, for an allocation, until when it waits to be
    provisioned), or that nothing changed (``kept_because``: why the call left it as it is). ``stopped_because``:
    what ended a geni_extend_alap extension before the end asked for."""
    if kept_because:
        note = f"unchanged: lease {after.id} keeps its end {format_time(after.end)}, as {kept_because}"
    elif after.end == before.end:
        note = f"unchanged: lease {after.id} already ends at {format_time(after.end)}"
    else:
        longer = "extended" if after.end > before.end else "shortened"
        note = f"lease {after.id} {longer}: it now ends at {format_time(after.end)} (was {format_time(before.end)})"
        if stopped_because and after.end > before.end:
            note += f", as far as geni_extend_alap could extend it: {stopped_because}"
    if after.state == "allocated":
        waits = min(sliver.expires for sliver in after.slivers)
        note += f"; still to be provisioned before {format_time(waits)} or it is released"
    return note


def _spared_because(lease: LeaseRecord, asked: datetime, slice_named: bool) -> str:
    """Why a Renew naming the slice, or with geni_extend_alap, leaves a lease that ends after the end asked for as it
    is, in words (``_renewal_note``'s ``kept_because``)."""
    when = f"it {_after_the_end(lease, asked)}"
    if slice_named:
        return (
            f"{when}: a Renew naming the slice never shortens a lease (name its slivers to end it earlier, or Delete "
            "it)"
        )
    return f"{when}: geni_extend_alap never shortens a lease (renew without it to end it earlier)"


def _after_the_end(lease: LeaseRecord, asked: datetime) -> str:
    """How a lease lies after an end asked for, in words: "starts at S, after ..." or "ends at E, after ..."."""
    if lease.start >= asked:
        return f"starts at {format_time(lease.start)}, after the end asked for ({format_time(asked)})"
    return f"ends at {format_time(lease.end)}, after the end asked for ({format_time(asked)})"


def _lease_ended(lease: LeaseRecord, now: datetime) -> bool:
    """A provisioned lease whose slot is over: the sweep (retire_ended) has yet to release it."""
    return lease.state == "provisioned" and lease.end <= now


def _refuse_ended(leases: Sequence[LeaseRecord], now: datetime) -> None:
    """SEARCHFAILED, before anything is done, for a provisioned lease whose slot is over: it is being released (the
    sweep runs every minute) and nothing brings it back."""
    for lease in leases:
        if _lease_ended(lease, now):
            raise GeniError(
                Reason.NOT_FOUND,
                f"lease {lease.id} ended at {format_time(lease.end)}; Allocate again (it is being released; "
                "nothing was changed)",
            )


def _contact(caller_chain: GidChain, owner_urn: str) -> Contact | None:
    """The caller's GID e-mail, when the GID is the booking user's own (a tool speaking for a user presents its
    own GID: no address from it)."""
    leaf = caller_chain[0] if caller_chain else None
    # As URNs compare (the owner's is canonical, the certificate's as written: ...+USER+alice is alice).
    if leaf is None or not leaf.urn or not leaf.email or not same_urn(leaf.urn, owner_urn):
        return None
    return Contact(owner_urn, leaf.email)
