"""What ``serve`` / ``config check`` and ``db upgrade`` say about a calendar database they cannot use: one newer than
this sfa-omf (run that version, not ``db upgrade``), a PostgreSQL that accepts and never answers (no wait for ever),
one that refuses, an SQLite file in a directory that does not exist or that is not a database. Each names the
database and what to do, and ``db upgrade`` says what the start-up checks say. Real PostgreSQL, SQLite, sockets."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from sfa_omf.calendar.database import Database, head_revision
from sfa_omf.cli import main
from tests.ports import free_port
from tests.postgres import empty_postgres

#: A migration no sfa-omf has yet: what a database migrated by a newer sfa-omf records.
FROM_THE_FUTURE = "9999"
#: Only a bound against a test that would otherwise hang for ever: the commands give up after CONNECT_TIMEOUT_S.
HANG_GUARD_S = 120


class SilentPostgresStandIn:
    """A PostgreSQL address that accepts connections and never says a word: a hung server, or a port forwarded to
    something that is not PostgreSQL. The real PostgreSQL of the tests cannot be made to hang on demand, so a real
    listening socket on 127.0.0.1 stands in for it; it accepts every connection and holds it open, silent."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """An initialised directory on free ports, with no SFA_* variable of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SFA_OMF_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)
    ports = ["--registry-port", str(free_port()), "--aggregate-port", str(free_port())]
    assert main(["init", str(tmp_path / "tb"), "--authority", "tb", *ports]) == 0
    capsys.readouterr()
    return str(tmp_path / "tb" / "sfa-omf.conf")


@pytest.fixture
def silent_postgres() -> Iterator[SilentPostgresStandIn]:
    listener = SilentPostgresStandIn()
    yield listener
    listener.close()


def database_problems(config: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The database lines of ``sfa-omf config check`` (what would stop ``serve``)."""
    main(["config", "check", config])
    lines = capsys.readouterr().out.splitlines()
    return [line for line in lines if line.startswith("problem: the calendar database")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def run_apart(*argv: str, url: str) -> subprocess.CompletedProcess[str]:
    """``sfa-omf ARGV`` in a process of its own on database ``url``: a command that waited for ever is a failure of
    the test (after HANG_GUARD_S), never a test that hangs."""
    environment = {**os.environ, "SFA_OMF_DATABASE_URL": url}
    command = [sys.executable, "-c", "import sys; from sfa_omf.cli import main; sys.exit(main())", *argv]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def newer_database(request: pytest.FixtureRequest, config: str) -> Iterator[str]:
    """The URL of a calendar database at FROM_THE_FUTURE; PostgreSQL's is emptied after the test (tests share it)."""
    if request.param == "sqlite":
        path = Path(config).parent / "sfa-omf.sqlite"  # init migrated it to this sfa-omf's newest migration
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (FROM_THE_FUTURE,))
        yield f"sqlite:///{path}"
        return
    url = empty_postgres()
    database = Database(url)
    database.upgrade()
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :newer"), {"newer": FROM_THE_FUTURE})
    database.dispose()
    yield url
    empty_postgres()


def test_a_database_a_newer_sfa_omf_migrated_says_run_that_version_not_db_upgrade(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, newer_database: str
) -> None:
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", newer_database)
    newer = (
        f"is at migration {FROM_THE_FUTURE}, which this sfa-omf (newest migration {head_revision()}) does not know: "
        "a newer sfa-omf migrated it; run that version"
    )
    [problem] = database_problems(config, capsys)
    assert newer in problem and "db upgrade" not in problem
    code, err = run(capsys, "db", "upgrade", "--config", config)  # what serve and config check lead to agrees
    assert code == 2 and newer in err


def test_db_upgrade_gives_up_on_a_silent_postgresql_naming_it_and_what_to_do(
    config: str, silent_postgres: SilentPostgresStandIn
) -> None:
    url = f"postgresql+psycopg://sfaomf:secret@127.0.0.1:{silent_postgres.port}/calendar"
    for command in (["db", "upgrade"], ["node", "list"]):
        done = run_apart(*command, "--config", config, url=url)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr == (
            f"sfa-omf: the calendar database failed: postgresql+psycopg://sfaomf:***@127.0.0.1:{silent_postgres.port}"
            "/calendar cannot be reached: connection timeout expired; start it, or fix [sfa_omf] database_url / "
            "[sfa_db]\n"
        )
    assert silent_postgres.accepted, "the commands did reach the silent listener"


def test_db_upgrade_on_a_postgresql_that_refuses_says_what_serve_says(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"postgresql+psycopg://sfaomf:secret@127.0.0.1:{free_port()}/calendar")
    [problem] = database_problems(config, capsys)
    code, err = run(capsys, "db", "upgrade", "--config", config)
    assert code == 2 and err.count("\n") == 1 and "secret" not in err
    said_by_serve = problem.removeprefix("problem: the calendar database ")
    assert err == f"sfa-omf: the calendar database failed: {said_by_serve}\n"
    assert "***@127.0.0.1:" in err and "Connection refused" in err and "start it, or fix [sfa_omf] database_url" in err


def test_an_sqlite_file_in_a_missing_directory_says_create_the_directory(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-directory"
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"sqlite:///{missing}/calendar.sqlite")
    says = (
        f"{missing}/calendar.sqlite cannot be created: its directory {missing} does not exist; create it (mkdir -p "
        f"{missing}, owned by the user running sfa-omf), or fix [sfa_omf] database_url"
    )
    assert database_problems(config, capsys) == [f"problem: the calendar database {says}"]  # not "is empty"
    for command in (["db", "upgrade"], ["node", "list"]):
        assert run(capsys, *command, "--config", config) == (2, f"sfa-omf: the calendar database failed: {says}\n")
    assert not missing.exists()


def test_a_file_that_is_not_an_sqlite_database_says_move_it_aside(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "notes.sqlite"
    garbage.write_bytes(b"not a database, some notes an operator kept here\n" * 100)
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"sqlite:///{garbage}")
    says = (
        f"{garbage} is not an SQLite database (file is not a database); fix [sfa_omf] database_url, or move the file "
        "aside (sfa-omf db upgrade then creates an empty calendar there)"
    )
    assert database_problems(config, capsys) == [f"problem: the calendar database {says}"]  # not "start it"
    for command in (["db", "upgrade"], ["node", "list"]):
        assert run(capsys, *command, "--config", config) == (2, f"sfa-omf: the calendar database failed: {says}\n")
    assert garbage.read_bytes().startswith(b"not a database")  # left as it was


def test_the_start_up_lock_gives_up_on_a_silent_postgresql(silent_postgres: SilentPostgresStandIn) -> None:
    """serve's start-up writes take a lock on a connection of their own (cluster/leadership.py startup_writes): that
    connection is bounded like the others, so a database gone silent after the start-up checks fails the start."""
    url = f"postgresql+psycopg://sfaomf:secret@127.0.0.1:{silent_postgres.port}/calendar"
    code = f"from sfa_omf.cluster.leadership import startup_writes\nwith startup_writes({url!r}):\n    pass\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    assert done.returncode != 0 and "connection timeout expired" in done.stderr, done.stderr
    assert silent_postgres.accepted, "the lock's connection did reach the silent listener"
