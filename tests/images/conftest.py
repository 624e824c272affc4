"""Image repository fixtures: a store over the calendar on SQLite and on a real PostgreSQL (tests/calendar's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.policy import Policy
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import Calendar, fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def calendar(database: Database) -> Calendar:
    cal = Calendar(database, Policy())
    cal.add_nodes("n1", "n2")
    cal.add_nodes("big1", hardware_type="server")
    return cal


@pytest.fixture
def store(database: Database, tmp_path: Path) -> ImageStore:
    return ImageStore(database, tmp_path / "data" / "images")


def image_file(path: Path, size: int, seed: int = 1) -> Path:
    """A file of ``size`` bytes of a repeatable pattern (not all zeros, so checksums differ by seed)."""
    block = bytes((seed * 7 + i) % 251 for i in range(4096))
    with open(path, "wb") as out:
        for offset in range(0, size, len(block)):
            out.write(block[: min(len(block), size - offset)])
    return path
