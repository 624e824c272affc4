"""A removed slice's new name, "URN (removed TIME)" (registry/records.py), for a URN long enough to be cut: the URN
is cut, never the " (removed TIME)" part, also when the name is taken already and gets a number: the OMF inventory
reads the time back from it (registry/accounts.py ``LeaseLogins``) to name the login the slice's leases ran under.
Real calendar on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease, RetiredLogin, Slice
from sfa_omf.calendar.queries import to_s
from sfa_omf.registry.accounts import lease_logins
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import MAX_URN_CHARS, Records, _rename_slice
from sfa_omf.registry.removed_marks import removed_holder, removed_mark_parts
from sfa_omf.times import format_time, utcnow
from tests.calendar.conftest import fresh_database

#: A slice URN of 297 characters (an old registry's, from before names were limited to 200 bytes).
LONG_SLICE = "urn:publicid:IDN+lab+slice+" + "s" * 270
SLICE = "urn:publicid:IDN+lab+slice+demo"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    db = fresh_database(str(request.param), tmp_path)
    request.addfinalizer(db.dispose)
    return db


def test_a_long_slice_removed_again_in_the_same_second_keeps_the_time_in_its_name(database: Database) -> None:
    """Three slices of the long URN removed in the same second: the second and third names are numbered; each keeps
    the whole " (removed TIME #N)" and fits the column. Before the fix the number was put over the end of the cut
    text: the time was cut short (the inventory named no login for the slice's leases) and the third removal took
    the second's name again (refused by the unique name)."""
    removed = utcnow().replace(microsecond=0)
    with database.write() as session:
        session.add(RetiredLogin(urn=LONG_SLICE, login="longslice_1a2b3c", retired_s=to_s(removed)))
    names: list[str] = []
    for number in (1, 2, 3):
        with database.write() as session:
            session.add(Slice(urn=LONG_SLICE, expires_s=to_s(removed + timedelta(days=1))))
        with database.write() as session:
            _rename_slice(session, LONG_SLICE, removed)
        with database.read() as session:
            names = list(session.scalars(select(Slice.urn).order_by(Slice.id)))
        name = names[-1]
        suffix = f" (removed {format_time(removed)}{f' #{number}' if number > 1 else ''})"
        assert name.endswith(suffix) and len(name) == MAX_URN_CHARS, name
        cut, when = removed_mark_parts(name) or ("", None)
        assert LONG_SLICE.startswith(cut) and when == removed, name

    assert names[0] == removed_holder(LONG_SLICE, removed)
    logins = lease_logins(database, names)
    assert [logins.login_of(name) for name in names] == ["longslice_1a2b3c"] * 3


def test_removing_a_slice_while_a_renew_holds_its_operator_lease_waits_for_it_never_deadlocks(tmp_path: Path) -> None:
    """A Renew (calendar/booking.py) locks its lease, then writes the slice's expiry; the removal's rename writes the
    slice's operator leases and the slice. The removal starts while the Renew holds the lease and is waited for (a
    backend waiting on a lock, seen in pg_stat_activity), then the Renew writes the slice: with the rename writing the
    slice first, PostgreSQL found a deadlock and the removal failed. PostgreSQL only: SQLite has one writer."""
    database = fresh_database("postgresql", tmp_path)
    try:
        now = utcnow().replace(microsecond=0)
        with database.write() as session:
            slice_row = Slice(urn=SLICE, expires_s=to_s(now + timedelta(days=1)))
            session.add(slice_row)
            session.flush()
            session.add(Lease(id="op", slice_id=slice_row.id, owner_urn=SLICE, start_s=1, end_s=2, state="provisioned"))
        errors: list[BaseException] = []
        lease_locked = threading.Event()
        removal_waits = threading.Event()

        def renew() -> None:
            try:
                with database.write() as session:
                    session.execute(select(Lease.id).where(Lease.id == "op").with_for_update())
                    lease_locked.set()
                    assert removal_waits.wait(30), "the removal never waited for the lease"
                    session.execute(update(Slice).where(Slice.urn == SLICE).values(expires_s=to_s(now)))
            except BaseException as exc:  # (reported below, in the test's thread)
                errors.append(exc)

        def remove() -> None:
            try:
                assert lease_locked.wait(30)
                with database.write() as session:
                    _rename_slice(session, SLICE, now)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=renew), threading.Thread(target=remove)]
        for thread in threads:
            thread.start()
        assert lease_locked.wait(30)
        deadline = time.monotonic() + 30
        while not removal_waits.is_set() and time.monotonic() < deadline:
            with database.engine.connect() as connection:
                waiting = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar()
            if waiting:
                removal_waits.set()
            time.sleep(0.05)
        for thread in threads:
            thread.join(60)
        assert errors == []
        with database.read() as session:
            assert session.scalar(select(Slice.urn)) == removed_holder(SLICE, now)
            assert session.scalar(select(Lease.owner_urn)) == removed_holder(SLICE, now)
    finally:
        database.dispose()


def test_a_gid_issued_before_names_were_checked_is_left_out_of_the_registry_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A site that registered a slice with a blank in its name (allowed once) still starts: its GID is not recorded
    (its name is refused by the trust layer) and the log names the file and what to do; the others are recorded."""
    init_directory(str(tmp_path / "site"), "lab", ("ann",))
    authority = LocalAuthority.load(str(tmp_path / "site"), "lab")
    authority.issue_gid("lab.my slice", "slice")
    database = fresh_database("sqlite", tmp_path)
    caplog.set_level(logging.WARNING, logger="sfa_omf.registry")
    try:
        records = Records(database)

        records.import_authority(authority)

        assert records.get("lab.ann") is not None and records.get("lab.my slice") is None
        assert "lab.my slice.gid is not recorded" in caplog.text and "is a space" in caplog.text
    finally:
        database.dispose()
