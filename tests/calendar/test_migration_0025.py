"""Migration 0025: users removed from the registry before it (by an sfa-omf whose Remove left their HRN in slices'
researchers and authorities' PIs, and their rows in the aggregate's slice users) lose those memberships, so that
whoever registers the name next gets neither the removed user's slice credentials, the authority's credential as a
PI, their slices in a private feed nor their SSH keys in a login. Registered users and other authorities' users keep
theirs. On SQLite and a real PostgreSQL, through Alembic's own upgrade, the operator's ``user add`` and the Registry
API over TLS."""

from __future__ import annotations

import shutil
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, bindparam, select, text
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database, head_revision
from sfa_omf.calendar.models import RegistryRecord, Slice, SliceUser
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.config import read_config
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.app import start_registry
from tests.calendar.conftest import fresh_database
from tests.postgres import empty_postgres
from tests.registry.test_removed_logins import migrate_database
from tests.tls_harness import proxy

ALICE = "urn:publicid:IDN+tb+user+alice"  # removed before the upgrade
BOB = "urn:publicid:IDN+tb+user+bob"  # registered
SITE_ERIN = "urn:publicid:IDN+tb:site2+user+erin"  # a sub-authority's user, removed before the upgrade
FOREIGN_ALICE = "urn:publicid:IDN+onelab:inria+user+alice"  # another authority's: nothing says she was removed
#: Registered users whose URN is spelt in two ways: carol's record as stored before 6555b1c (type upper case), the
#: aggregate's row in the canonical form; dan's the other way round. Each names the registered user all the same.
CAROL_RECORDED, CAROL_SENT = "urn:publicid:IDN+tb+USER+carol", "urn:publicid:IDN+tb+user+carol"
DAN_RECORDED, DAN_SENT = "urn:publicid:IDN+tb+user+dan", "URN:publicid:idn+tb+User+dan"
DEMO = "urn:publicid:IDN+tb+slice+demo"
#: GENI's INSUFFICIENT_PRIVILEGES (sfa_omf/errors.py).
INSUFFICIENT_PRIVILEGES = 3


def insert_record(connection: Any, hrn: str, kind: str, urn: str, researchers: list[str], pis: list[str]) -> None:
    """A registry row in SQL, as an sfa-omf at migration 0024 wrote it."""
    connection.execute(
        text(
            "INSERT INTO registry_record (hrn, type, urn, gid, email, keys, researchers, pis, created_s) "
            "VALUES (:hrn, :kind, :urn, '', '', '[]', :researchers, :pis, 0)"
        ).bindparams(bindparam("researchers", type_=JSON), bindparam("pis", type_=JSON)),
        {"hrn": hrn, "kind": kind, "urn": urn, "researchers": researchers, "pis": pis},
    )


def registry_lists(database: Database) -> dict[str, tuple[list[str], list[str], int | None]]:
    """Each slice and authority record's researchers, PIs and last change, by HRN."""
    with database.read() as session:
        rows = session.scalars(select(RegistryRecord).where(RegistryRecord.type.in_(("slice", "authority"))))
        return {row.hrn: (list(row.researchers), list(row.pis or []), row.updated_s) for row in rows}


def slice_users(database: Database) -> dict[str, list[str]]:
    """The aggregate's slice users with the SSH keys they sent, by user URN."""
    with database.read() as session:
        return {row.user_urn: list(row.ssh_keys) for row in session.scalars(select(SliceUser))}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0025_forgets_the_memberships_of_users_removed_before_it(kind: str, tmp_path: Path) -> None:
    """Local users without a record leave researchers, PIs and slice users; a registered user (whatever the case of
    the URN's prefix and type, in the record or the aggregate's row), another authority's user and a record nobody
    changed are as they were. A second run changes nothing."""
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0024")
        with database.engine.begin() as connection:
            insert_record(connection, "tb", "authority", "urn:publicid:IDN+tb+authority+sa", [], ["tb.alice", "tb.bob"])
            insert_record(connection, "tb.bob", "user", BOB, [], [])
            insert_record(connection, "tb.carol", "user", CAROL_RECORDED, [], [])
            insert_record(connection, "tb.dan", "user", DAN_RECORDED, [], [])
            members = ["tb.alice", "tb.bob", "onelab.inria.alice", "tb.site2.erin"]
            insert_record(connection, "tb.demo", "slice", DEMO, members, [])
            insert_record(connection, "tb.bobs", "slice", "urn:publicid:IDN+tb+slice+bobs", ["tb.bob"], [])
            connection.execute(
                text("INSERT INTO slice (urn, expires_s, shut_down) VALUES (:urn, 0, false)"), {"urn": DEMO}
            )
            slice_id = connection.execute(text("SELECT id FROM slice")).scalar()
            for user in (ALICE, BOB, SITE_ERIN, FOREIGN_ALICE, CAROL_SENT, DAN_SENT):
                connection.execute(
                    text(
                        "INSERT INTO slice_user (slice_id, user_urn, ssh_keys) VALUES (:slice, :user, :keys)"
                    ).bindparams(bindparam("keys", type_=JSON)),
                    {"slice": slice_id, "user": user, "keys": [f"ssh-ed25519 AAAA {user.rsplit('+', 1)[1]}"]},
                )

        migrate_database(database, "upgrade", "head")

        lists = registry_lists(database)
        demo_researchers, _, demo_updated = lists["tb.demo"]
        authority_researchers, authority_pis, authority_updated = lists["tb"]
        assert demo_researchers == ["tb.bob", "onelab.inria.alice"], "removed users are still researchers"
        assert (authority_researchers, authority_pis) == ([], ["tb.bob"]), "the removed alice is still a PI"
        assert demo_updated is not None and authority_updated is not None, "changed without updated_s"
        assert lists["tb.bobs"] == (["tb.bob"], [], None), "a record that names no removed user was changed"
        assert slice_users(database) == {
            BOB: ["ssh-ed25519 AAAA bob"],
            FOREIGN_ALICE: ["ssh-ed25519 AAAA alice"],
            CAROL_SENT: ["ssh-ed25519 AAAA carol"],
            DAN_SENT: ["ssh-ed25519 AAAA dan"],
        }, "a removed user is still a user of the aggregate's slice, or a registered one lost their keys"
        assert Timeline(database).slices_of_user(ALICE) == set()

        # Idempotent: run again, nothing more changes (not even updated_s).
        migrate_database(database, "downgrade", "0024")
        migrate_database(database, "upgrade", "head")
        assert registry_lists(database) == lists
        assert set(slice_users(database)) == {BOB, FOREIGN_ALICE, CAROL_SENT, DAN_SENT}
    finally:
        database.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.usefixtures("register_again_at_once")  # the name registered again after the upgrade, at once
def test_whoever_registers_a_name_removed_before_the_upgrade_gets_none_of_its_credentials(
    kind: str, running_reactor: Any, tmp_path: Path
) -> None:
    """The hunt's reproduction: alice, a researcher of tb.demo, a user of its aggregate slice and a PI of tb, is
    removed by an sfa-omf at migration 0024 (her record alone deleted); after ``sfa-omf db upgrade`` another person
    is registered as tb.alice. Before 0025 they got tb.demo's slice credential and tb's authority credential from
    the registry, and tb.demo in their private feed. Bob, registered all along, keeps both credentials."""
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    database = Database(settings.calendar_url if kind == "sqlite" else empty_postgres())
    try:
        database.upgrade()
        register_demo(report, database)  # tb.demo with researchers tb.alice and tb.bob
        records = Records(database)
        authority = LocalAuthority.load(settings.data_dir, "tb")
        records.add(Record("tb", "authority", authority.urn, "", pis=("tb.alice", "tb.bob")))  # as user add --pi does
        with database.write() as session:  # both sent their keys to the aggregate's tb.demo
            demo_slice = Slice(urn=DEMO, expires_s=4_000_000_000, shut_down=False)
            session.add(demo_slice)
            session.flush()
            for user in (ALICE, BOB):
                session.add(SliceUser(slice_id=demo_slice.id, user_urn=user, ssh_keys=[f"ssh-ed25519 AAAA {user}"]))

        # An sfa-omf at 0024 removes alice: her record, GID file and sfi.py directory go; the rest stays.
        migrate_database(database, "downgrade", "0024")
        with database.engine.begin() as connection:
            connection.execute(text("DELETE FROM registry_record WHERE hrn = 'tb.alice'"))
        authority.forget("tb.alice")
        shutil.rmtree(report.sfi_dirs["alice"])
        migrate_database(database, "upgrade", "head")  # sfa-omf db upgrade
        assert database.schema_revision() == head_revision()

        new_alice = RegistryAdmin(authority, records, settings).add_user("alice")  # another person, their own key
        assert Timeline(database).slices_of_user(ALICE) == set(), "the removed alice's slice in the new alice's feed"
        assert set(Timeline(database).users_of_slices({DEMO})[DEMO]) == {BOB}

        port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
        try:
            url = f"https://127.0.0.1:{port.getHost().port}/"
            sfi_dir = Path(new_alice.sfi_dir)
            alice = proxy(url, str(sfi_dir / "tb.alice.user.gid"), str(sfi_dir / "tb.alice.pkey"))
            alice_cred = alice.GetSelfCredential((sfi_dir / "tb.alice.user.gid").read_text(), "tb.alice", "user")
            for target, target_type in (("tb.demo", "slice"), ("tb", "authority")):
                with pytest.raises(xmlrpc.client.Fault) as refused:
                    alice.GetCredential(alice_cred, target, target_type)
                assert refused.value.faultCode == INSUFFICIENT_PRIVILEGES, (target, refused.value.faultString)

            bob_dir = Path(report.sfi_dirs["bob"])
            bob = proxy(url, str(bob_dir / "tb.bob.user.gid"), str(bob_dir / "tb.bob.pkey"))
            bob_cred = (bob_dir / "tb.bob.user.cred").read_text()
            assert bob.GetCredential(bob_cred, "tb.demo", "slice").startswith("<?xml")
            assert bob.GetCredential(bob_cred, "tb", "authority").startswith("<?xml")
        finally:
            blockingCallFromThread(running_reactor, port.stopListening)
    finally:
        database.dispose()
