"""The aggregate host's accounts and keys after the keys hunt (session 28).

A. At a lease's end each slice's keys are withdrawn on their own: one slice's failure (logged) leaves no other
   slice's keys in place, and is tried again at the next pass until the keys are out.
B. A slice the registry removes while its lease is provisioned: its members' keys leave their logins at the lease's
   end (the removal keeps its members, marked, for that; it used to delete them, and the keys stayed for ever).
C. A member naming users in geni_users makes no Unix account for those with no key accepted for the slice (made-up
   users of any authority, another member's keys): only the caller's and those with an accepted key are made.

Real parts: Unix accounts made with useradd, a real sshd on 127.0.0.1, the calendar on SQLite and PostgreSQL
(tests/am/test_users_keys.py's helpers; logins pinned to ``afx_*`` names of this file's own, removed after each
test). Needs root and openssh-server.
"""

from __future__ import annotations

import logging
import pwd
import subprocess
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.registry.records import Record
from sfa_omf.registry.removed_marks import is_removed_mark
from sfa_omf.testbed.unix_accounts import UnixAccounts, WrittenKeys
from sfa_omf.times import utcnow
from tests.am.test_users_keys import Member, _aggregate, _remove_accounts, pinned_aggregate, public, urn_of
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.testbed.test_foreign_login import ssh_as, sshd, user_key

__all__ = ["sshd"]  # the real sshd fixture, used below

#: Logins of this file's own (tests/am/test_users_keys.py, which may run at the same time, has amk_*).
LOGINS = {"alice": "afx_alice", "bob": "afx_bob", "carol": "afx_carol"}

OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"
MADE_UP = [f"urn:publicid:IDN+made.up+user+afxfake{number}" for number in range(3)]


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    """Per-user accounts, real Unix accounts; alice, bob and carol on logins of this file's own."""
    yield from pinned_aggregate(request.param, tmp_path, pki, LOGINS)


class Clock:
    """The aggregate's clock, moved past the leases' ends."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.ahead


def _move_clock(aggregate: Aggregate) -> Clock:
    clock = Clock()
    aggregate.clock = aggregate.bookings.clock = clock
    return clock


def _past_every_end(aggregate: Aggregate, clock: Clock) -> None:
    last = max(lease.end for lease in aggregate.bookings.leases())
    clock.ahead = last - utcnow() + timedelta(minutes=5)


class UnixAccountsFailingOnce(UnixAccounts):
    """The real UnixAccounts, whose first withdrawal of one slice's keys fails as a disk error would (a fault
    injected into sfa-omf's own part: no peer is replaced)."""

    def __init__(self, failing_slice: str) -> None:
        super().__init__()
        self.failing_slice = failing_slice
        self.failures_left = 0  # set by the test when the lease is about to end

    def remove_slice_keys(self, logins: Iterable[str], slice_urn: str) -> list[WrittenKeys]:
        if slice_urn == self.failing_slice and self.failures_left:
            self.failures_left -= 1
            raise OSError(5, "Input/output error")
        return super().remove_slice_keys(logins, slice_urn)


def test_one_slices_failed_withdrawal_keeps_no_other_slices_keys_and_is_tried_again(
    aggregate: Aggregate, pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _move_clock(aggregate)
    aggregate.unix_accounts = failing = UnixAccountsFailingOnce(pki.slice_urn)
    alices, bobs = user_key(tmp_path, "alice"), user_key(tmp_path, "bob")
    Member(aggregate, pki, "alice").allocate_and_provision([{"urn": urn_of(pki, "alice"), "keys": [public(alices)]}])
    # Another slice, bob's, provisioned on n2 with his key in his login, ending before the same pass.
    aggregate.inventory.add_node(NodeSpec(node_urn("n2"), "n2"))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    bob = urn_of(pki, "bob")
    (lease,) = aggregate.bookings.book(
        OTHER_SLICE,
        start + timedelta(days=1),
        [BookingRequest(node_urn("n2"), start, start + timedelta(hours=1))],
        bob,
        users={bob: [public(bobs)]},
    ).leases
    aggregate.bookings.mark_provisioned(lease.id)
    aggregate.unix_accounts.set_slice_keys(aggregate.local_accounts(OTHER_SLICE), OTHER_SLICE)
    accounts = UnixAccounts()
    assert accounts.slice_keys("afx_alice", pki.slice_urn) and accounts.slice_keys("afx_bob", OTHER_SLICE)

    _past_every_end(aggregate, clock)
    failing.failures_left = 1
    caplog.set_level(logging.WARNING, logger="sfa_omf.am.aggregate")
    assert aggregate.retire_ended() == 2
    assert accounts.slice_keys("afx_bob", OTHER_SLICE) == [], "the other slice's keys stayed"
    assert accounts.slice_keys("afx_alice", pki.slice_urn), "the failure was injected into this slice's withdrawal"
    assert any(
        pki.slice_urn in record.getMessage() and "Input/output error" in record.getMessage()
        for record in caplog.records
    ), [record.getMessage() for record in caplog.records]
    # The next pass: no lease ends, and the slice's keys, due still, are taken out.
    assert aggregate.retire_ended() == 0
    assert accounts.slice_keys("afx_alice", pki.slice_urn) == [], "the failed withdrawal was never tried again"
    assert aggregate.withdrawals_due == {}


def test_a_removed_slices_keys_leave_its_members_logins_at_its_leases_end(
    aggregate: Aggregate, pki: DemoPki, sshd: int, tmp_path: Path
) -> None:
    clock = _move_clock(aggregate)
    alices, bobs = user_key(tmp_path, "alice"), user_key(tmp_path, "bob")
    aggregate.records.add(Record(pki.users["bob"].hrn, "user", urn_of(pki, "bob"), "", keys=(public(bobs),)))
    Member(aggregate, pki, "alice").allocate_and_provision(
        [{"urn": urn_of(pki, "alice"), "keys": [public(alices)]}, {"urn": urn_of(pki, "bob"), "keys": [public(bobs)]}]
    )
    aggregate.records.add(Record(pki.slice_hrn, "slice", pki.slice_urn, ""))
    assert aggregate.records.remove(pki.slice_hrn)
    (lease,) = aggregate.bookings.leases()
    assert is_removed_mark(lease.slice_urn) and lease.state == "provisioned"
    assert ssh_as("afx_alice", alices, sshd).returncode == 0, "the lease runs to its end"

    _past_every_end(aggregate, clock)
    assert aggregate.retire_ended() == 1
    accounts = UnixAccounts()
    assert accounts.slice_keys("afx_alice", pki.slice_urn) == [], "the removed slice's keys stayed in alice's login"
    assert accounts.slice_keys("afx_bob", pki.slice_urn) == []
    assert ssh_as("afx_alice", alices, sshd).returncode != 0
    assert ssh_as("afx_bob", bobs, sshd).returncode != 0
    # What the removal kept of its members: marked, without keys; nobody reads them as its users.
    members = aggregate.slices.get(lease.slice_urn).users
    assert members and all(is_removed_mark(user.user_urn) and user.ssh_keys == () for user in members), members
    assert aggregate.local_accounts(lease.slice_urn) == []
    # Nor the calendar's readers: the slice lists no member (feeds, web pages), and its booker still sees its lease,
    # which runs to its end, as before the removal kept the marked rows (they made the slice "listed").
    timeline = Timeline(aggregate.database)
    assert timeline.users_of_slices([lease.slice_urn]) == {}
    assert timeline.slices_of_user(urn_of(pki, "alice")) == {lease.slice_urn}
    assert timeline.slices_of_user(urn_of(pki, "bob")) == set()


def test_a_removed_slices_keys_leave_its_per_slice_login_at_its_leases_end(pki: DemoPki, tmp_path: Path) -> None:
    """per-slice: the login the removal retired (never one derived for the mark) loses the slice's block."""
    aggregate = _aggregate("sqlite", tmp_path, pki, "per-slice")
    login = "afx_shared"
    aggregate.accounts.pin(pki.slice_urn, login)
    _remove_accounts([login])
    try:
        clock = _move_clock(aggregate)
        alices = user_key(tmp_path, "alice")
        Member(aggregate, pki, "alice").allocate_and_provision(
            [{"urn": urn_of(pki, "alice"), "keys": [public(alices)]}]
        )
        assert UnixAccounts().slice_keys(login, pki.slice_urn) == [public(alices)]
        aggregate.records.add(Record(pki.slice_hrn, "slice", pki.slice_urn, ""))
        assert aggregate.records.remove(pki.slice_hrn)
        _past_every_end(aggregate, clock)
        assert aggregate.retire_ended() == 1
        assert UnixAccounts().slice_keys(login, pki.slice_urn) == []
    finally:
        _remove_accounts([login])
        aggregate.database.dispose()


@pytest.fixture
def no_made_up_accounts() -> Iterator[None]:
    """Removes the accounts of the made-up users (made only when the aggregate makes them)."""
    made_up = [urn.rsplit("+", 1)[1] for urn in MADE_UP]
    _remove_accounts(made_up)
    try:
        yield
    finally:
        _remove_accounts([entry.pw_name for entry in pwd.getpwall() if entry.pw_name.startswith("afxfake")])


def _exists(login: str) -> bool:
    return subprocess.run(["id", login], capture_output=True, check=False).returncode == 0


def test_users_named_with_no_accepted_key_get_no_unix_account(
    aggregate: Aggregate, pki: DemoPki, tmp_path: Path, no_made_up_accounts: None
) -> None:
    """carol names made-up users (with and without keys of their own making) and alice with carol's own key: no
    account is made for them; carol gets hers, keyless; bob, with a key registered here, gets his."""
    carols, bobs = user_key(tmp_path, "carol"), user_key(tmp_path, "bob")
    aggregate.records.add(Record(pki.users["bob"].hrn, "user", urn_of(pki, "bob"), "", keys=(public(bobs),)))
    made_up = [{"urn": urn, "keys": [public(carols)] if number % 2 else []} for number, urn in enumerate(MADE_UP)]
    carol = Member(aggregate, pki, "carol")
    manifest = carol.allocate_and_provision(
        [
            {"urn": urn_of(pki, "carol"), "keys": []},
            {"urn": urn_of(pki, "alice"), "keys": [public(carols)]},
            {"urn": urn_of(pki, "bob"), "keys": [public(bobs)]},
            *made_up,
        ]
    )
    made = [record.login for record in aggregate.accounts.list() if record.urn in MADE_UP]
    assert len(made) == len(MADE_UP)  # mapped (the manifest lists their logins), yet no account is made
    assert [login for login in made if _exists(login)] == [], "accounts were made for made-up users"
    assert not _exists("afx_alice"), "carol's key for alice made alice an account"
    assert _exists("afx_carol") and _exists("afx_bob")
    assert UnixAccounts().slice_keys("afx_bob", pki.slice_urn) == [public(bobs)]
    assert 'username="afx_carol"' in manifest
    # geni_update_users naming them again makes none either.
    carol.update_users([{"urn": urn_of(pki, "carol"), "keys": [public(carols)]}, *made_up])
    assert [login for login in made if _exists(login)] == []
    assert UnixAccounts().slice_keys("afx_carol", pki.slice_urn) == [public(carols)]
