"""A user removed from the registry leaves behind no private feed token, notification subscription or stored e-mail
address (registry/records.py ``Records.remove``; migration 0022 for users removed before it): whoever is registered
next under the name (the same URN) must not have their leases read through the earlier holder's feed, nor sent to
the earlier holder's mailbox or webhook. On both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.models import UserContact
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.registry.records import Record, Records
from tests.calendar.conftest import fresh_database
from tests.registry.test_removed_logins import insert_authority_and_bob, migrate_database

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

ALICE = "urn:publicid:IDN+tb+user+alice"
BOB = "urn:publicid:IDN+tb+user+bob"
SITE_ERIN = "urn:publicid:IDN+tb:site2+user+erin"
FOREIGN_ALICE = "urn:publicid:IDN+onelab:inria+user+alice"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_removing_a_user_ends_their_feed_subscriptions_and_stored_address(kind: str, tmp_path: Path) -> None:
    database = fresh_database(kind, tmp_path)
    try:
        records = Records(database)
        records.add(Record("tb", "authority", "urn:publicid:IDN+tb+authority+sa", ""))
        for hrn, urn in (("tb.alice", ALICE), ("tb.bob", BOB)):
            records.add(Record(hrn, "user", urn, "", f"{hrn.split('.')[1]}@tb.example"))
        tokens, outbox = FeedTokens(database), Outbox(database)
        alice_token, bob_token = tokens.issue(ALICE), tokens.issue(BOB)
        for user in (ALICE, BOB):
            outbox.subscribe(user, "webhook", f"https://hooks.example/{user.rsplit('+', 1)[1]}")
        with database.write() as session:
            for user in (ALICE, BOB):
                address = f"gid-{user.rsplit('+', 1)[1]}@tb.example"
                session.add(UserContact(user_urn=user, gid_email=address, updated_s=0))

        assert records.remove("tb.alice")
        records.add(Record("tb.alice", "user", ALICE, "", ""))  # another person, registered under the name

        assert tokens.user_of(alice_token) is None, "the removed alice's feed token still opens the name's feed"
        assert tokens.user_of(bob_token) == BOB
        assert outbox.subscriptions([ALICE, BOB]) == {BOB: [("webhook", "https://hooks.example/bob")]}
        assert outbox.email_defaults([ALICE, BOB]) == {BOB: "bob@tb.example"}, "the removed alice's address is gone"
    finally:
        database.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0022_forgets_what_users_removed_before_it_left(kind: str, tmp_path: Path) -> None:
    """Local users without a record lose their token, subscriptions and stored address; a recorded user and another
    authority's user keep theirs."""
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0021")
        with database.engine.begin() as connection:
            insert_authority_and_bob(connection)
            for number, user in enumerate((ALICE, BOB, SITE_ERIN, FOREIGN_ALICE)):
                parameters = {"user": user, "digest": f"{number:064d}", "address": f"u{number}@example.org"}
                connection.execute(
                    text("INSERT INTO feed_token (token_sha256, user_urn, created_s) VALUES (:digest, :user, 0)"),
                    parameters,
                )
                connection.execute(
                    text(
                        "INSERT INTO notify_subscription (user_urn, channel, address) VALUES (:user, 'email', :address)"
                    ),
                    parameters,
                )
                connection.execute(
                    text("INSERT INTO user_contact (user_urn, gid_email, updated_s) VALUES (:user, :address, 0)"),
                    parameters,
                )
        migrate_database(database, "upgrade", "0022")
        with database.engine.connect() as connection:
            left = {
                table: {str(urn) for (urn,) in connection.execute(text(f"SELECT user_urn FROM {table}"))}
                for table in ("feed_token", "notify_subscription", "user_contact")
            }
        assert len(left) == 3 and all(users == {BOB, FOREIGN_ALICE} for users in left.values()), left
    finally:
        database.dispose()
