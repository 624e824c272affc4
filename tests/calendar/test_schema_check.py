"""Only ``sfa-omf db upgrade`` (and init, quickstart) migrates the calendar's schema. Other commands that write, such
as ``node import``, create an empty database as they always did, but refuse one at an older migration (in a rolling
upgrade older servers still use it): one line saying what to run, exit 2, nothing written. Real PostgreSQL, SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from sfa_omf.calendar.database import MIGRATIONS, Database, head_revision, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from tests.postgres import empty_postgres

OLDER = "0018"
NODE = "urn:publicid:IDN+testbed+node+n1"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(tmp_path / "tb")]) == 0
    capsys.readouterr()
    return str(tmp_path / "tb" / "sfa-omf.conf")


@pytest.fixture
def nodes_file(tmp_path: Path) -> str:
    path = tmp_path / "nodes.csv"
    path.write_text(f"component_id,component_name\n{NODE},n1\n", encoding="utf-8")
    return str(path)


def migrate_to(url: str, revision: str) -> None:
    """The schema of an older sfa-omf: migrations up to ``revision`` only."""
    database = Database(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    database.dispose()


def node_rows(url: str) -> int:
    database = Database(url)
    with database.engine.connect() as connection:
        count = int(connection.execute(text("SELECT count(*) FROM node")).scalar() or 0)
    database.dispose()
    return count


def test_an_import_refuses_a_schema_at_an_older_migration_and_changes_nothing(
    config: str, nodes_file: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_postgres()
    migrate_to(url, OLDER)
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    code = main(["node", "import", "--from-file", nodes_file, "--config", config])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert (
        f"is at migration {OLDER}, this sfa-omf needs {head_revision()}: stop every `sfa-omf serve` on every host first"
        in err
    )
    assert "then run `sfa-omf db upgrade`, then start them" in err
    assert ":***@" in err and ":sfaomf@" not in err  # the URL is shown without its password
    assert Database(url).schema_revision() == OLDER
    assert node_rows(url) == 0

    assert main(["db", "upgrade", "--config", config]) == 0  # what the message says to run
    capsys.readouterr()
    assert main(["node", "import", "--from-file", nodes_file, "--config", config]) == 0
    assert node_rows(url) == 1


def test_a_schema_newer_than_this_sfa_omf_is_refused_saying_so(
    config: str, nodes_file: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = sqlite_url(str(tmp_path / "calendar.sqlite"))
    Database(url).upgrade()
    database = Database(url)
    with database.engine.begin() as connection:  # what a later sfa-omf's db upgrade leaves
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    database.dispose()
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    code = main(["node", "import", "--from-file", nodes_file, "--config", config])
    _, err = capsys.readouterr()
    assert code == 2
    assert "is at migration 9999_from_the_future, which this sfa-omf" in err and "a newer sfa-omf migrated it" in err
    assert node_rows(url) == 0

    assert main(["db", "upgrade", "--config", config]) == 2  # nor does db upgrade take it for one to migrate
    _, err = capsys.readouterr()
    assert "a newer sfa-omf migrated it" in err and "Traceback" not in err
    assert Database(url).schema_revision() == "9999_from_the_future"


def test_an_import_on_an_empty_database_still_creates_it(
    config: str, nodes_file: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for url in (empty_postgres(), sqlite_url(str(tmp_path / "new.sqlite"))):
        monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
        code = main(["node", "import", "--from-file", nodes_file, "--config", config])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert Database(url).schema_revision() == head_revision()
        assert node_rows(url) == 1


def test_user_list_refuses_a_schema_at_an_older_migration_and_leaves_it_there(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_postgres()
    migrate_to(url, OLDER)
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    code = main(["user", "list", "--config", config])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert (
        f"is at migration {OLDER}, this sfa-omf needs {head_revision()}: stop every `sfa-omf serve` on every host first"
        in err
    )
    assert "then run `sfa-omf db upgrade`, then start them" in err
    assert Database(url).schema_revision() == OLDER


def test_node_remove_refuses_a_schema_at_an_older_migration_and_removes_nothing(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between installing a newer sfa-omf and `db upgrade`: `node remove` refuses at once, before it removes the node
    (its later steps read tables of the newer schema; the node was gone and its registry record left before)."""
    url = empty_postgres()
    migrate_to(url, OLDER)
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    older = Database(url)  # the node added as an older sfa-omf did (node add itself refuses the older schema now)
    Inventory(older).add_node(NodeSpec(NODE, "n1"))
    older.dispose()
    capsys.readouterr()
    code = main(["node", "remove", NODE, "--config", config])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "run `sfa-omf db upgrade`" in err
    assert node_rows(url) == 1 and Database(url).schema_revision() == OLDER


def test_the_omf_slot_commands_refuse_a_schema_at_an_older_migration(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_postgres()
    migrate_to(url, OLDER)
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    assert main(["omf", "slots", "--config", config]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "run `sfa-omf db upgrade`" in err


def test_the_newest_migration_file_is_alembics_head() -> None:
    """Operator commands compare the stored revision with the newest migration's file name, without importing
    Alembic: the two must agree (a migration file named otherwise than its revision would break that)."""
    from sfa_omf.calendar.database import newest_migration_file

    assert newest_migration_file() == head_revision()
