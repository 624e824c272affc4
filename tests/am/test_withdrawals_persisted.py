"""A slice's keys that could not be taken out of its logins at its lease's end are withdrawn after a restart too.

The slices whose withdrawal failed were remembered only in the memory of the process that saw the failure
(``Aggregate.withdrawals_due``, a dict): a restart of ``serve``, or another process taking the lead of a cluster,
forgot them, and a former member of the slice kept a login for ever. They are rows of the calendar now (table
withdrawal_due, migration 0032), which a new aggregate on the same database retries at its next pass and deletes once
the keys are out.

Real parts: the calendar on SQLite and on the real PostgreSQL, the real UnixAccounts (its withdrawal of a slice's keys
fails as a disk error would: a fault injected into sfa-omf's own part, no peer replaced). The slice's login is pinned
to a name no account on this host has, so no Unix account is made or touched (the real withdrawal leaves a login
that does not exist alone; tests/am/test_account_hunt_fixes.py checks the keys themselves leave real accounts).
"""

from __future__ import annotations

import logging
import pwd
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, head_revision
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.testbed.unix_accounts import UnixAccounts, WrittenKeys
from sfa_omf.times import utcnow
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import Clock
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki
from tests.registry.test_removed_logins import migrate_database
from tests.sshkeys import ssh_key

SLICE = "urn:publicid:IDN+testbed+slice+wdp"
USER = "urn:publicid:IDN+testbed+user+wdpalice"
LOGIN = "wdp_gone_alice"  # no account on this host has it (checked below)
KEY = ssh_key("wdp@laptop")
DISK_ERROR = "OSError: [Errno 5] Input/output error"


class RecordedUnixAccounts(UnixAccounts):
    """The real UnixAccounts, remembering which slices' keys it was asked to take out of which logins; the first
    ``failures`` withdrawals fail as a disk error would (a fault injected into sfa-omf's own part)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.withdrawn: list[tuple[list[str], str]] = []

    def remove_slice_keys(self, logins: Iterable[str], slice_urn: str) -> list[WrittenKeys]:
        if self.failures:
            self.failures -= 1
            raise OSError(5, "Input/output error")
        logins = list(logins)
        written = super().remove_slice_keys(logins, slice_urn)
        self.withdrawn.append((logins, slice_urn))
        return written


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = fresh_database(request.param, tmp_path)
    yield made
    made.dispose()


def _aggregate(database: Database, pki: DemoPki, clock: Clock, accounts: UnixAccounts) -> Aggregate:
    """An aggregate as ``serve`` builds one at its start, on ``database``'s calendar (a new connection pool)."""
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        Database(database.url),
        CredentialVerifier(pki.roots, VerdictCache()),
        clock=clock,
        unix_accounts=accounts,
    )
    return aggregate


def _due_rows(database: Database) -> list[tuple[str, str]]:
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text("SELECT slice_urn, reason FROM withdrawal_due"))]


def test_a_failed_withdrawal_is_retried_and_done_by_the_next_process(
    database: Database, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(KeyError):
        pwd.getpwnam(LOGIN)
    clock = Clock()
    failing = RecordedUnixAccounts(failures=2)
    first = _aggregate(database, pki, clock, failing)
    first.accounts.pin(USER, LOGIN)
    first.inventory.add_node(NodeSpec(node_urn("n1"), "n1"))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    (lease,) = first.bookings.book(
        SLICE,
        start + timedelta(days=1),
        [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))],
        USER,
        users={USER: [KEY]},
    ).leases
    first.bookings.mark_provisioned(lease.id)

    clock.ahead = start + timedelta(hours=1, minutes=5) - utcnow()  # past the lease's end
    caplog.set_level(logging.INFO, logger="sfa_omf.am")
    assert first.retire_ended() == 1
    assert failing.withdrawn == [] and failing.failures == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and SLICE in r.getMessage()]
    assert len(warnings) == 1 and DISK_ERROR in warnings[0], warnings
    # The next pass fails alike: it is not logged again (once per reason), and the row stays as it was.
    assert first.retire_ended() == 0
    assert failing.failures == 0 and failing.withdrawn == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == warnings
    assert _due_rows(database) == [(SLICE, DISK_ERROR)]
    first.database.dispose()

    # serve restarts (or another process of the cluster takes the lead): a new aggregate, whose withdrawal works.
    working = RecordedUnixAccounts()
    second = _aggregate(database, pki, clock, working)
    assert second.withdrawals_due == {SLICE: DISK_ERROR}
    caplog.clear()
    assert second.retire_ended() == 0  # no lease ends at this pass: the slice is due all the same
    assert working.withdrawn == [([LOGIN], SLICE)], "the failed withdrawal was forgotten with the process"
    assert second.withdrawals_due == {}
    assert _due_rows(database) == []
    assert any(f"the keys of slice {SLICE} are out of its logins now" in r.getMessage() for r in caplog.records)
    # Done: the next pass asks nothing more.
    assert second.retire_ended() == 0
    assert working.withdrawn == [([LOGIN], SLICE)]
    second.database.dispose()


def test_migration_0032_adds_the_table_and_its_downgrade_drops_it(database: Database) -> None:
    migrate_database(database, "downgrade", "0031")
    assert "withdrawal_due" not in inspect(database.engine).get_table_names()
    migrate_database(database, "upgrade", "0032")
    with database.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO withdrawal_due (slice_urn, reason, since_s) VALUES (:urn, 'disk full', 5)"),
            {"urn": SLICE},
        )
        rows = connection.execute(text("SELECT slice_urn, reason, since_s FROM withdrawal_due")).all()
    assert [tuple(row) for row in rows] == [(SLICE, "disk full", 5)]
    migrate_database(database, "downgrade", "0031")
    assert "withdrawal_due" not in inspect(database.engine).get_table_names()
    migrate_database(database, "upgrade", head_revision())
    assert "withdrawal_due" in inspect(database.engine).get_table_names()
