"""Who is looking: the user named by the browser's TLS client certificate (a GENI user GID, as sfi.py users have),
an operator (a configured admin URN), or nobody (the public view).

Privacy rule: a viewer sees the slice, users and state of a booking only for slices they belong to now (the slice's
user list); an operator sees every booking; everyone else sees "booked" and the window. A user removed from a slice
still sees the leases they booked in it themselves, and only those: not its other leases, not its member list.

A user of the aggregate's own authority is believed only with the key its registry holds for them now, as on the
AM API (am/caller_keys.py): a removed user's certificate stays valid for years, and must not keep showing their
former slices, nor get feed tokens or notifications for them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from sfa_omf.am.caller_keys import KeyRefusal
from sfa_omf.calendar.timeline import BookingRow
from sfa_omf.errors import TrustError
from sfa_omf.trust.gid import GidChain
from sfa_omf.trust.verifier import CredentialVerifier


@dataclass(frozen=True)
class Viewer:
    urn: str | None = None
    admin: bool = False
    slices: frozenset[str] = frozenset()  # the slices that list this user now
    refused: str = ""  # why a certificate that was presented is not believed (shown on the page)
    email: str = ""  # the certificate's e-mail address, if it has one (the page offers it for notifications)

    def sees(self, slice_urn: str) -> bool:
        """May this viewer see who booked this slice's leases and how they are doing?"""
        return self.admin or slice_urn in self.slices

    def booked(self, row: BookingRow) -> bool:
        """Is this a lease the viewer booked themselves?"""
        return self.urn is not None and row.owner_urn == self.urn

    def sees_booking(self, row: BookingRow) -> bool:
        """May this viewer see this booking whole? Its slice's (``sees``), or a lease they booked themselves, also in
        a slice they have left; that slice's other leases stay "booked". Each booking is decided by itself (the
        Gantt, the node page, the feeds); the member list goes by ``sees``."""
        return self.sees(row.slice_urn) or self.booked(row)

    @property
    def label(self) -> str:
        if self.urn is None:
            return "anonymous (public view)"
        return f"{self.urn} (operator)" if self.admin else self.urn


ANONYMOUS = Viewer()


def identify(
    chain: GidChain,
    verifier: CredentialVerifier,
    admins: Collection[str],
    slices_of_user: Callable[[str], set[str]],
    now: datetime,
    key_refusal: Callable[[str, str], KeyRefusal | None] | None = None,
) -> Viewer:
    """The viewer a TLS client chain stands for; a chain we do not trust is the public view, with the reason.
    ``key_refusal`` (``RegisteredKeys.refusal``): why the registry does not vouch for the certificate's key, if not."""
    if not chain:
        return ANONYMOUS
    try:
        leaf = verifier.verify_caller(chain, now)
    except TrustError as exc:
        return Viewer(refused=f"your certificate is not trusted here ({exc.message}); showing the public view")
    if not leaf.urn or "+user+" not in leaf.urn:
        return Viewer(refused="your certificate names no GENI user; showing the public view")
    refused = key_refusal(leaf.urn, leaf.key_id) if key_refusal is not None else None
    if refused is not None:
        why = "is no longer registered here" if refused.removed else "is registered here with another certificate now"
        return Viewer(
            refused=f"the user your certificate names ({leaf.urn}) {why}; use the certificate your authority gives "
            "you now; showing the public view"
        )
    return Viewer(
        urn=leaf.urn, admin=leaf.urn in admins, slices=frozenset(slices_of_user(leaf.urn)), email=leaf.email or ""
    )
