"""Several ``sfa-omf db upgrade`` at once (hosts of a cluster upgraded together) on one empty database: each succeeds,
one migrates and the others wait for it, then find the schema current. Real processes on the real PostgreSQL, and
on an SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database, head_revision, sqlite_url
from sfa_omf.cli import main
from tests.postgres import empty_postgres

REPO = Path(__file__).resolve().parents[2]
UPGRADES = 4
WAIT_S = 300  # a bound on the upgrades finishing (a hang is a failure), generous for a loaded machine

# Each child imports everything first, then runs the command when the test releases them all together (a line on
# its standard input), so that the upgrades really race.
CHILD = """
import sys
import alembic.command, sqlalchemy, sfa_omf.calendar.database, sfa_omf.calendar.models
from sfa_omf.cli import main
sys.stdin.readline()
sys.exit(main(["db", "upgrade", "--config", sys.argv[1]]))
"""


def upgrade_together(config: str, database_url: str) -> list[tuple[int, str]]:
    """Run UPGRADES ``db upgrade`` processes released at once; their exit codes and standard errors."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "SFA_OMF_DATABASE_URL": database_url}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, config],
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(UPGRADES)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    answers = []
    for child in children:
        _, err = child.communicate(timeout=WAIT_S)
        answers.append((child.returncode, err))
    return answers


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(tmp_path / "tb")]) == 0
    capsys.readouterr()
    return str(tmp_path / "tb" / "sfa-omf.conf")


def test_upgrades_at_once_on_an_empty_postgresql_all_succeed(config: str) -> None:
    url = empty_postgres()
    answers = upgrade_together(config, url)
    assert [code for code, _ in answers] == [0] * UPGRADES, answers
    assert not any("Traceback" in err for _, err in answers), answers
    assert Database(url).schema_revision() == head_revision()


def test_upgrades_at_once_on_a_new_sqlite_file_all_succeed(config: str, tmp_path: Path) -> None:
    url = sqlite_url(str(tmp_path / "calendar.sqlite"))
    answers = upgrade_together(config, url)
    assert [code for code, _ in answers] == [0] * UPGRADES, answers
    assert Database(url).schema_revision() == head_revision()
