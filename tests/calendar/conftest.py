"""Calendar fixtures: every calendar test runs on SQLite and on a real PostgreSQL.

scripts/test.sh starts PostgreSQL and sets SFA_OMF_TEST_POSTGRES_URL. Without it the PostgreSQL cases skip, saying
so — except where every test must run (CI, scripts/test.sh: tests/requirements.py), where a missing PostgreSQL is a
failure, never a silent pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.availability import Availability
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from tests.moment import NOW
from tests.postgres import empty_postgres

# A fixed "now" on a grain boundary keeps every window in the tests exact (tests/moment.py says which).
SLICE = "urn:publicid:IDN+testbed+slice+exp"
SLICE_EXPIRES = NOW + timedelta(days=30)


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+testbed+node+{name}"


def fresh_database(kind: str, tmp_path: Path) -> Database:
    if kind == "sqlite":
        database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    else:
        database = Database(empty_postgres())
    database.upgrade()
    return database


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


class Calendar:
    """The three calendar services over one database, with a clock the test moves."""

    def __init__(self, database: Database, policy: Policy) -> None:
        self.now = NOW
        self.database = database
        self.inventory = Inventory(database, policy)
        self.bookings = Bookings(database, policy, "testbed", clock=lambda: self.now)
        self.availability = Availability(database)

    def add_nodes(self, *names: str, hardware_type: str = "icarus", pool: str = "default") -> None:
        for name in names:
            self.inventory.add_node(NodeSpec(node_urn(name), name, pool=pool, hardware_type=hardware_type))


@pytest.fixture
def calendar(database: Database) -> Calendar:
    cal = Calendar(database, Policy())
    cal.add_nodes("n1", "n2", "n3")
    return cal


def at(hours: float) -> datetime:
    """NOW + hours."""
    return NOW + timedelta(hours=hours)
