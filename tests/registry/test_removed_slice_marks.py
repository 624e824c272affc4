"""A removed slice's new name, "URN (removed TIME)" (registry/records.py), for a URN long enough to be cut: the URN
is cut, never the " (removed TIME)" part, also when the name is taken already and gets a number: the OMF inventory
reads the time back from it (registry/accounts.py ``LeaseLogins``) to name the login the slice's leases ran under.
Real calendar on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import RetiredLogin, Slice
from sfa_omf.calendar.queries import to_s
from sfa_omf.registry.accounts import lease_logins, removed_mark_parts
from sfa_omf.registry.records import MAX_URN_CHARS, _rename_slice, removed_holder
from sfa_omf.times import format_time, utcnow
from tests.calendar.conftest import fresh_database

#: A slice URN of 297 characters (an old registry's, from before names were limited to 200 bytes).
LONG_SLICE = "urn:publicid:IDN+lab+slice+" + "s" * 270


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
