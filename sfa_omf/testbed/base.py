"""The testbed backend interface: small on purpose. The calendar decides who has which node when; a backend makes
that real (reservations, accounts, images) and says how a sliver is doing.

A backend receives plain data (calendar records) and raises GeniError for what it cannot do (UNAVAILABLE when the
testbed is down, TIMEDOUT when it is slow), so the aggregate can answer clearly and leave the booking allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.calendar.slices import SliceUserRecord


@dataclass(frozen=True)
class SliverHealth:
    """A sliver's GENI operational state as the testbed sees it, and the testbed's own words when it failed."""

    operational_state: str
    error: str = ""


class TestbedBackend(Protocol):
    """Implemented by the embedded backend, the OAR backend and third-party backends (entry points)."""

    name: str

    def provision(self, lease: LeaseRecord, users: Sequence[SliceUserRecord]) -> None:
        """Make a lease real on the testbed (reserve the nodes for its window, set up accounts and keys)."""

    def release(self, lease: LeaseRecord) -> None:
        """Undo provision: the lease was deleted, shut down or expired."""

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        """The operational state of a provisioned sliver at ``now``."""

    def update_users(self, lease: LeaseRecord, users: Sequence[SliceUserRecord]) -> None:
        """The slice's users or keys changed (geni_update_users): merge them into the accounts."""
