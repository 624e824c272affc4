"""Migration 0036: registry_record.key_held, whether someone holds the key a user's GID certifies. A record made
before it is left None (nothing tells: the earlier re-key rule stands for it, registry/api.py). From 0035 and back,
with a user's record, on SQLite and a real PostgreSQL, through Alembic's own upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from sfa_omf.calendar.database import Database, head_revision
from tests.calendar.conftest import fresh_database
from tests.registry.test_removed_logins import migrate_database

USER = (
    "INSERT INTO registry_record (hrn, type, urn, gid, email, keys, researchers, pis, created_s) VALUES "
    "('tb.ann', 'user', 'urn:publicid:IDN+tb+user+ann', 'PEM', 'ann@example.org', '[\"ssh-ed25519 AAAA ann\"]', "
    "'[]', '[]', 5)"
)


def _columns(database: Database) -> list[str]:
    return [column["name"] for column in inspect(database.engine).get_columns("registry_record")]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0036_adds_key_held_unknown_for_earlier_records_and_its_downgrade_drops_it(
    kind: str, tmp_path: Path
) -> None:
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0035")
        assert "key_held" not in _columns(database)
        with database.engine.begin() as connection:
            connection.execute(text(USER))
        migrate_database(database, "upgrade", "0036")
        with database.engine.begin() as connection:
            rows = connection.execute(text("SELECT hrn, email, keys, key_held FROM registry_record")).all()
        assert [(hrn, email, key_held) for hrn, email, _, key_held in rows] == [("tb.ann", "ann@example.org", None)]
        migrate_database(database, "downgrade", "0035")
        assert "key_held" not in _columns(database)
        with database.engine.begin() as connection:
            assert connection.execute(text("SELECT hrn, email FROM registry_record")).all() == [
                ("tb.ann", "ann@example.org")
            ]
        migrate_database(database, "upgrade", head_revision())
        assert "key_held" in _columns(database)
    finally:
        database.dispose()
