"""Upgrades on one PostgreSQL shared by several hosts: two versions must never share the calendar. ``db upgrade``
refuses to migrate while another sfa-omf process is connected (unless --force) and says what it migrated; a serving
process whose code's newest migration is not the calendar's (a newer sfa-omf migrated it) stops leading and says
to upgrade its host. Real PostgreSQL, a real ``sfa-omf serve``."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from sfa_omf.calendar.database import MIGRATIONS, Database, head_revision
from sfa_omf.cli import main
from sfa_omf.cluster.leadership import LOCK_KEY, PostgresLock, check_period_s
from tests.cluster.harness import Serve, make_lab
from tests.postgres import empty_postgres

OLDER = "0018"
TAKEOVER_S = 3


def migrate_to(url: str, revision: str) -> None:
    """The schema an older sfa-omf left: migrations up to ``revision`` only."""
    database = Database(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    database.dispose()


def run_sql(url: str, statement: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return [tuple(row) for row in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


def test_db_upgrade_refuses_while_another_sfa_omf_is_connected_and_migrates_with_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_postgres()
    assert main(["init", str(tmp_path / "tb")]) == 0
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    migrate_to(url, OLDER)
    capsys.readouterr()
    # The leadership session of a serving process of the older version (what every serve holds, leader or not).
    old_server = PostgresLock(url)
    try:
        assert old_server.try_acquire()
        code = main(["db", "upgrade", "--config", config])
        out, err = capsys.readouterr()
        assert (code, out) == (2, "")
        assert f"sfa-omf {socket.gethostname()}:{os.getpid()} from " in err
        assert "stop every `sfa-omf serve` on every host first" in err and "--force" in err
        assert Database(url).schema_revision() == OLDER

        assert main(["db", "upgrade", "--config", config, "--force"]) == 0
        out, err = capsys.readouterr()
        assert out.startswith(f"calendar database migrated from {OLDER} to {head_revision()} ")
        assert Database(url).schema_revision() == head_revision()
    finally:
        old_server.release()
    # Current: nothing to migrate, nothing refused (a serving process of this version may be connected).
    assert main(["db", "upgrade", "--config", config]) == 0
    assert capsys.readouterr().out.startswith("calendar database is up to date")


def test_a_leader_whose_calendar_a_newer_sfa_omf_migrated_steps_down(tmp_path: Path, servers: list[Serve]) -> None:
    lab = make_lab(tmp_path, empty_postgres(), 0)
    server = Serve(lab, tmp_path, "old", "--workers", "1", SFA_OMF_LEADER_TAKEOVER_S=str(TAKEOVER_S))
    servers.append(server)
    server.wait_ready()
    server.wait_for_line("now leads the background tasks")
    # What a newer sfa-omf's db upgrade leaves (run with --force while this host still serves).
    run_sql(lab.database_url, "UPDATE alembic_version SET version_num = '9999'")
    try:
        line = server.wait_for_line("stops leading the background tasks")
        assert "the calendar was migrated to 9999 by a newer sfa-omf" in line and "upgrade this host" in line
        settled_at = time.monotonic()
        while time.monotonic() - settled_at < 3 * check_period_s(TAKEOVER_S):
            time.sleep(0.2)
        holders = run_sql(
            lab.database_url,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            f"AND ((classid::bigint << 32) | objid::bigint) = {LOCK_KEY} "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        assert holders == [], "the old host still holds the leadership lock: no newer host could lead"
        assert sum("now leads" in line for line in server.lines) == 1, server.lines
    finally:
        run_sql(lab.database_url, f"UPDATE alembic_version SET version_num = '{head_revision()}'")
    # Back at its migration (the newer version rolled back): it leads again.
    wait_until = time.monotonic() + 60
    while sum("now leads" in line for line in server.lines) < 2:
        assert time.monotonic() < wait_until, server.lines
        time.sleep(0.2)
    # Its leadership session names the migration its code needs: which host runs which version.
    names = [name for (name,) in run_sql(lab.database_url, "SELECT application_name FROM pg_stat_activity")]
    assert f"sfa-omf schema-{head_revision()} {socket.gethostname()}:{server.process.pid}" in names, names
    assert server.stop() == 0
