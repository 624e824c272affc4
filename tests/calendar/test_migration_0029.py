"""Migration 0029: the VPN number of each revoked certificate (vpn_revoked.vpn_number, nullable) and an index on
when it was revoked, for the numbers' quarantine (calendar/agents.py). From 0028 with rows and back, on SQLite and a
real PostgreSQL, through Alembic's own upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from sfa_omf.calendar.database import head_revision
from tests.calendar.conftest import fresh_database
from tests.registry.test_removed_logins import migrate_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0029_adds_the_revoked_number_and_its_downgrade_drops_it(kind: str, tmp_path: Path) -> None:
    """Up from 0028 with a revocation there: its number unknown (NULL), the row kept; down to 0028: the column and
    index gone, the row kept; up again to the head."""
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0028")
        assert "vpn_number" not in {column["name"] for column in inspect(database.engine).get_columns("vpn_revoked")}
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO vpn_revoked (serial, hostname, revoked_s) VALUES ('7', 'n1', 5)"))

        migrate_database(database, "upgrade", "0029")
        with database.engine.connect() as connection:
            rows = connection.execute(text("SELECT serial, hostname, revoked_s, vpn_number FROM vpn_revoked")).all()
        assert [tuple(row) for row in rows] == [("7", "n1", 5, None)]
        assert "ix_vpn_revoked_revoked_s" in {
            index["name"] for index in inspect(database.engine).get_indexes("vpn_revoked")
        }
        with database.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO vpn_revoked (serial, hostname, revoked_s, vpn_number) VALUES ('8', 'n2', 6, 2)")
            )

        migrate_database(database, "downgrade", "0028")
        assert "vpn_number" not in {column["name"] for column in inspect(database.engine).get_columns("vpn_revoked")}
        assert inspect(database.engine).get_indexes("vpn_revoked") == []
        with database.engine.connect() as connection:
            serials = connection.execute(text("SELECT serial FROM vpn_revoked ORDER BY serial")).scalars().all()
        assert serials == ["7", "8"]

        database.upgrade()
        assert database.schema_revision() == head_revision()
    finally:
        database.dispose()
