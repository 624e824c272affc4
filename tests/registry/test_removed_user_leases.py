"""A user removed from the registry leaves their leases in the calendar for the record, as nobody's own: whoever is
registered next under the name (the same URN) must not find them in their private feed or on /calendar/me, be told
of them by notification, be charged for them in the per-user limit, nor use the removed user's private saved images
(registry/records.py ``Records.remove``). Users of other authorities and registered users keep theirs. Real
calendar on SQLite and PostgreSQL, the web calendar's own handlers, the notifier's own outbox writes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import JSON, bindparam, select, text

from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.models import NotifyEvent, NotifyOutbox
from sfa_omf.calendar.outbox import LeaseNews, add_lease_event
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.images.store import ImageStore
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.registry.records import Record, Records
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki
from tests.registry import test_removed_logins as removed_logins
from tests.registry.test_removed_logins import insert_authority_and_bob, migrate_database
from tests.sshkeys import ssh_key
from tests.web import conftest as web_conftest
from tests.web.conftest import ALICE, DEMO, EXPIRES, Lab, at
from tests.web.test_web_app import events, get

BOB = "urn:publicid:IDN+testbed+user+bob"
FOREIGN_ALICE = "urn:publicid:IDN+elsewhere+user+alice"  # another authority's alice, never in this registry
SHARED = "urn:publicid:IDN+testbed+slice+shared"  # booked without geni_users: it lists no user

# The web calendar's lab (on SQLite and on PostgreSQL) is this module's too.
database = web_conftest.database
lab = web_conftest.lab


def register(records: Records, hrn: str, urn: str, email: str) -> None:
    records.add(Record(hrn, "user", urn, "", email))


def registry_with_alice_and_bob(lab: Lab) -> Records:
    """The testbed authority's registry holding alice (who booked the lab's demo lease) and bob."""
    records = Records(lab.database)
    records.add(Record("testbed", "authority", "urn:publicid:IDN+testbed+authority+sa", ""))
    register(records, "testbed.alice", ALICE, "first.alice@testbed.example")
    register(records, "testbed.bob", BOB, "bob@testbed.example")
    return records


def book(lab: Lab, slice_urn: str, owner: str, node: str, start: float) -> str:
    request = [BookingRequest(node_urn(node), at(start), at(start + 1))]
    return lab.bookings.book(slice_urn, EXPIRES, request, owner_urn=owner).leases[0].id


def test_the_next_holder_of_a_removed_users_name_does_not_get_their_leases(
    lab: Lab, pki: DemoPki, tmp_path: Path
) -> None:
    records = registry_with_alice_and_bob(lab)
    shared_lease = book(lab, SHARED, ALICE, "n2", 20)  # a slice without user list: hers for having booked in it
    bobs_lease = book(lab, SHARED, BOB, "n1", 22)
    foreign_lease = book(lab, "urn:publicid:IDN+elsewhere+slice+x", FOREIGN_ALICE, "n2", 24)
    with lab.database.write() as session:  # news recorded about her lease while she was registered
        news = LeaseNews("failed", f"{lab.demo_lease}:failed:1", "node down")
        add_lease_event(session, lab.demo_lease, news, lab.now)
    images = ImageStore(lab.database, tmp_path / "images")
    (tmp_path / "saved.img").write_bytes(b"her container's files")
    images.add(tmp_path / "saved.img", "alice-saved", ALICE, lab.now, private=True)

    assert records.remove("testbed.alice")
    register(records, "testbed.alice", ALICE, "second.alice@elsewhere.example")  # another person

    timeline = Timeline(lab.database)
    assert timeline.slices_of_user(ALICE) == set(), "the removed alice's slices are the new alice's"
    assert timeline.slices_booked_by(ALICE, lab.now - timedelta(days=1)) == set(), "on /calendar/me"
    feed = events(get(lab, f"/feed/{FeedTokens(lab.database).issue(ALICE)}.ics"))
    assert feed == {}, "the removed alice's leases are in the new alice's private feed"
    assert timeline.bookings(owner_urn=ALICE) == [], "the per-user limit would charge them to the new alice"
    saved = images.get("alice-saved")
    assert saved is not None and not saved.usable_by(ALICE), "the removed alice's private image"

    notifier = Notifier(lab.database, NotifySettings(), clock=lambda: lab.now)
    notifier.notice()
    with lab.database.read() as session:
        addresses = set(session.scalars(select(NotifyOutbox.address)))
    assert "second.alice@elsewhere.example" not in addresses, "told of the removed alice's leases"
    assert "bob@testbed.example" in addresses, "bob is told of his lease as before"

    # The leases stay for the record: the operator sees who booked them, with the removal.
    operator = events(get(lab, f"/slice/{DEMO}.ics", "carol", pki))
    description = str(operator[lab.demo_lease]["description"])
    assert f"booked by: {ALICE} (removed " in description
    # Bob, registered, and the other authority's alice keep theirs.
    assert {row.lease_id for row in timeline.bookings(owner_urn=BOB)} == {bobs_lease}
    assert {row.lease_id for row in timeline.bookings(owner_urn=FOREIGN_ALICE)} == {foreign_lease}
    assert SHARED in timeline.slices_of_user(BOB)
    assert shared_lease in {row.lease_id for row in timeline.bookings(slice_urns=[SHARED])}


def test_the_new_holder_books_within_the_per_user_limit_of_their_own(lab: Lab) -> None:
    """The removed alice's node-hours are not the new alice's: with a limit of 3 node-hours a day, the new alice may
    book on the day the removed one used up (she booked 2 nodes x 2 hours in the lab's demo lease)."""
    from sfa_omf.calendar.booking import Bookings
    from sfa_omf.calendar.policy import Policy

    records = registry_with_alice_and_bob(lab)
    assert records.remove("testbed.alice")
    register(records, "testbed.alice", ALICE, "")
    limited = Bookings(lab.database, Policy(max_hours_per_day_per_user=3), "testbed", clock=lambda: lab.now)
    request = [BookingRequest(node_urn("n1"), at(5), at(6))]
    assert limited.book(DEMO, EXPIRES, request, owner_urn=ALICE).leases


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0024_marks_what_users_removed_before_it_left(kind: str, tmp_path: Path) -> None:
    """Local users without a record: their leases, images and recorded events name them as removed; a recorded
    user's, another authority's user's and a sub-authority's removed user's are as the same rule says."""
    migrated = fresh_database(kind, tmp_path)
    site_erin = "urn:publicid:IDN+tb:site2+user+erin"
    foreign = "urn:publicid:IDN+onelab:inria+user+alice"
    tb_alice, tb_bob = "urn:publicid:IDN+tb+user+alice", "urn:publicid:IDN+tb+user+bob"
    owners = (tb_alice, tb_bob, site_erin, foreign, "")
    try:
        migrate_database(migrated, "downgrade", "0023")
        with migrated.engine.begin() as connection:
            insert_authority_and_bob(connection)
            connection.execute(text("INSERT INTO slice (urn, expires_s, shut_down) VALUES ('s', 0, false)"))
            slice_id = connection.execute(text("SELECT id FROM slice")).scalar()
            for number, owner in enumerate(owners):
                values = {"id": f"lease-{number}", "slice": slice_id, "owner": owner, "label": f"image-{number}"}
                connection.execute(
                    text(
                        "INSERT INTO lease (id, slice_id, owner_urn, start_s, end_s, state, client_id) "
                        "VALUES (:id, :slice, :owner, 0, 3600, 'ended', '')"
                    ),
                    values,
                )
                connection.execute(
                    text(
                        "INSERT INTO repository_image (label, file_name, sha256, size, os, version, description, "
                        "hardware_types, added_by, added_s, private) "
                        "VALUES (:label, :label, '', 0, '', '', '', '[]', :owner, 0, true)"
                    ),
                    values,
                )
                connection.execute(
                    text(
                        "INSERT INTO notify_event (key, event, slice_urn, payload, created_s) "
                        "VALUES (:id, 'failed', 's', :payload, 0)"
                    ).bindparams(bindparam("payload", type_=JSON)),
                    {"id": f"event-{number}", "payload": {"owner": owner, "caller": owner, "lease": f"lease-{number}"}},
                )
        migrate_database(migrated, "upgrade", "0024")
        with migrated.engine.connect() as connection:
            leases = dict(connection.execute(text("SELECT id, owner_urn FROM lease")).all())
            images = dict(connection.execute(text("SELECT label, added_by FROM repository_image")).all())
        with migrated.read() as session:
            payloads = {row.key: row.payload for row in session.scalars(select(NotifyEvent))}
        for number, owner in enumerate(owners):
            was_removed = owner in (tb_alice, site_erin)
            for now in (leases[f"lease-{number}"], images[f"image-{number}"], payloads[f"event-{number}"]["owner"]):
                if was_removed:
                    assert now.startswith(f"{owner} (removed before ") and now.endswith("Z)"), now
                else:
                    assert now == owner
            assert payloads[f"event-{number}"]["caller"] == payloads[f"event-{number}"]["owner"]
            assert payloads[f"event-{number}"]["lease"] == f"lease-{number}"
    finally:
        migrated.dispose()


# The registry and aggregate of authority tb (tests/registry/test_removed_logins.py), on SQLite and PostgreSQL.
testbed = removed_logins.testbed


def test_a_slice_registered_again_lists_none_of_the_removed_slices_users(testbed: removed_logins.Site) -> None:
    """The keys alice sent for tb.demo must not go into the accounts of a tb.demo registered later for bob (she
    would log in to his nodes), nor make her a user of his slice."""
    tb_alice, tb_demo = removed_logins.ALICE, removed_logins.DEMO
    alice = load_gid_chain_file(str(testbed.directory / "users" / "alice" / "sfi" / "tb.alice.user.gid"))
    testbed.provision(alice, testbed.slice_credential(alice), "n1")
    her_key = ssh_key("alice, for the first tb.demo")
    testbed.aggregate.slices.update_users(tb_demo, {tb_alice: [her_key]})
    testbed.admin.remove("demo", "slice")

    bob = load_gid_chain_file(str(Path(testbed.admin.add_user("bob").sfi_dir) / "tb.bob.user.gid"))
    testbed.admin.create_slice("demo", ["bob"])  # another slice under the name
    testbed.provision(bob, testbed.slice_credential(bob), "n2")
    accounts = testbed.aggregate.local_accounts(tb_demo)
    assert all(tb_alice not in account.user_urns for account in accounts), accounts
    assert all(her_key not in account.ssh_keys for account in accounts), accounts
    assert testbed.aggregate.slices.get(tb_demo).users == ()
    # Another slice's user list is untouched.
    other = "urn:publicid:IDN+tb+slice+other"
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    request = [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))]
    testbed.aggregate.bookings.book(other, start + timedelta(days=1), request, tb_alice, users={tb_alice: [her_key]})
    testbed.admin.remove("demo", "slice")
    users = testbed.aggregate.slices.get(other).users
    assert [(user.user_urn, user.ssh_keys) for user in users] == [(tb_alice, (her_key,))]
