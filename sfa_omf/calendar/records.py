"""Plain data the calendar hands out and takes in. No SQLAlchemy object ever leaves calendar/."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: A node is usable (bookable) or in maintenance.
NODE_STATES = ("usable", "maintenance")


@dataclass(frozen=True)
class PoolRecord:
    name: str
    federated: bool
    description: str
    node_count: int


@dataclass(frozen=True)
class NodeSpec:
    """What an operator says about a node when adding it."""

    component_id: str
    component_name: str
    pool: str = "default"
    hardware_type: str = ""
    exclusive: bool = True
    properties: dict[str, Any] = field(default_factory=dict)
    disk_images: tuple[dict[str, str], ...] = ()
    grain_s: int | None = None  # None: the policy's default grain


@dataclass(frozen=True)
class NodeRecord:
    component_id: str
    component_name: str
    pool: str
    federated: bool
    hardware_type: str
    exclusive: bool
    properties: dict[str, Any]
    disk_images: tuple[dict[str, str], ...]
    grain_s: int
    state: str


def network_address(component_name: str, properties: Mapping[str, Any]) -> str:
    """How the testbed reaches a node: its ``network_address`` property (OAR's), else its name."""
    return str(properties.get("network_address") or component_name)


@dataclass(frozen=True)
class BookingRequest:
    """One node for one window, for a slice."""

    node: str  # component_id
    start: datetime
    end: datetime
    client_id: str = ""  # the request's name for the node
    lease_label: str = ""  # the request's name for the lease (ol:lease client_id); same window + label = one lease
    disk_image: str = ""
    from_now: bool = False  # booked from now (the client gave no start): the start may lie inside a begun slot


@dataclass(frozen=True)
class SliverRecord:
    urn: str
    node: str
    lease_id: str
    start: datetime
    end: datetime
    allocation_state: str
    operational_state: str
    expires: datetime
    client_id: str = ""
    disk_image: str = ""


@dataclass(frozen=True)
class LeaseRecord:
    id: str
    slice_urn: str
    owner_urn: str
    start: datetime
    end: datetime
    state: str
    slivers: tuple[SliverRecord, ...]
    client_id: str = ""

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sliver.node for sliver in self.slivers)


@dataclass(frozen=True)
class Conflict:
    """Why one requested (node, window) cannot be booked, and when it could be."""

    node: str
    start: datetime
    end: datetime
    problem: str  # "booked", "maintenance", "unknown node" (a private pool's node too, for another authority's user)
    clashing: tuple[tuple[datetime, datetime], ...] = ()
    next_free_start: datetime | None = None

    def describe(self) -> str:
        text = f"{self.node} {self.problem}"
        if self.clashing:
            windows = ", ".join(f"{_fmt(start)}..{_fmt(end)}" for start, end in self.clashing)
            text += f" during {windows}"
        if self.next_free_start is not None:
            text += f"; free for the same duration from {_fmt(self.next_free_start)}"
        return text


@dataclass(frozen=True)
class BookingResult:
    leases: tuple[LeaseRecord, ...]
    refused: tuple[Conflict, ...] = ()
    #: The slice as the booking left it (``Bookings.book(read_slice=True)``), read in the booking's transaction.
    slice_view: SliceView | None = None


@dataclass(frozen=True)
class SliceUserRecord:
    user_urn: str
    ssh_keys: tuple[str, ...]


@dataclass(frozen=True)
class ManifestNode:
    """What a manifest shows of a node besides its URN."""

    component_name: str
    exclusive: bool


@dataclass(frozen=True)
class SliceView:
    """What a manifest of a whole slice needs from the calendar: its active leases (oldest first), their nodes, and
    its users (by user URN)."""

    leases: tuple[LeaseRecord, ...]
    nodes: dict[str, ManifestNode]
    users: tuple[SliceUserRecord, ...]


@dataclass(frozen=True)
class FreeWindow:
    start: datetime
    end: datetime


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


#: The notification channels a user can subscribe to (calendar/outbox.py).
CHANNELS = ("email", "webhook")
