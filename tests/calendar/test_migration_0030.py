"""Migration 0030: the table of VPN numbers given back by removed nodes (vpn_number_release), written with each
removal for the numbers' quarantine (calendar/agents.py). From 0029 and back, with a row, on SQLite and a real
PostgreSQL, through Alembic's own upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from sfa_omf.calendar.database import head_revision
from tests.calendar.conftest import fresh_database
from tests.registry.test_removed_logins import migrate_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0030_adds_the_release_table_and_its_downgrade_drops_it(kind: str, tmp_path: Path) -> None:
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0029")
        assert "vpn_number_release" not in inspect(database.engine).get_table_names()
        migrate_database(database, "upgrade", "0030")
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO vpn_number_release (number, released_s) VALUES (7, 5)"))
            rows = connection.execute(text("SELECT number, released_s FROM vpn_number_release")).all()
        assert [tuple(row) for row in rows] == [(7, 5)]
        migrate_database(database, "downgrade", "0029")
        assert "vpn_number_release" not in inspect(database.engine).get_table_names()
        migrate_database(database, "upgrade", head_revision())
        assert "vpn_number_release" in inspect(database.engine).get_table_names()
    finally:
        database.dispose()
