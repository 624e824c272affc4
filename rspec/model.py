"""Plain data between rspec/ and the rest of sfa-omf: what a request asks for, and what advertisements and
manifests say. Frozen dataclasses of strings, numbers, datetimes and tuples; no XML.

Times are aware datetimes in UTC. Intervals are half-open, [start, end): back-to-back slots do not overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property

# ---------------------------------------------------------------------------------------------------------------
# Requests

#: The longest time slot a request can even express (ten years): a bound on reading, far above any operator's policy,
#: so that start + duration stays a representable time. The policy's max_duration is what refuses long bookings.
MAX_DURATION = timedelta(days=3650)


@dataclass(frozen=True)
class RequestNode:
    """A node the client asks for. ``client_id`` is its name for it (an SFA request that gives none names a node by
    its component_id); ``component_id`` is None for "any suitable node"."""

    client_id: str
    component_id: str | None = None
    component_manager_id: str | None = None
    component_name: str | None = None
    exclusive: bool | None = None
    hardware_type: str | None = None
    sliver_type: str | None = None
    disk_image: str | None = None
    instance_count: int | None = None  # inst:count on <sliver_type name="lxc">: how many containers


#: The sliver type whose slivers are containers on the node (sfa_omf/images/instances.py).
CONTAINER_SLIVER_TYPE = "lxc"
#: The most containers one sliver can even ask for (a bound on reading; the operator's policy sets the real limit).
MAX_INSTANCE_COUNT = 1000


@dataclass(frozen=True)
class RequestLease:
    """A time slot and the nodes (client_ids, in the order of Request.nodes) to book in it.

    ``start`` None means as soon as possible: the earliest slot of ``duration`` in which all the nodes are free.
    ``existing_id`` is set when the client re-uses a lease the aggregate issued (an ol:lease id it was shown).
    ``from_now`` marks a slot whose start the client did not give (a request with no time, or geni_end_time alone):
    it may begin now, inside a slot (a first partial slot), and only its end keeps to the grain. With ``start`` None
    (no time at all) the nodes are booked from now when they are free, else in the earliest common slot.
    """

    start: datetime | None
    duration: timedelta
    nodes: tuple[str, ...]
    existing_id: str | None = None
    # The client's label for the lease (ol client_id), to answer with in the manifest. It names the lease but is no
    # part of what is booked, so two dialects asking for the same booking compare equal.
    client_id: str | None = field(default=None, compare=False)
    from_now: bool = False

    @property
    def asap(self) -> bool:
        """True for "as soon as possible" (no start given)."""
        return self.start is None

    @property
    def end(self) -> datetime | None:
        """start + duration, or None for an as-soon-as-possible lease."""
        return None if self.start is None else self.start + self.duration


@dataclass(frozen=True)
class Request:
    """A request RSpec as plain data. Every node is in at least one lease: nodes the RSpec gave no time for are in
    the lease built from the Allocate options (geni_start_time/geni_end_time) or, without those, in a ``from_now``
    lease of the operator's default duration (from now when the nodes are free, else as soon as possible)."""

    nodes: tuple[RequestNode, ...]  # in document order
    leases: tuple[RequestLease, ...]  # in time order, as-soon-as-possible ones last
    # The component_manager_ids of the nodes left to other aggregates (RequestPolicy.component_manager_id), sorted
    left_to_others: tuple[str, ...] = ()

    def node(self, client_id: str) -> RequestNode:
        """The node with this client_id (KeyError if none); an index, so a request of N nodes is read in O(N)."""
        return self._by_client_id[client_id]

    @cached_property
    def _by_client_id(self) -> dict[str, RequestNode]:
        return {node.client_id: node for node in self.nodes}

    def leases_of(self, client_id: str) -> tuple[RequestLease, ...]:
        """The leases that book the node with this client_id."""
        return tuple(lease for lease in self.leases if client_id in lease.nodes)


# ---------------------------------------------------------------------------------------------------------------
# What advertisements and manifests describe


@dataclass(frozen=True)
class DiskImage:
    """An image a sliver type can boot."""

    name: str
    os: str | None = None
    version: str | None = None
    description: str | None = None
    default: bool = False


@dataclass(frozen=True)
class SliverType:
    """A kind of sliver a node offers, with the images it can run."""

    name: str
    disk_images: tuple[DiskImage, ...] = ()
    default: bool = False


@dataclass(frozen=True)
class Location:
    """Where a node is: ISO 3166 country code, WGS 84 coordinates."""

    country: str
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class AdvertisedNode:
    """A node in the inventory. ``in_service`` False (maintenance) makes it unavailable whatever the bookings.
    ``grain`` is the node's slot granularity when it differs from the aggregate's (Advertisement.grain)."""

    component_id: str
    component_manager_id: str
    component_name: str
    exclusive: bool = True
    hardware_types: tuple[str, ...] = ()
    sliver_types: tuple[SliverType, ...] = ()
    location: Location | None = None
    in_service: bool = True
    grain: timedelta | None = None


@dataclass(frozen=True)
class Booking:
    """An existing lease: its id (a UUID), its slot and the nodes it holds. ``slice_urn`` appears only in SFA's
    lease view (list_leases), as SFA shows it; the GENI view (ol leases) never names the slice."""

    id: str
    start: datetime
    end: datetime
    component_ids: tuple[str, ...]
    slice_urn: str | None = None


@dataclass(frozen=True)
class FreeWindow:
    """A span in which a node is free, [start, end)."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Horizon:
    """The span searched for free windows, and how many windows each node shows at most."""

    start: datetime
    end: datetime
    max_windows: int = 10


class LeaseView(StrEnum):
    """Which leases an advertisement shows. SFA's list_leases option chooses: None or "resources" -> GENI,
    "all" -> SFA_ALL, "leases" -> SFA_LEASES."""

    GENI = "geni"  # nodes, ol leases, availability; valid against the GENI v3 base schema
    SFA_ALL = "all"  # the above, plus SFA's <lease> elements and <granularity> on exclusive nodes
    SFA_LEASES = "leases"  # SFA's <lease> elements only


@dataclass(frozen=True)
class Advertisement:
    """What ListResources describes. ``now`` decides availability ("available now" honours the bookings; bookings
    that ended are left out). ``grain`` is the aggregate's slot granularity (SFA's lease view counts durations in
    it; a node may have its own). ``free_windows`` maps a node's
    component_id to its next free windows within ``horizon``; without a horizon no availability is written."""

    nodes: tuple[AdvertisedNode, ...]
    bookings: tuple[Booking, ...]
    now: datetime
    grain: timedelta
    horizon: Horizon | None = None
    free_windows: Mapping[str, tuple[FreeWindow, ...]] = field(default_factory=dict)
    expires: datetime | None = None


@dataclass(frozen=True)
class Login:
    """How to log into a sliver: ``authentication`` "ssh-keys" means with the keys given at allocation."""

    username: str
    hostname: str
    port: int = 22
    authentication: str = "ssh-keys"


@dataclass(frozen=True)
class ManifestLease:
    """One of the slice's leases. ``client_id`` is the client's label when it gave one; ``sliver_id`` the sliver
    that is the lease when it holds one node (a lease of several nodes has a sliver per node, and none here)."""

    id: str
    start: datetime
    end: datetime
    client_id: str | None = None
    sliver_id: str | None = None


@dataclass(frozen=True)
class ManifestSliver:
    """A node granted to the slice, with the leases that hold it and how to log in: one per client_id and node, however
    many leases hold it (``sliver_id`` is then its sliver in the first of them). ``grain`` is the node's slot
    granularity when it differs from the manifest's (Manifest.grain)."""

    sliver_id: str
    client_id: str
    component_id: str
    component_manager_id: str
    component_name: str | None = None
    exclusive: bool = True
    sliver_type: str | None = None
    disk_image: str | None = None
    lease_ids: tuple[str, ...] = ()
    hostname: str | None = None
    logins: tuple[Login, ...] = ()
    grain: timedelta | None = None


@dataclass(frozen=True)
class Manifest:
    """What Allocate/Provision/Describe answer with. ``slice_urn`` and ``grain`` are needed only for SFA's lease
    view of the manifest. ``expires``: when the slice's slivers expire (the latest of them), written on the root."""

    slivers: tuple[ManifestSliver, ...]
    leases: tuple[ManifestLease, ...]
    generated: datetime
    expires: datetime | None = None
    slice_urn: str | None = None
    grain: timedelta | None = None
