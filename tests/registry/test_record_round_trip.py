"""A record sent back as Resolve shows it, over real TLS on SQLite and a real PostgreSQL: what sfi.py update does
with a record file written from what the registry showed, and what omni renewslice does with a slice's record.

A user who sent their own whole record back with their user credential was refused (3): the record carries the
empty ``reg-researchers`` and ``reg-pis`` of a user record, taken for a change only an authority credential may
make. Now the fields Resolve shows that Update does not write (hrn, urn, reg-urn, type, gid, authority,
peer_authority, date_created, last_updated, reg-slices, reg-pi-authorities) pass when they are as the registry shows
them, the fields the caller may change are written, and a read-only field sent with another value is refused (3)
naming it, with nothing written: before, a changed ``gid`` or ``reg-urn`` was silently dropped.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sfa_omf.times import format_time, parse_time, utcnow
from tests.registry.conftest import Registry
from tests.registry.test_interop_hunt_fixes import _admin, _user
from tests.sshkeys import ssh_key

EXP = "tb.exp"
EXP_URN = "urn:publicid:IDN+tb+slice+exp"


def _shown(user: Any, credential: str, name: str) -> dict[str, Any]:
    """The one record Resolve answers for ``name``, as a client keeps it to send it back."""
    (record,) = user.Resolve(name, [credential])
    return dict(record)


def _changed_read_only_fields(registry: Registry, shown: dict[str, Any]) -> list[tuple[str, Any]]:
    """For each read-only field of a record Resolve showed, a value other than the one shown."""
    other_gid = _shown(registry.alice, registry.alice_cred, "tb.alice")["gid"]  # a real certificate, not this one's
    created = parse_time(shown["date_created"])
    return [
        ("gid", other_gid),
        ("reg-urn", "urn:publicid:IDN+tb+user+someone"),
        ("date_created", format_time(created - timedelta(days=3))),
        ("authority", "tb.elsewhere"),
        ("peer_authority", "tb.elsewhere"),
    ]


def test_a_user_sends_their_own_record_back_with_a_new_key(registry: Registry) -> None:
    """carol (no PI, no slice) Resolves her record, adds a key and changes her address in it, and sends it back whole
    with her user credential: accepted, the key and the address written, nothing else changed. Sent back again as it
    was (its last_updated now behind the registry's, as a record file kept from before), it still passes."""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol"])
    shown = _shown(carol, carol_cred, "tb.carol")
    assert shown["reg-researchers"] == [] and shown["reg-pis"] == [] and shown["reg-slices"] == [EXP]
    before = registry.records.get("tb.carol")
    assert before is not None
    key = ssh_key("carol@laptop")

    assert carol.Update({**shown, "reg-keys": [*shown["reg-keys"], key], "email": "carol@new.example.org"}, carol_cred)
    after = registry.records.get("tb.carol")
    assert after is not None
    assert after.keys == (*before.keys, key) and after.email == "carol@new.example.org"
    assert (after.gid, after.urn, after.researchers, after.pis) == (before.gid, before.urn, (), ())
    assert registry.records.get(EXP).researchers == ("tb.carol",)  # type: ignore[union-attr]

    # The record as first shown, its last_updated a day behind the registry's: its keys and address again.
    stale = format_time(parse_time(shown["last_updated"]) - timedelta(days=1))
    assert carol.Update({**shown, "last_updated": stale}, [carol_cred]) == 1
    assert registry.records.get("tb.carol").keys == before.keys  # type: ignore[union-attr]


def test_a_user_record_sent_back_with_a_changed_read_only_field_is_refused(registry: Registry) -> None:
    """Each read-only field with another value than Resolve shows is refused (3), naming the field, and nothing of
    the record is written (not even the writable change sent with it), with the user's own credential and with an
    authority credential alike."""
    carol, carol_cred = _user(registry, "carol")
    shown = _shown(carol, carol_cred, "tb.carol")
    changes = [
        *_changed_read_only_fields(registry, shown),
        ("reg-slices", ["tb.demo"]),  # joining a slice is the slice's record's change (reg-researchers)
        ("reg-pi-authorities", ["tb"]),
    ]
    before = registry.written()
    for field, value in changes:
        record = {**shown, field: value, "email": "carol@new.example.org"}
        for caller, credential in ((carol, carol_cred), (registry.alice, registry.auth_cred)):
            fault = registry.fault(caller.Update, record, [credential])
            assert fault.faultCode == 3, (field, fault.faultString)
            assert f"{field!r} of tb.carol cannot be changed by Update" in fault.faultString, fault.faultString
    assert registry.written() == before
    assert registry.records.get("tb.carol").email != "carol@new.example.org"  # type: ignore[union-attr]


@pytest.mark.parametrize("changed", ["reg-researchers", "reg-pis"])
def test_a_user_still_may_not_change_what_only_an_authority_credential_changes(
    registry: Registry,
    changed: str,
) -> None:
    """The empty reg-researchers and reg-pis of a user record pass; filled, they still are refused."""
    carol, carol_cred = _user(registry, "carol")
    shown = _shown(carol, carol_cred, "tb.carol")
    before = registry.written()
    fault = registry.fault(carol.Update, {**shown, changed: ["tb.carol"]}, [carol_cred])
    assert fault.faultCode == 3 and "may update only their own email and keys" in fault.faultString, fault.faultString
    assert registry.written() == before


def test_a_slice_record_goes_back_whole_with_its_slice_credential(registry: Registry) -> None:
    """carol, a researcher of tb.exp, Resolves it with her user credential and sends the record back with its slice
    credential and a later expiry (omni renewslice): accepted. The same record with a read-only field changed is
    refused (3) naming it, nothing written; before, the changed field was dropped and the renewal made."""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol"], expires=utcnow() + timedelta(days=2))
    slice_cred = carol.GetCredential(carol_cred, EXP_URN, "slice")
    shown = _shown(carol, carol_cred, EXP_URN)
    later = (utcnow() + timedelta(days=5)).replace(microsecond=0)

    before = registry.written()
    for field, value in _changed_read_only_fields(registry, shown):
        fault = registry.fault(carol.Update, {**shown, field: value, "expires": format_time(later)}, [slice_cred])
        assert fault.faultCode == 3, (field, fault.faultString)
        assert f"{field!r} of {EXP} cannot be changed by Update" in fault.faultString, fault.faultString
    assert registry.written() == before

    assert carol.Update({**shown, "expires": format_time(later)}, [slice_cred]) == 1
    renewed = registry.records.get(EXP)
    assert renewed is not None and renewed.expires == later and renewed.researchers == ("tb.carol",)
