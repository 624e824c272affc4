"""Migration 0028: the cluster's leadership term (one row, term 0), which fences the background tasks' writes
(calendar/fence.py). From 0027 with rows and back, on SQLite and a real PostgreSQL, through Alembic's own upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from sfa_omf.calendar.database import head_revision
from tests.calendar.conftest import fresh_database
from tests.registry.test_removed_logins import migrate_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0028_adds_the_leadership_term_at_zero_and_its_downgrade_drops_it(kind: str, tmp_path: Path) -> None:
    """Up from 0027 with rows: one term row, term 0, the rows as they were; a second row is refused. Down to 0027:
    the table is gone, the rows stay; up again: term 0 again."""
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0027")
        assert "leadership_term" not in inspect(database.engine).get_table_names()
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO pool (name, federated, description) VALUES ('default', true, '')"))

        migrate_database(database, "upgrade", "0028")
        with database.engine.connect() as connection:
            rows = connection.execute(text("SELECT id, term, holder, since_s FROM leadership_term")).all()
            pools = connection.execute(text("SELECT name FROM pool")).scalars().all()
        assert [tuple(row) for row in rows] == [(1, 0, "", 0)]
        assert pools == ["default"]
        with pytest.raises(IntegrityError), database.engine.begin() as connection:  # one row, id 1
            connection.execute(text("INSERT INTO leadership_term (id, term, holder, since_s) VALUES (2, 0, '', 0)"))
        with database.engine.begin() as connection:  # a cluster that has led a while
            connection.execute(text("UPDATE leadership_term SET term = 7, holder = 'host:1', since_s = 5"))

        migrate_database(database, "downgrade", "0027")
        assert "leadership_term" not in inspect(database.engine).get_table_names()
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM pool")).scalars().all() == ["default"]

        database.upgrade()
        assert database.schema_revision() == head_revision()
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT term FROM leadership_term")).scalars().all() == [0]
    finally:
        database.dispose()
