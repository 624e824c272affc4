"""The registry defects an interop hunt found with the real omni 2.11 and sfi.py, over real TLS on SQLite and a real
PostgreSQL. Each test replays the XML-RPC calls, and the records, those clients send (geni-tools'
omnilib/frameworks/framework_sfa.py, SFA's sfa/client/sfi.py):

- a slice's researchers renew it and change its researchers with its slice credential (omni renewslice, sfi.py
  update -t slice), which SFA's refresh privilege allows: Update answered 22 "update needs your own user
  credential"; a PI of the slice's authority gets the slice's credential too;
- omni createslice registers its slice with ``researcher`` and ``PI``: the slice was registered with no researchers,
  so its creator got no credential for it; SFA's other spellings (pi, keys) are read too, and a field the registry
  does not read is refused instead of dropped;
- a user's record shows ``reg-slices`` and ``reg-pi-authorities``: omni listmyslices found "no slices entry", sfi.py
  list showed no [IN slices] / [PI at].
"""

from __future__ import annotations

import calendar
import xmlrpc.client
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from sfa_omf.config import read_config
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.api import RegistryApi
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.records import MEMBERSHIPS_PREFILTER_MAX, Record, record_chain
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.credential import read_credential
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.registry.conftest import Registry
from tests.sshkeys import ssh_key
from tests.tls_harness import proxy

EXP = "tb.exp"
EXP_URN = "urn:publicid:IDN+tb+slice+exp"


def _admin(registry: Registry) -> RegistryAdmin:
    """What ``sfa-omf user|slice ...`` acts through, on the registry's own database."""
    settings = read_config(str(registry.directory / "sfa-omf.conf"))
    return RegistryAdmin(LocalAuthority.load(str(registry.directory), "tb"), registry.records, settings)


def _user(registry: Registry, name: str) -> tuple[Any, str]:
    """A user the operator adds (``sfa-omf user add NAME``, no PI): a proxy holding their key, and the user credential
    sfi.py and omni bootstrap with (GetSelfCredential)."""
    added = _admin(registry).add_user(name)
    gid, key = Path(added.sfi_dir) / f"tb.{name}.user.gid", Path(added.sfi_dir) / f"tb.{name}.pkey"
    user = proxy(registry.url, str(gid), str(key))
    return user, user.GetSelfCredential(gid.read_text(), f"tb.{name}", "user")


def _epoch(moment: datetime) -> int:
    """omni's renew_slice: int(time.mktime(requested_expiration.timetuple())), on a host whose clock is in UTC."""
    return calendar.timegm(moment.utctimetuple())


def _slice_record(registry: Registry, user: Any, user_cred: str, urn: str) -> dict[str, Any]:
    """omni's get_record_from_resolve_by_type(Resolve(urn, user_cred), 'slice'): the record it sends back whole."""
    records = user.Resolve(urn, user_cred)
    (found,) = [record for record in records if record.get("type") == "slice"]
    return dict(found)


def _credential_expiry(credential: str) -> datetime:
    return read_credential(credential.encode()).credential.expires


def test_omni_renewslice_renews_the_slice_with_its_slice_credential(registry: Registry) -> None:
    """carol, a researcher of tb.exp (no PI), runs omni renewslice exp DATE: GetCredential(user_cred, urn, 'slice'),
    Resolve(urn, user_cred), Update(the record with expires as epoch seconds, the slice credential), Resolve again;
    then omni's _print_slice_expiration fetches the slice credential again, which now ends with the slice. Before:
    Update answered 22 ("this is a slice credential ...: update needs your own user credential")."""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol"], expires=utcnow() + timedelta(days=2))
    slice_cred = carol.GetCredential(carol_cred, EXP_URN, "slice")
    record = _slice_record(registry, carol, carol_cred, EXP_URN)

    requested = (utcnow() + timedelta(days=20)).replace(microsecond=0)
    record["expires"] = _epoch(requested)
    assert carol.Update(record, slice_cred) == 1

    renewed = _slice_record(registry, carol, carol_cred, EXP_URN)
    assert parse_time(renewed["expires"]) == requested
    assert renewed["reg-researchers"] == ["tb.carol"]  # the rest of the record sent back whole: unchanged
    new_cred = carol.GetCredential(carol_cred, EXP_URN, "slice")
    assert abs(_credential_expiry(new_cred) - requested) <= timedelta(seconds=1)

    # The expiry as a string too (omni's createslice writes "%d"; sfi.py and people write RFC 3339), and shorter
    # than it is: a slice's researchers may end it sooner, as in SFA and geni-tools' clearinghouse.
    for sooner in (utcnow() + timedelta(days=10), utcnow() + timedelta(days=5)):
        for form in (str(_epoch(sooner)), format_time(sooner.replace(microsecond=0))):
            record["expires"] = form
            assert carol.Update(record, [new_cred]) == 1
            assert parse_time(_slice_record(registry, carol, carol_cred, EXP_URN)["expires"]) == sooner.replace(
                microsecond=0
            )


def test_a_slice_credential_renews_its_slice_within_the_authority_s_limit(registry: Registry) -> None:
    """With its slice credential a slice goes at most 30 days ahead (what a slice credential may live, so that the
    one fetched after the renewal ends with the slice): further is refused with 7 naming the latest end, and nothing
    is written; a PI's authority credential goes further, as sfa-omf slice renew does."""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol"], expires=utcnow() + timedelta(days=2))
    slice_cred = carol.GetCredential(carol_cred, EXP, "slice")
    before = registry.written()
    for too_far in ("+31d", format_time(utcnow() + timedelta(days=45))):
        fault = registry.fault(carol.Update, {"hrn": EXP, "type": "slice", "expires": too_far}, [slice_cred])
        assert fault.faultCode == 7, fault.faultString
        assert "at the latest (30 days from now" in fault.faultString, fault.faultString
        assert "sfa-omf slice renew" in fault.faultString
    assert registry.written() == before
    assert carol.Update({"hrn": EXP, "type": "slice", "expires": "+29d"}, [slice_cred]) == 1
    far = (utcnow() + timedelta(days=60)).replace(microsecond=0)
    assert registry.alice.Update({"hrn": EXP, "expires": format_time(far)}, [registry.auth_cred]) == 1
    # Set by a PI beyond the limit, the slice's expiry may still be brought nearer with its slice credential.
    nearer = (utcnow() + timedelta(days=50)).replace(microsecond=0)
    assert carol.Update({"hrn": EXP, "expires": format_time(nearer)}, [slice_cred]) == 1
    assert registry.records.get(EXP).expires == nearer  # type: ignore[union-attr]
    past = registry.fault(carol.Update, {"hrn": EXP, "expires": "2020-01-01T00:00:00Z"}, [slice_cred])
    assert past.faultCode == 1 and "in the past" in past.faultString


def test_a_slice_credential_renews_no_further_than_the_slice_s_certificates(registry: Registry) -> None:
    """Whatever the limit, a slice is not renewed past its GID's or its authority's end: no slice credential could
    be valid then. (A registry whose limit is ten years: in-process, with its real verifier and trusted roots.)"""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol"])
    slice_cred = carol.GetCredential(carol_cred, EXP, "slice")
    authority = LocalAuthority.load(str(registry.directory), "tb")
    verifier = CredentialVerifier(load_trusted_roots(authority.trusted_roots_dir), None)
    api = RegistryApi(authority, registry.records, verifier, max_slice_renew=timedelta(days=3650))
    carol_gid = registry.directory / "users" / "carol" / "sfi" / "tb.carol.user.gid"
    context = CallContext(load_gid_chain_file(str(carol_gid)), "127.0.0.1", "/")
    ends = min(gid.not_after for gid in record_chain(registry.records.get(EXP)))  # type: ignore[arg-type]

    with pytest.raises(xmlrpc.client.Fault) as refused:
        api(context, "Update", ({"hrn": EXP, "expires": format_time(ends + timedelta(days=1))}, [slice_cred]))
    assert refused.value.faultCode == 7, refused.value.faultString
    assert f"to {format_time(ends)} at the latest (when the certificates of {EXP}" in refused.value.faultString
    within = (ends - timedelta(days=1)).replace(microsecond=0)
    assert api(context, "Update", ({"hrn": EXP, "expires": format_time(within)}, [slice_cred])) == 1
    assert registry.records.get(EXP).expires == within  # type: ignore[union-attr]


@pytest.mark.usefixtures("register_again_at_once")  # tb.exp registered again at once
def test_sfi_update_changes_a_slice_s_researchers_with_its_slice_credential(registry: Registry) -> None:
    """sfi.py update -t slice -x tb.exp -r tb.carol,tb.alice sends {urn, hrn, type, reg-researchers} with the slice
    credential it fetched (a string). A slice credential changes its own slice's expiry and researchers only, while
    its owner is a researcher of it (or a PI of its authority): a researcher taken out does not put himself back with
    the credential he holds, nor does one of an earlier slice of the name act on the one registered now."""
    carol, carol_cred = _user(registry, "carol")
    dan, dan_cred = _user(registry, "dan")
    _admin(registry).create_slice("exp", ["carol", "dan"])
    slice_cred = carol.GetCredential(carol_cred, EXP, "slice")
    dan_slice_cred = dan.GetCredential(dan_cred, EXP, "slice")
    sfi_record = {"urn": EXP_URN, "hrn": EXP, "type": "slice", "reg-researchers": ["tb.carol", "tb.alice"]}
    assert carol.Update(sfi_record, slice_cred) == 1
    assert registry.records.get(EXP).researchers == ("tb.carol", "tb.alice")  # type: ignore[union-attr]

    before = registry.written()
    back = registry.fault(dan.Update, {**sfi_record, "reg-researchers": ["tb.carol", "tb.dan"]}, dan_slice_cred)
    assert back.faultCode == 3, back.faultString
    assert "tb.dan is no researcher of tb.exp" in back.faultString
    email = registry.fault(carol.Update, {"hrn": EXP, "type": "slice", "email": "x@example.org"}, slice_cred)
    assert email.faultCode == 3 and "not its email" in email.faultString, email.faultString
    other = registry.fault(carol.Update, {"hrn": "tb.demo", "reg-researchers": ["tb.carol"]}, slice_cred)
    assert other.faultCode == 22, other.faultString
    assert "this credential is for urn:publicid:IDN+tb+slice+exp, not for" in other.faultString
    user = registry.fault(carol.Update, {"hrn": "tb.carol", "email": "c@example.org"}, slice_cred)
    assert user.faultCode == 22 and "updates only the expires and reg-researchers of its own slice" in user.faultString
    keys = registry.fault(carol.Update, {"hrn": EXP, "reg-keys": [ssh_key("c@x")]}, slice_cred)
    assert keys.faultCode == 1 and "a slice record has no field 'reg-keys'" in keys.faultString
    # Her user credential does not change the slice: the refusal says which credential does.
    own = registry.fault(carol.Update, sfi_record, carol_cred)
    assert own.faultCode == 3 and "updated with its slice credential" in own.faultString, own.faultString
    assert registry.written() == before

    # tb.exp removed, and registered again under the same name with carol: her old credential is of the old slice.
    assert registry.alice.Remove(EXP, [registry.auth_cred], "slice") == 1
    _admin(registry).create_slice("exp", ["carol"])
    before = registry.written()
    earlier = registry.fault(carol.Update, sfi_record, slice_cred)
    assert earlier.faultCode == 22 and "an earlier slice named tb.exp" in earlier.faultString, earlier.faultString
    assert registry.written() == before
    assert carol.Update(sfi_record, carol.GetCredential(carol_cred, EXP, "slice")) == 1


def test_a_pi_of_the_slice_s_authority_gets_its_slice_credential(registry: Registry) -> None:
    """SFA's determine_user_rights gives a slice's credential to its researchers and to the PIs of its authority:
    alice (a PI of tb) is no researcher of tb.exp, and was refused (3). A user who is neither still is."""
    _user(registry, "carol")
    dan, dan_cred = _user(registry, "dan")
    _admin(registry).create_slice("exp", ["carol"], expires=utcnow() + timedelta(days=3))
    slice_cred = registry.alice.GetCredential(registry.alice_cred, EXP_URN, "slice")
    facts = read_credential(slice_cred.encode()).credential
    assert facts.target_urn == EXP_URN and facts.owner_urn == "urn:publicid:IDN+tb+user+alice"
    assert "refresh" in facts.privilege_names
    # ... with which she renews it as its researchers do (omni renewslice).
    record = _slice_record(registry, registry.alice, registry.alice_cred, EXP_URN)
    requested = (utcnow() + timedelta(days=9)).replace(microsecond=0)
    assert registry.alice.Update({**record, "expires": _epoch(requested)}, slice_cred) == 1
    assert registry.records.get(EXP).expires == requested  # type: ignore[union-attr]
    refused = registry.fault(dan.GetCredential, dan_cred, EXP_URN, "slice")
    assert refused.faultCode == 3 and "whose authority they are a PI of" in refused.faultString


def test_omni_createslice_registers_its_user_as_the_slice_s_researcher(registry: Registry) -> None:
    """omni createslice: GetCredential(user_cred, authority, 'authority'), then Register with omni's record, then
    GetCredential for the slice. SFA reads ``researcher`` as reg-researchers; omni's ``PI`` of a slice (its user,
    among the researchers) is ignored, as SFA ignores it. Before: the slice had no researchers and the last call was
    refused (3); running createslice again said 17."""
    auth_cred = registry.alice.GetCredential(registry.alice_cred, "tb", "authority")
    expiration = _epoch(utcnow() + timedelta(days=14))
    record = {
        "peer_authority": "",
        "description": "a slice",
        "url": "http://www.geni.net",
        "expires": str(expiration),  # (omni: "%d" % expiration)
        "authority": "tb",
        "researcher": ["tb.alice"],
        "hrn": "tb.exp3",
        "PI": ["tb.alice"],
        "type": "slice",
        "name": "tb.exp3",
    }
    assert registry.alice.Register(record, auth_cred).startswith("-----BEGIN CERTIFICATE-----")
    registered = registry.records.get("tb.exp3")
    assert registered is not None and registered.researchers == ("tb.alice",)
    assert registered.pis == () and registered.expires is not None and _epoch(registered.expires) == expiration
    slice_cred = registry.alice.GetCredential(registry.alice_cred, "urn:publicid:IDN+tb+slice+exp3", "slice")
    assert read_credential(slice_cred.encode()).credential.target_urn == "urn:publicid:IDN+tb+slice+exp3"


def test_sfa_s_other_spellings_of_a_field_are_read(registry: Registry) -> None:
    """``pi`` and ``researcher`` (SFA's normalize_input_record) change what reg-pis and reg-researchers do; ``keys``
    as before. Two spellings of one field that disagree are refused, as are PIs of a slice that are not among its
    researchers."""
    _user(registry, "carol")
    auth = [registry.auth_cred]
    assert registry.alice.Update({"hrn": "tb", "type": "authority", "pi": ["tb.alice", "tb.carol"]}, auth) == 1
    assert registry.records.get("tb").pis == ("tb.alice", "tb.carol")  # type: ignore[union-attr]
    assert registry.alice.Update({"hrn": "tb.demo", "researcher": ["tb.carol"]}, auth) == 1
    assert registry.records.get("tb.demo").researchers == ("tb.carol",)  # type: ignore[union-attr]
    key = ssh_key("carol@laptop")
    assert registry.alice.Update({"hrn": "tb.carol", "keys": [key]}, auth) == 1
    assert registry.records.get("tb.carol").keys == (key,)  # type: ignore[union-attr]

    before = registry.written()
    both = {"hrn": "tb.demo", "reg-researchers": ["tb.alice"], "researcher": ["tb.bob"]}
    fault = registry.fault(registry.alice.Update, both, auth)
    assert fault.faultCode == 1 and "'reg-researchers' and 'researcher', which are one field" in fault.faultString
    pi_only = {"hrn": "tb.exp4", "type": "slice", "researcher": ["tb.alice"], "PI": ["tb.bob"]}
    fault = registry.fault(registry.alice.Register, pi_only, auth)
    assert fault.faultCode == 1 and "a slice record has no field 'PI'" in fault.faultString, fault.faultString
    assert registry.written() == before


def test_a_field_the_registry_does_not_read_is_refused_not_dropped(registry: Registry) -> None:
    """sfi.py's -X extras and -s slices asked for changes the registry silently dropped; the fields real clients
    send with no meaning here (sfi.py register's first_name and last_name, Resolve's own fields sent back) pass."""
    auth = [registry.auth_cred]
    before = registry.written()
    for record, field in (
        ({"hrn": "tb.newbie", "type": "user", "enabled": True}, "'enabled'"),
        ({"hrn": "tb.bob", "type": "user", "slices": ["tb.demo"]}, "'slices'"),
    ):
        for call in (registry.alice.Register, registry.alice.Update):
            fault = registry.fault(call, record, auth)
            assert fault.faultCode == 1, fault.faultString
            assert f"the field {field} is not one this registry reads" in fault.faultString, fault.faultString
    assert registry.written() == before
    sfi_user = {"hrn": "tb.newbie", "type": "user", "email": "n@example.org", "first_name": "tb.newbie"}
    assert registry.alice.Register({**sfi_user, "last_name": "tb.newbie"}, auth).startswith("-----BEGIN")
    # A user's record as Resolve shows it now (reg-slices, reg-pi-authorities ...) goes back with a new address.
    (shown,) = registry.alice.Resolve("tb.bob", [registry.alice_cred])
    assert shown["reg-slices"] == ["tb.demo"]
    assert registry.alice.Update({**shown, "email": "bob@new.example.org"}, auth) == 1
    assert registry.records.get("tb.bob").email == "bob@new.example.org"  # type: ignore[union-attr]


def test_a_user_record_shows_the_user_s_slices_and_pi_authorities(registry: Registry) -> None:
    """omni listmyslices reads 'slices' or 'reg-slices' of the user's record (HRNs, made URNs) and said "malformed
    (no slices entry)"; sfi.py list and myslice read reg-slices and reg-pi-authorities. Resolve and List show both."""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol", "alice"])
    (alice,) = registry.alice.Resolve("tb.alice", registry.alice_cred)
    assert alice["reg-slices"] == ["tb.demo", EXP] and alice["reg-pi-authorities"] == ["tb"]
    # omni's list_my_slices, as it reads the record.
    slices = alice["slices"] if "slices" in alice else alice["reg-slices"]
    assert [f"urn:publicid:IDN+tb+slice+{hrn.split('.')[-1]}" for hrn in slices] == [
        "urn:publicid:IDN+tb+slice+demo",
        EXP_URN,
    ]
    (me,) = carol.Resolve("urn:publicid:IDN+tb+user+carol", [carol_cred])
    assert me["reg-slices"] == [EXP] and me["reg-pi-authorities"] == []
    listed = {record["hrn"]: record for record in registry.alice.List("tb", [registry.alice_cred])}
    assert listed["tb.bob"]["reg-slices"] == ["tb.demo"] and listed["tb.bob"]["reg-pi-authorities"] == ["tb"]
    assert "reg-slices" not in listed[EXP] and "reg-slices" not in registry.alice.Resolve("tb", registry.alice_cred)[0]


def test_a_user_s_memberships_are_read_in_one_query(registry: Registry) -> None:
    """Resolve of users reads their slices and PI authorities in one query, however many users and slices (the
    database picks the rows for a few users; for many, one read of the member lists): never a read per slice. A
    name's characters that are wildcards of LIKE (``_``) match only themselves."""
    records = registry.records
    for index in range(40):
        records.add(Record(f"tb.s{index}", "slice", f"urn:publicid:IDN+tb+slice+s{index}", "", researchers=("tb.a_b",)))
    records.add(Record("tb.other", "slice", "urn:publicid:IDN+tb+slice+other", "", researchers=("tb.axb", "tb.a")))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "registry_record" in statement:
            statements.append(statement)

    event.listen(registry.database.engine, "before_cursor_execute", count)
    try:
        few = records.memberships(["tb.a_b", "tb.a", "tb.alice"])
        assert len(statements) == 1, statements
        many = records.memberships([f"tb.user{index}" for index in range(MEMBERSHIPS_PREFILTER_MAX)] + ["tb.a_b"])
        assert len(statements) == 2, statements
    finally:
        event.remove(registry.database.engine, "before_cursor_execute", count)
    expected = tuple(sorted(f"tb.s{index}" for index in range(40)))
    assert few["tb.a_b"] == (expected, ()) and many["tb.a_b"] == (expected, ())
    assert few["tb.a"] == (("tb.other",), ()) and few["tb.alice"] == (("tb.demo",), ("tb",))
    assert many["tb.user0"] == ((), ())


def test_a_missing_record_says_record_not_found_as_omni_expects(registry: Registry) -> None:
    """omni createslice first resolves the slice to see whether the name is free, and stays quiet only when the fault
    says "Record not found" (SFA's RecordNotFound); any other words it logs as an ERROR before going on."""
    carol, carol_cred = _user(registry, "carol")
    with pytest.raises(xmlrpc.client.Fault) as refused:
        carol.Resolve("urn:publicid:IDN+tb+slice+free", carol_cred)
    assert refused.value.faultCode == 12
    assert "Record not found" in refused.value.faultString and "tb.free" in refused.value.faultString
