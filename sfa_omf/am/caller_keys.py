"""The local registry's word on who holds a user name, for callers of this aggregate's own authority.

The trust layer accepts a caller whose certificate names the same URN as a credential's owner even with another key,
as gcf and every SFA/GENI aggregate do: an authority may re-issue a user's certificate. For users of *this*
aggregate's authority the local registry knows better: it holds each user's one registered GID. A name removed from
the registry and registered again is another person under the same URN, and the earlier holder's GID (valid for
years, never revoked) must not work with the new holder's credentials, nor the new holder's key with the earlier
holder's credentials. So a local user's certificate (the one the call is made with, or the user a tool speaks for)
and a local owner's key in a credential must be the key the registry holds for that name now; a removed user (no
record) is refused. The registry's own API applies the same rule (registry/api.py ``_caller``).

The rule applies where the registry's records are in the aggregate's database: ``sfa-omf serve`` records the
authority and every GID it issued there at start. A database without the authority's record (an aggregate whose
calendar holds no registry) keeps the trust layer's rule alone, and so does a user record without a GID (one kept
for its e-mail: it names no key). Users of other authorities keep it too.

Cost: a record is read on the first call of a (user, key), then the verdict is kept for ``ttl_s`` seconds (the
time a removal takes to reach every process of the cluster); refusals are never kept, so a user registered again
can call at once. The registry gives a removed name again only REGISTER_AGAIN_AFTER_S after its removal
(registry/records.py), longer than a verdict lives: the removed holder's last accepted calls cannot act as the next.

Slices of this authority follow the same rule (``slice_refusal``): a slice removed from the registry and registered
again under its name is another slice under the same URN (a new GID, another key), and the earlier slice's
credentials (valid for weeks, never revoked) must not act on it. So the GID a slice credential targets must hold the
key of the slice's GID in the registry now; a slice the registry removed (no record now) is refused. A slice the
registry never held (its GID issued since the start by ``sfa-omf credential issue --type slice``, recorded at the
next one), a slice record without a GID, a database without the authority's record and slices of other authorities
keep the URN rule. The verdicts are kept as for users.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sfa_omf.errors import BadArgs
from sfa_omf.registry.accounts import retired_logins
from sfa_omf.registry.records import Records, record_chain
from sfa_omf.xrn import hrn_to_urn, is_authority_over_urn, is_urn, parse_urn

#: How long an accepted (user URN, key) is believed without reading the registry again, in seconds.
DEFAULT_TTL_S = 10.0
#: How many accepted (user URN, key) pairs one process keeps (the oldest go first).
DEFAULT_SIZE = 4096


@dataclass(frozen=True)
class KeyRefusal:
    """Why the registry does not vouch for a (user or slice, key): ``removed`` (no record of it) or another key."""

    urn: str  # the user's or the slice's
    removed: bool


class RegisteredKeys:
    """Whether a key is the one the local registry holds for a user of this aggregate's authority. Thread-safe."""

    def __init__(
        self,
        records: Records,
        authority_hrn: str,
        ttl_s: float = DEFAULT_TTL_S,
        size: int = DEFAULT_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = records
        self.authority_hrn = authority_hrn
        self.ttl_s = ttl_s
        self.size = size
        self.monotonic = monotonic
        self._accepted: OrderedDict[tuple[str, str], float] = OrderedDict()  # (urn, key id) -> believed until
        self._lock = threading.Lock()
        self._local: dict[str, str] = {}  # URN -> its type when under this authority, else "" (_local_type)

    def is_local_user(self, urn: str) -> bool:
        """A user URN under this aggregate's authority (whose registry may hold its record)."""
        return self._local_type(urn) == "user"

    def is_local_slice(self, urn: str) -> bool:
        """A slice URN under this aggregate's authority (whose registry may hold its record)."""
        return self._local_type(urn) == "slice"

    def _local_type(self, urn: str) -> str:
        """The type of a URN under this aggregate's authority ("" for any other). Kept per URN: it depends on the URN
        alone, and parsing it three times a call (the caller, the credential's owner and target) cost about a
        twentieth of a Status. Emptied when full; a lost entry is parsed again."""
        known = self._local.get(urn)
        if known is None:
            known = self._parse_local_type(urn)
            if len(self._local) >= self.size:
                self._local.clear()
            self._local[urn] = known
        return known

    def _parse_local_type(self, urn: str) -> str:
        if not urn or not is_urn(urn):
            return ""
        try:
            parsed = parse_urn(urn)
        except BadArgs:
            return ""
        # By the URN's authority field, as certificate chains are judged (xrn.is_authority_over_urn): for authority
        # fed.sub, urn:publicid:IDN+fed+user+sub is a user of fed, though its HRN reads fed.sub too.
        return parsed.type.lower() if is_authority_over_urn(self.authority_hrn, parsed) else ""

    def refusal(self, urn: str, key_id: str) -> KeyRefusal | None:
        """None when ``key_id`` may act as ``urn``: not a local user, no registry in this database, or the key the
        registry holds for the user; else why not."""
        if not self.is_local_user(urn):
            return None
        return self._judged(urn, key_id, "user")

    def slice_refusal(self, urn: str, key_id: str) -> KeyRefusal | None:
        """None when ``key_id`` (of the GID a credential targets) is that of slice ``urn`` now: not a local slice, no
        registry in this database, a slice the registry never held, a record without a GID, or the key of the slice's
        registered GID; else why not."""
        if not self.is_local_slice(urn):
            return None
        return self._judged(urn, key_id, "slice")

    def _judged(self, urn: str, key_id: str, kind: str) -> KeyRefusal | None:
        now = self.monotonic()
        with self._lock:
            until = self._accepted.get((urn, key_id))
            if until is not None and now < until:
                return None
        found = self._read(urn, key_id, kind)
        if found is None:
            with self._lock:
                self._accepted[(urn, key_id)] = now + self.ttl_s
                self._accepted.move_to_end((urn, key_id))
                while len(self._accepted) > self.size:
                    self._accepted.popitem(last=False)
        return found

    def _read(self, urn: str, key_id: str, kind: str) -> KeyRefusal | None:
        record = self.records.get(parse_urn(urn).hrn)
        if record is None or record.type != kind or not is_urn(record.urn) or parse_urn(record.urn) != parse_urn(urn):
            if self.records.get(self.authority_hrn) is None:  # no registry in this database: the URN rule alone
                return None
            if kind == "slice" and not retired_logins(self.records.database, hrn_to_urn(parse_urn(urn).hrn, kind)):
                # Never removed by the registry: a GID the authority issued since the start (sfa-omf credential
                # issue --type slice), recorded at the next one. The removal of a slice retires its login (a
                # lasting mark in the same unit of work); only removed slices are refused.
                return None
            return KeyRefusal(urn, removed=True)
        if not record.gid.strip():  # a record without a GID (kept for its e-mail, say) names no key: the URN rule
            return None
        if record_chain(record)[0].key_id != key_id:
            return KeyRefusal(urn, removed=False)
        return None
