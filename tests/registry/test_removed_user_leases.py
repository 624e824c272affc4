"""A user removed from the registry leaves their leases in the calendar for the record, as nobody's own: whoever is
registered next under the name (the same URN) must not find them in their private feed or on /calendar/me, be told
of them by notification, be charged for them in the per-user limit, nor use the removed user's private saved images
(registry/records.py ``Records.remove``). Users of other authorities and registered users keep theirs. Real
calendar on SQLite and PostgreSQL, the web calendar's own handlers, the notifier's own outbox writes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, bindparam, select, text

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.models import NotifyEvent, NotifyOutbox
from sfa_omf.calendar.outbox import LeaseNews, RecordedEvent, add_event, add_lease_event
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.images.store import ImageStore
from sfa_omf.notify.alerts import Alerts
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

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

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


def owners_after_migrating(migrated: Database) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """What the database holds after a migration: each lease's owner by id, each image's saver by label, each
    recorded event's payload by key."""
    with migrated.engine.connect() as connection:
        leases = dict(connection.execute(text("SELECT id, owner_urn FROM lease")).all())
        images = dict(connection.execute(text("SELECT label, added_by FROM repository_image")).all())
    with migrated.read() as session:
        payloads = {row.key: row.payload for row in session.scalars(select(NotifyEvent))}
    return leases, images, payloads


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
        leases, images, payloads = owners_after_migrating(migrated)
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


def test_what_the_removed_user_wrote_after_the_removal_is_not_the_next_holders(
    testbed: removed_logins.Site, tmp_path: Path
) -> None:
    """A call of the removed alice's in flight at her removal (or let through on a key verdict the aggregate still
    kept) writes after it, under her plain URN: registering the name again marks those rows as the removal marked
    hers (the same "URN (removed TIME)"), in the registration's unit of work. Rows of a URN never removed stay."""
    tb_alice, tb_demo = removed_logins.ALICE, removed_logins.DEMO
    tb_carol = "urn:publicid:IDN+tb+user+carol"
    alice = load_gid_chain_file(str(testbed.directory / "users" / "alice" / "sfi" / "tb.alice.user.gid"))
    testbed.provision(alice, testbed.slice_credential(alice), "n1")
    timeline = Timeline(testbed.database)
    (her_first_lease,) = timeline.bookings(owner_urn=tb_alice)
    testbed.admin.remove("alice", "user")
    (marked,) = timeline.bookings(slice_urns=[tb_demo])
    removed_as = marked.owner_urn
    assert removed_as.startswith(f"{tb_alice} (removed "), removed_as

    # Her Allocate, checked before the removal, books after it; so do her renewal refused and her saved image.
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    request = [BookingRequest(node_urn("n2"), start, start + timedelta(hours=1))]
    late_lease = testbed.aggregate.bookings.book(tb_demo, start + timedelta(days=1), request, tb_alice).leases[0].id
    Alerts(testbed.database).renewal_refused(tb_demo, tb_alice, [], start, "past the slice's end")
    images = ImageStore(testbed.database, tmp_path / "images")
    (tmp_path / "late.img").write_bytes(b"saved after her removal")
    images.add(tmp_path / "late.img", "alice-late", tb_alice, utcnow(), private=True)
    # Carol (never registered, never removed) booked before her registration: hers, and stays hers.
    carols_lease = (
        testbed.aggregate.bookings.book(
            tb_demo,
            start + timedelta(days=1),
            [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))],
            tb_carol,
        )
        .leases[0]
        .id
    )

    testbed.admin.add_user("alice")  # another person under the name
    testbed.admin.add_user("carol")

    since = utcnow() - timedelta(days=1)
    assert timeline.slices_booked_by(tb_alice, since) == set(), "the removed alice's late lease is the new alice's"
    assert timeline.bookings(owner_urn=tb_alice) == []
    owners = {row.lease_id: row.owner_urn for row in timeline.bookings(slice_urns=[tb_demo])}
    assert owners == {her_first_lease.lease_id: removed_as, late_lease: removed_as, carols_lease: tb_carol}
    with testbed.database.read() as session:
        callers = [row.payload["caller"] for row in session.scalars(select(NotifyEvent))]
    assert callers == [removed_as]
    late_image = images.get("alice-late")
    assert late_image is not None and late_image.added_by == removed_as and not late_image.usable_by(tb_alice)
    # What the new alice books from now on is hers.
    request = [BookingRequest(node_urn("n2"), start + timedelta(hours=2), start + timedelta(hours=3))]
    hers = testbed.aggregate.bookings.book(tb_demo, start + timedelta(days=1), request, tb_alice).leases[0].id
    assert [row.lease_id for row in timeline.bookings(owner_urn=tb_alice)] == [hers]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_removal_marks_exactly_the_recorded_events_naming_the_user(kind: str, tmp_path: Path) -> None:
    """The database picks the recorded events whose JSON holds the user's URN (non-ASCII escaped as the JSON column
    writes it, LIKE's '_' and '%' taken literally), the exact check the rest: the events of a slice whose caller or
    owner is the user are marked, and nothing else (other users, other fields, operator events)."""
    removed = ("urn:publicid:IDN+testbed+user+élise", "urn:publicid:IDN+testbed+user+al_ce%")
    kept = (
        "urn:publicid:IDN+testbed+user+élise2",
        "urn:publicid:IDN+testbed+user+alxce%",  # what "al_ce%" matches in LIKE
        "urn:publicid:IDN+elsewhere+user+élise",
        "",
    )
    slice_urn = "urn:publicid:IDN+testbed+slice+s"
    database = fresh_database(kind, tmp_path)
    try:
        records = Records(database)
        records.add(Record("testbed", "authority", "urn:publicid:IDN+testbed+authority+sa", ""))
        for number, urn in enumerate(removed):
            register(records, f"testbed.removed{number}", urn, "")
        payloads: dict[str, dict[str, object]] = {}
        for caller in (*removed, *kept):
            for owner in (*removed, *kept):
                for on_slice in (slice_urn, None):
                    key = f"{len(payloads)}"
                    payloads[key] = {"caller": caller, "owner": owner, "reason": f"{caller} asked", "to": [owner]}
                    event = RecordedEvent(key, "renewal_refused", on_slice, payloads[key], utcnow())
                    with database.write() as session:
                        add_event(session, event)
        for number in range(len(removed)):
            assert records.remove(f"testbed.removed{number}")
        with database.read() as session:
            now = {row.key: (row.slice_urn, row.payload) for row in session.scalars(select(NotifyEvent))}
        assert now.keys() == payloads.keys()
        for key, before in payloads.items():
            on_slice, after = now[key]
            for name, value in before.items():
                if name in ("caller", "owner") and value in removed and on_slice is not None:
                    assert str(after[name]).startswith(f"{value} (removed "), (key, name, after)
                else:
                    assert after[name] == value, (key, name, after)
    finally:
        database.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0024_marks_every_removed_users_rows_in_chunks_and_batches(kind: str, tmp_path: Path) -> None:
    """More removed users than one UPDATE marks and more events than one batch reads: each removed user's lease,
    image and events are marked (a URN of 300 characters cut to hold the mark in its column, whole in the JSON),
    those of the registered bob and of other authorities (tbx, whose name starts as tb's; lab-é, as lab_é's with
    LIKE's '_') are not, nor events without a slice. Non-ASCII names as the JSON column escapes them."""
    migrated = fresh_database(kind, tmp_path)
    tb_bob = removed_logins.BOB
    removed = [f"urn:publicid:IDN+tb+user+u{number}" for number in range(1100)]
    removed += ["urn:publicid:IDN+lab_é+user+zoé", "urn:publicid:IDN+lab_é:site+user+x"]
    removed.append("urn:publicid:IDN+lab_é+user+" + "é" * (300 - len("urn:publicid:IDN+lab_é+user+")))
    kept = [tb_bob, "urn:publicid:IDN+tbx+user+u1", "urn:publicid:IDN+lab-é+user+zoé"]
    owners = removed + kept
    try:
        migrate_database(migrated, "downgrade", "0023")
        with migrated.engine.begin() as connection:
            insert_authority_and_bob(connection)
            connection.execute(
                text(
                    "INSERT INTO registry_record (hrn, type, urn, gid, email, keys, researchers, pis, created_s) "
                    "VALUES ('lab_é', 'authority', 'urn:publicid:IDN+lab_é+authority+sa', '', '', '[]', '[]', "
                    "'[]', 0)"
                )
            )
            connection.execute(text("INSERT INTO slice (urn, expires_s, shut_down) VALUES ('s', 0, false)"))
            slice_id = connection.execute(text("SELECT id FROM slice")).scalar()
            connection.execute(
                text(
                    "INSERT INTO lease (id, slice_id, owner_urn, start_s, end_s, state, client_id) "
                    "VALUES (:id, :slice, :owner, 0, 3600, 'ended', '')"
                ),
                [{"id": f"lease-{number}", "slice": slice_id, "owner": owner} for number, owner in enumerate(owners)],
            )
            connection.execute(
                text(
                    "INSERT INTO repository_image (label, file_name, sha256, size, os, version, description, "
                    "hardware_types, added_by, added_s, private) "
                    "VALUES (:label, :label, '', 0, '', '', '', '[]', :owner, 0, true)"
                ),
                [{"label": f"image-{number}", "owner": owner} for number, owner in enumerate(owners)],
            )
            events = [
                {
                    "key": f"event-{number}",
                    "slice": None if number % 7 == 0 else "s",
                    "payload": {
                        "owner": owners[number % len(owners)],
                        "caller": owners[(number + 1) % len(owners)],
                        "reason": owners[number % len(owners)],
                    },
                }
                for number in range(11000)
            ]
            connection.execute(
                text(
                    "INSERT INTO notify_event (key, event, slice_urn, payload, created_s) "
                    "VALUES (:key, 'failed', :slice, :payload, 0)"
                ).bindparams(bindparam("payload", type_=JSON)),
                events,
            )
        migrate_database(migrated, "upgrade", "0024")
        leases, images, payloads = owners_after_migrating(migrated)
        mark = leases["lease-0"][len(removed[0]) :]
        assert mark.startswith(" (removed before ") and mark.endswith("Z)"), mark
        for number, owner in enumerate(owners):
            expected = owner[: 300 - len(mark)] + mark if owner in removed else owner
            assert leases[f"lease-{number}"] == expected
            assert images[f"image-{number}"] == expected
        for event in events:
            before, after = event["payload"], payloads[event["key"]]
            for name in ("owner", "caller"):
                marks = event["slice"] is not None and before[name] in removed
                assert after[name] == (before[name] + mark if marks else before[name]), (event, after)
            assert after["reason"] == before["reason"]
    finally:
        migrated.dispose()
