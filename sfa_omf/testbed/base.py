"""The testbed backend interface: small on purpose. The calendar decides who has which node when; a backend makes
that real (reservations, accounts, images) and says how a sliver is doing.

A backend receives plain data (calendar records) and raises GeniError for what it cannot do (UNAVAILABLE when the
testbed is down, TIMEDOUT when it is slow), so the aggregate can answer clearly and leave the booking allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.unix_accounts import LocalAccount


@dataclass(frozen=True)
class BackgroundTask:
    """Work a backend needs done periodically (the server runs it off the request path, first at start-up)."""

    name: str
    period_s: int
    run: Callable[[], object]
    # A reconciler: what it returns has ``changed`` (true when it repaired a mismatch; the operators are told), and
    # may have ``alert()``: the operators' event's details as plain data (``report``: one line; ``text``: the
    # e-mail's body), else the event tells its text. A task's result may have ``cancelled``: ids of leases it
    # cancelled in the calendar itself (a Delete the testbed confirmed late); the server has the aggregate finish what
    # Delete does after the calendar (Aggregate.finish_testbed_cancellations: containers, the slice's keys).
    repairs: bool = False


@dataclass(frozen=True)
class SliverHealth:
    """A sliver's GENI operational state as the testbed sees it, and the testbed's own words when it failed."""

    operational_state: str
    error: str = ""
    # The testbed's reservation ended for good before the lease's end (an OAR job whose command exited), whatever
    # the state reads; ``error`` then says how it ended and where to look.
    ended: bool = False


class TestbedBackend(Protocol):
    """Implemented by the embedded backend, the OAR backend and third-party backends (entry points).

    A backend may also name, in ``local_operations`` (a frozenset of "renew", "release", "health"), those of its
    operations that talk to no testbed: the gate (sfa_omf/testbed/gate.py) then runs renew and release without waiting
    for a slot, and a call answered in the reactor thread asks health there rather than in a thread (waits.py)."""

    name: str

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """Make a lease real on the testbed: reserve the nodes for its window, owned by the local login ``owner``
        (the mapped account of the user who provisions), and give ``accounts`` (the slice's mapped logins with
        their users' SSH keys) access."""

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """A provisioned lease (as it was) now ends at ``new_end`` in the calendar: follow, or raise GeniError (the
        aggregate then puts the calendar back)."""

    def release(self, lease: LeaseRecord) -> None:
        """Undo provision: the lease was deleted, shut down or expired."""

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        """The operational state of a provisioned sliver at ``now``."""

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """The slice's users or keys changed (geni_update_users): ``accounts`` is the whole new set."""

    def background_tasks(self) -> Sequence[BackgroundTask]:
        """Periodic work (mirroring the testbed's own reservations, reconciling); empty when there is none."""


@runtime_checkable
class OperatingBackend(Protocol):
    """A backend that also acts on PerformOperationalAction (geni_start, geni_stop, geni_restart): the OMF backend
    switches the nodes through cm_factory. Others only record the state asked for."""

    def operate(self, leases: Sequence[LeaseRecord], action: str) -> None:
        """Do ``action`` on the leases' nodes, all of them, or raise GeniError saying which failed and why (the
        calendar then records nothing)."""


@dataclass(frozen=True)
class AgentNode:
    """A node that joined through its agent (sfa_omf/agents), as the testbed is told about it."""

    hostname: str  # one DNS label: the node's component name, and its name in the testbed
    number: int  # the node's fixed number (its VPN address is derived from it)
    local_address: str  # the address on its own LAN ("" when it gave none)
    lost: bool = False  # its agent stopped reporting


class TestbedNodes(Protocol):
    """A testbed that keeps its own list of nodes (OAR's resources): agents' nodes join it, leave its pool when lost
    and come back. Errors are GeniError (UNAVAILABLE, TIMEDOUT, TESTBED). ``exclusive()`` is called before each
    node is added: it takes a lock every process of the aggregate shares (the calendar's), held until the caller's
    unit of work ends, so that additions are made one at a time (OAR's own numbering races)."""

    def join(self, node: AgentNode, exclusive: Callable[[], None]) -> Callable[[], None] | None:
        """Make the node a usable member of the testbed; returns how to undo it when this call created it (the
        registration it belongs to may still fail), None when it was a member already."""

    def sync(self, nodes: Sequence[AgentNode], exclusive: Callable[[], None]) -> list[str]:
        """Make the testbed's view of these nodes follow them (lost: out of the pool, else in it; missing: added);
        returns the host names it changed."""
