"""The Registry API's answers to the defects a later hunt found, over real TLS on SQLite and a real PostgreSQL: a name
that differs from a registered one only in case is refused, and removing one registered before never retires the
other's live login; a delegate may not remove a PI; Update refuses an hrn and a urn naming different records; nodes
are not registered (the inventory records them) and a node record the inventory does not hold can be removed; member
lists hold users, each once, and a field the record's type does not have is refused; a removed user's credential is
refused with 22; a name that is not ASCII, or whose GID was issued but not registered, is refused in plain words.
Every refusal leaves the GID files and the records as they were."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import RegistryRecord
from sfa_omf.config import read_config
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.registry.accounts import Accounts, mapped_login
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import NAME_LOCK_CLASS, Record, Records
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import chain_pem
from tests.postgres import empty_postgres
from tests.registry.conftest import Registry, Site
from tests.sshkeys import ssh_key, ssh_rsa_key

BOB = "urn:publicid:IDN+tb+user+bob"
DEMO = "urn:publicid:IDN+tb+slice+demo"


def _admin(registry: Registry) -> RegistryAdmin:
    """What ``sfa-omf user|slice ...`` acts through, on the registry's own database."""
    settings = read_config(str(registry.directory / "sfa-omf.conf"))
    return RegistryAdmin(LocalAuthority.load(str(registry.directory), "tb"), registry.records, settings)


def test_a_name_differing_from_a_registered_one_only_in_case_is_refused(registry: Registry) -> None:
    """tb.Bob beside tb.bob would share tb.bob's local login (logins are derived from the URN in lower case)."""
    before = registry.written()
    for record, registered in (
        ({"hrn": "tb.Bob", "type": "user"}, "tb.bob"),
        ({"hrn": "tb.DEMO", "type": "slice"}, "tb.demo"),
    ):
        fault = registry.fault(registry.alice.Register, record, [registry.auth_cred])
        assert fault.faultCode == 17, fault.faultString  # ALREADY_EXISTS
        assert f"the registered {record['type']} {registered} only in the case" in fault.faultString, fault.faultString
        assert "choose another name" in fault.faultString
    admin = _admin(registry)
    with pytest.raises(GeniError) as refused:
        admin.add_user("Bob")
    assert refused.value.reason is Reason.ALREADY_EXISTS and "tb.bob" in refused.value.message
    with pytest.raises(GeniError) as refused:
        admin.create_slice("Demo", ["alice"])
    assert refused.value.reason is Reason.ALREADY_EXISTS and "tb.demo" in refused.value.message
    # The guarantee, in the transaction that adds a record (whoever calls it).
    with pytest.raises(GeniError) as refused:
        registry.records.add(Record("tb.BOB", "user", "urn:publicid:IDN+tb+user+BOB", ""))
    assert refused.value.reason is Reason.ALREADY_EXISTS
    assert registry.written() == before
    assert not (registry.directory / "users" / "Bob").exists()


def test_init_refuses_a_demo_user_differing_from_a_registered_one_only_in_case(tmp_path: Path) -> None:
    """tb.Bob registered (sfa-omf user add Bob), then ``init --user bob``: refused before anything is written."""
    directory = tmp_path / "tb"
    report = init_directory(str(directory), "tb", ("alice",))
    settings = read_config(str(directory / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    try:
        database.upgrade()
        register_demo(report, database)
        RegistryAdmin(LocalAuthority.load(str(directory), "tb"), Records(database), settings).add_user("Bob")
        gids = sorted(os.listdir(directory / "gids"))

        with pytest.raises(GeniError) as refused:
            init_directory(str(directory), "tb", ("alice", "bob"))

        assert refused.value.reason is Reason.ALREADY_EXISTS and "tb.Bob" in refused.value.message
        assert sorted(os.listdir(directory / "gids")) == gids
        assert not (directory / "users" / "bob").exists()
    finally:
        database.dispose()


def test_removing_a_case_twin_never_retires_the_other_s_live_login(registry: Registry) -> None:
    """tb.Bob, registered by an earlier version beside tb.bob and never given a login, is removed: tb.bob keeps his
    live login, and the operator is not told to remove its account."""
    accounts = Accounts(registry.database)
    live = accounts.login_for(BOB, DEMO)
    with registry.database.write() as session:  # as an earlier version registered it
        session.add(
            RegistryRecord(
                hrn="tb.Bob",
                type="user",
                urn="urn:publicid:IDN+tb+user+Bob",
                gid="",
                created_s=int(utcnow().timestamp()),
            )
        )

    removed = _admin(registry).remove("tb.Bob", "user")

    assert removed.retired_login and removed.retired_login != live, removed
    assert removed.login_used_by == ()
    assert mapped_login(registry.database, BOB) == live
    assert accounts.login_for(BOB, DEMO) == live
    assert registry.records.get("tb.bob") is not None


def test_removing_a_user_whose_login_is_pinned_for_another_too_says_to_keep_its_account(
    registry: Registry,
) -> None:
    accounts = Accounts(registry.database)
    accounts.pin(BOB, "lab")
    accounts.pin("urn:publicid:IDN+tb+user+alice", "lab")

    removed = _admin(registry).remove("tb.bob", "user")

    assert removed.retired_login == "lab"
    assert removed.login_used_by == ("urn:publicid:IDN+tb+user+alice",)


def test_a_delegate_may_not_remove_a_pi(site: Site) -> None:
    """Removing a PI takes them out of the authority's PIs: as changing the PIs, it needs a PI's own credential."""
    delegated = site.dave_tb_auth_cred
    before = site.written()

    refused = site.fault(site.dave.Remove, "tb.alice", [delegated], "user")

    assert refused.faultCode == 3, refused.faultString
    assert "tb.alice is a PI of tb" in refused.faultString
    assert "needs a PI's own authority credential (not a delegated one)" in refused.faultString
    assert site.written() == before
    assert site.records.get("tb").pis == ("tb.alice",)  # type: ignore[union-attr]
    assert site.dave.Remove("tb.bob", [delegated], "user") == 1  # a user who is no PI: as before


def test_update_refuses_an_hrn_and_a_urn_naming_different_records(registry: Registry) -> None:
    before = registry.written()
    record = {"hrn": "tb.bob", "urn": "urn:publicid:IDN+tb+user+alice", "type": "user", "email": "new@example.org"}

    fault = registry.fault(registry.alice.Update, record, [registry.auth_cred])

    assert fault.faultCode == 1, fault.faultString
    assert "name different records" in fault.faultString
    assert registry.written() == before
    same = {"hrn": "tb.bob", "urn": BOB, "type": "user", "email": "new@example.org"}
    assert registry.alice.Update(same, [registry.auth_cred]) == 1
    assert registry.records.get("tb.bob").email == "new@example.org"  # type: ignore[union-attr]


def test_nodes_are_not_registered(registry: Registry) -> None:
    before = registry.written()
    fault = registry.fault(registry.alice.Register, {"hrn": "tb.nodee1", "type": "node"}, [registry.auth_cred])
    assert fault.faultCode == 1, fault.faultString
    assert "sfa-omf node add" in fault.faultString
    assert registry.written() == before


def test_a_node_record_the_inventory_lacks_can_be_removed(registry: Registry) -> None:
    """A node record an earlier version registered: no inventory node, so ``sfa-omf node remove`` cannot remove it."""
    authority = LocalAuthority.load(str(registry.directory), "tb")
    chain, _ = authority.issue_gid("tb.ghost", "node")
    registry.records.add(Record("tb.ghost", "node", "urn:publicid:IDN+tb+node+ghost", chain_pem(chain)))
    assert registry.alice.Remove("tb.ghost", [registry.auth_cred], "node") == 1
    assert registry.records.get("tb.ghost") is None
    assert not (registry.directory / "gids" / "tb.ghost.gid").exists(), "the next start would record it again"
    # A node of the inventory still goes with the node.
    before = registry.written()
    fault = registry.fault(registry.alice.Remove, "tb.node1", [registry.auth_cred], "node")
    assert fault.faultCode == 1 and "sfa-omf node remove" in fault.faultString
    assert registry.written() == before


def test_member_lists_hold_users_only(registry: Registry) -> None:
    """A slice's researchers and an authority's PIs are users: a slice or authority named there is refused."""
    auth = [registry.auth_cred]
    before = registry.written()
    refused = [
        (registry.alice.Register, {"hrn": "tb.dup", "type": "slice", "reg-researchers": ["tb.bob", DEMO]}),
        (registry.alice.Register, {"hrn": "tb.dup", "type": "slice", "reg-researchers": ["tb.demo"]}),
        (registry.alice.Update, {"hrn": "tb", "reg-pis": ["tb.alice", "urn:publicid:IDN+tb+authority+sa"]}),
        (registry.alice.Update, {"hrn": "tb.demo", "reg-researchers": ["tb.alice", "tb"]}),
    ]
    for call, record in refused:
        fault = registry.fault(call, record, auth)
        assert fault.faultCode == 1, (record, fault.faultString)
        assert registry.written() == before, record
    fault = registry.fault(registry.alice.Register, refused[0][1], auth)
    assert (
        "reg-researchers[1] urn:publicid:IDN+tb+slice+demo names a record of type slice: researchers are users"
        in fault.faultString
    )
    fault = registry.fault(registry.alice.Update, refused[3][1], auth)
    assert "reg-researchers[1] tb is a record of type authority here, not a user" in fault.faultString, (
        fault.faultString
    )
    # A user of another authority, or one not registered yet, may be named (as before).
    assert registry.alice.Update({"hrn": "tb.demo", "reg-researchers": ["tb.alice", "fed.dave", "tb.later"]}, auth)


def test_member_lists_and_keys_hold_each_once(registry: Registry) -> None:
    auth = [registry.auth_cred]
    twice = ["tb.bob", BOB, "tb.alice", "tb.bob"]
    registry.alice.Register({"hrn": "tb.dup", "type": "slice", "reg-researchers": twice}, auth)
    assert registry.records.get("tb.dup").researchers == ("tb.bob", "tb.alice")  # type: ignore[union-attr]
    pis = ["tb.alice", "tb.alice", "urn:publicid:IDN+tb+user+alice"]
    assert registry.alice.Update({"hrn": "tb", "reg-pis": pis}, auth) == 1
    assert registry.records.get("tb").pis == ("tb.alice",)  # type: ignore[union-attr]
    key, other = ssh_key("alice@laptop"), ssh_key("alice@desk")
    assert registry.alice.Update({"hrn": "tb.alice", "reg-keys": [key, other, key]}, [registry.alice_cred]) == 1
    assert registry.records.get("tb.alice").keys == (key, other)  # type: ignore[union-attr]
    # (A user registered with keys holds the GID of the first ssh-rsa one.)
    rsa_key = ssh_rsa_key("carol@laptop")
    registry.alice.Register({"hrn": "tb.carol", "type": "user", "reg-keys": [rsa_key, key, rsa_key, key]}, auth)
    assert registry.records.get("tb.carol").keys == (rsa_key, key)  # type: ignore[union-attr]


def test_a_field_the_record_type_does_not_have_is_refused(registry: Registry) -> None:
    auth = [registry.auth_cred]
    before = registry.written()
    refused = [
        (registry.alice.Update, {"hrn": "tb.bob", "reg-researchers": ["tb.alice"]}, "user", "reg-researchers"),
        (registry.alice.Update, {"hrn": "tb.bob", "expires": "2040-01-01T00:00:00Z"}, "user", "expires"),
        (registry.alice.Update, {"hrn": "tb.demo", "reg-pis": ["tb.alice"]}, "slice", "reg-pis"),
        (registry.alice.Update, {"hrn": "tb", "reg-keys": [ssh_key("x@y")]}, "authority", "reg-keys"),
        (registry.alice.Register, {"hrn": "tb.dup", "type": "slice", "keys": [ssh_key("x@y")]}, "slice", "keys"),
        (
            registry.alice.Register,
            {"hrn": "tb.dup", "type": "user", "expires": "2040-01-01T00:00:00Z"},
            "user",
            "expires",
        ),
    ]
    for call, record, kind, field in refused:
        fault = registry.fault(call, record, auth)
        assert fault.faultCode == 1, (record, fault.faultString)
        assert f"a {kind} record has no field {field!r}" in fault.faultString, fault.faultString
        assert registry.written() == before, record
    # What sfi.py show gives back (every field, empty where the type has none) updates as before.
    (shown,) = registry.alice.Resolve("tb.bob", [registry.alice_cred])
    assert registry.alice.Update({**shown, "email": "bob2@example.org"}, auth) == 1
    assert registry.records.get("tb.bob").email == "bob2@example.org"  # type: ignore[union-attr]


def test_a_removed_user_s_credential_is_refused_as_no_longer_registered(registry: Registry) -> None:
    assert registry.alice.Remove("tb.bob", [registry.auth_cred], "user") == 1
    for call, args in (
        (registry.bob.Resolve, ("tb.alice", [registry.bob_cred])),
        (registry.bob.List, ("tb", [registry.bob_cred])),
    ):
        fault = registry.fault(call, *args)
        assert fault.faultCode == 22, fault.faultString  # CREDENTIAL_MISMATCH, as docs/registry.md says
        assert "tb.bob is no longer registered here" in fault.faultString, fault.faultString


def test_a_name_that_is_not_ascii_is_refused_in_plain_words(registry: Registry) -> None:
    before = registry.written()
    fault = registry.fault(registry.alice.Register, {"hrn": "tb.élise", "type": "user"}, [registry.auth_cred])
    assert fault.faultCode == 1, fault.faultString
    assert "not ASCII (use letters, digits, '-' and '_')" in fault.faultString, fault.faultString
    assert "A-label" not in fault.faultString
    with pytest.raises(BadArgs) as refused:
        _admin(registry).add_user("élise")
    assert "use letters, digits, '-' and '_'" in refused.value.message
    assert registry.written() == before


def test_a_name_whose_gid_was_issued_but_not_registered_is_refused_as_existing(registry: Registry) -> None:
    """As ``sfa-omf credential issue --type slice`` leaves it until the next start: 17, no path of the server's."""
    LocalAuthority.load(str(registry.directory), "tb").issue_gid("tb.pending", "slice")
    before = registry.written()
    fault = registry.fault(registry.alice.Register, {"hrn": "tb.pending", "type": "slice"}, [registry.auth_cred])
    assert fault.faultCode == 17, fault.faultString
    assert "a GID was issued for tb.pending already" in fault.faultString
    assert str(registry.directory) not in fault.faultString and "gids" not in fault.faultString
    assert registry.written() == before  # (the issued GID is not the call's to delete)


def test_two_registrations_of_names_differing_only_in_case_check_one_after_the_other() -> None:
    """PostgreSQL: while a registration of tb.bob holds its name's lock (not committed yet), one of tb.Bob waits for
    it, then finds it and is refused; without the lock both would be stored."""
    database = Database(empty_postgres())
    database.upgrade()
    records = Records(database)
    twin = Record("tb.Bob", "user", "urn:publicid:IDN+tb+user+Bob", "")
    outcome: list[BaseException | None] = []

    def register_twin() -> None:
        try:
            records.add(twin)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=register_twin)
    try:
        with database.write() as session:  # a registration of tb.bob, in progress
            session.execute(select(func.pg_advisory_xact_lock(NAME_LOCK_CLASS, _name_key("tb.bob"))))
            session.add(
                RegistryRecord(
                    hrn="tb.bob", type="user", urn="urn:publicid:IDN+tb+user+bob", gid="", email="", created_s=0
                )
            )
            session.flush()
            worker.start()
            _wait_for_advisory_lock_waiter(database)
        worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], GeniError), outcome
        assert outcome[0].reason == Reason.ALREADY_EXISTS and "only in the case" in outcome[0].message
        assert records.get("tb.Bob") is None
    finally:
        if worker.is_alive():
            worker.join(30)
        database.dispose()


def _name_key(hrn: str) -> int:
    return int.from_bytes(hashlib.sha256(hrn.lower().encode("utf-8")).digest()[:4], "big", signed=True)


def _wait_for_advisory_lock_waiter(database: Database) -> None:
    """Until a session of this database waits for an advisory lock (bounded: a hang is a failure)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with database.engine.connect() as connection:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            ).scalar()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("no registration waited for the name's lock")
