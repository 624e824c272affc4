"""A slice's leases kept between calls while the calendar has not changed.

Clients poll Status (omni's and jFed's wait for a sliver to be ready; sfi's SliverStatus) many times for each
write, and each poll read the same rows. ``KeptSliceLeases`` answers ``Bookings.leases(slice_urn=...)`` from what it
read before, as long as the calendar's change token (changes.py) is the one taken before that read: a write by this
process or another (on PostgreSQL another host too, as soon as its notification arrives) makes every kept read
unused. Only reads for answers go through it (Status naming a slice); a call that decides something (Provision,
Renew, Delete...) reads the database itself. A slice that holds nothing is not kept (see ``leases``).

What is kept is the plain records the database gave (LeaseRecord, immutable): everything that depends on the time
(a lapsed allocation, a slot over) or on the testbed (its health) is worked out from them by each call, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.records import LeaseRecord

#: Slices whose leases are kept at most; beyond, the one kept longest is dropped (a bounded memory whatever the
#: number of slices polled).
KEPT_SLICES = 4096


class KeptSliceLeases:
    """``leases(slice_urn)``: ``bookings.leases(slice_urn=slice_urn)``, read again only when the calendar changed."""

    def __init__(self, bookings: Bookings, size: int = KEPT_SLICES) -> None:
        self.bookings = bookings
        self.size = size
        self._kept: dict[str, tuple[Hashable, tuple[LeaseRecord, ...]]] = {}
        self._lock = threading.Lock()

    def leases(self, slice_urn: str) -> list[LeaseRecord]:
        """The slice's active leases, oldest first, as ``Bookings.leases`` answers them."""
        token = self.bookings.database.changes.token()  # before reading: a write meanwhile makes the read unused
        if token is not None:
            kept = self._kept.get(slice_urn)
            if kept is not None and kept[0] == token:
                return list(kept[1])
        leases = self.bookings.leases(slice_urn=slice_urn)
        if token is None:
            return leases
        with self._lock:
            self._kept.pop(slice_urn, None)  # (kept again last: the longest kept goes first)
            # A slice holding nothing is not kept: read again, it cannot be answered empty just after another
            # process booked its first lease (before that process's notification arrives): a client sees an error.
            if leases:
                self._kept[slice_urn] = (token, tuple(leases))
                while len(self._kept) > self.size:
                    del self._kept[next(iter(self._kept))]
        return leases
