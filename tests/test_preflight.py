"""``sfa-omf config check`` finds what would stop the server: identity files, trusted roots, the database and its
migration, ports that cannot be bound, a hostname that is not this machine's (sfa_omf/preflight.py)."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sfa_omf.calendar.database import head_revision
from sfa_omf.cli import main
from sfa_omf.config import read_config
from tests.ports import free_port
from tests.postgres import empty_postgres

POSTGRES_URL = os.environ.get("SFA_OMF_TEST_POSTGRES_URL")


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised directory on free ports, with no SFA_* variable of the machine running the tests (but the
    tests' own, SFA_OMF_TEST_*)."""
    for name in list(os.environ):
        if name.startswith("SFA_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)
    directory = tmp_path / "lab"
    ports = ["--registry-port", str(free_port()), "--aggregate-port", str(free_port())]
    assert main(["init", str(directory), "--authority", "lab", *ports]) == 0
    capsys.readouterr()
    return directory


def check(directory: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["config", "check", str(directory / "sfa-omf.conf")])
    out = capsys.readouterr().out
    return code, [line.removeprefix("problem: ") for line in out.splitlines() if line.startswith("problem: ")]


def test_a_fresh_directory_has_no_problem(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "check", str(lab / "sfa-omf.conf")])
    assert code == 0 and capsys.readouterr().out.splitlines()[-1] == "no problems"


def _remove_aggregate_gid(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (lab / "aggregate" / "am.gid").unlink()
    return f"the aggregate's GID {lab}/aggregate/am.gid does not exist: run sfa-omf init {lab} --authority lab"


def _corrupt_authority_key(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (lab / "authority" / "lab.pkey").write_text("garbage\n")
    return f"cannot use the authority's private key {lab}/authority/lab.pkey"


def _aggregate_key_of_another_gid(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The authority's key copied over the aggregate's: each file reads, the pair cannot serve TLS."""
    (lab / "aggregate" / "am.pkey").write_bytes((lab / "authority" / "lab.pkey").read_bytes())
    return f"the aggregate's private key {lab}/aggregate/am.pkey is not the key of {lab}/aggregate/am.gid"


def _authority_key_of_another_gid(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (lab / "authority" / "lab.pkey").write_bytes((lab / "aggregate" / "am.pkey").read_bytes())
    return f"the authority's private key {lab}/authority/lab.pkey is not the key of {lab}/authority/lab.gid"


def _empty_trusted_roots(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for root in (lab / "trusted_roots").iterdir():
        root.unlink()
    return f"trusted roots directory {lab}/trusted_roots holds no root"


def _empty_database(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"sqlite:///{lab}/new.sqlite")
    return "is empty: run sfa-omf db upgrade"


def _database_behind(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    with sqlite3.connect(lab / "sfa-omf.sqlite") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0004'")
    return f"is at migration 0004, this sfa-omf needs {head_revision()}: run sfa-omf db upgrade"


def _database_unreachable(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"postgresql+psycopg://u:p@127.0.0.1:{free_port()}/x")
    return "cannot be reached"


def _hostname_elsewhere(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SFA_OMF_HOSTNAME", "192.0.2.7")  # TEST-NET-1: never an address of this machine
    return "hostname 192.0.2.7 resolves to 192.0.2.7, which is not an address of this machine"


def _listening_everywhere_without_a_hostname(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SFA_AGGREGATE_HOST", "0.0.0.0")  # the hostname follows the aggregate host when unset
    return "hostname 0.0.0.0 means 'every address' to a server, nothing peers can call"


def _bind_address_elsewhere(lab: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SFA_AGGREGATE_HOST", "192.0.2.7")
    monkeypatch.setenv("SFA_OMF_HOSTNAME", "127.0.0.1")
    return "the aggregate cannot listen on 192.0.2.7:"


@pytest.mark.parametrize(
    "breakage",
    [
        _remove_aggregate_gid,
        _corrupt_authority_key,
        _aggregate_key_of_another_gid,
        _authority_key_of_another_gid,
        _empty_trusted_roots,
        _empty_database,
        _database_behind,
        _database_unreachable,
        _hostname_elsewhere,
        _listening_everywhere_without_a_hostname,
        _bind_address_elsewhere,
    ],
)
def test_each_problem_is_found(
    lab: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    breakage: Callable[[Path, pytest.MonkeyPatch], str],
) -> None:
    expected = breakage(lab, monkeypatch)
    code, problems = check(lab, capsys)
    assert code == 1
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_a_port_in_use(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aggregate_port = read_config(str(lab / "sfa-omf.conf"), environ={}).aggregate_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", aggregate_port))
        taken.listen()
        code, problems = check(lab, capsys)
    assert code == 1
    assert problems == [
        f"the aggregate cannot listen on 127.0.0.1:{aggregate_port}: address already in use; another program listens "
        f"there (is sfa-omf already running? ss -ltnp 'sport = :{aggregate_port}'); stop it or change "
        "[sfa_aggregate] port"
    ]


def test_settings_only_leaves_the_machine_alone(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (lab / "aggregate" / "am.gid").unlink()
    assert main(["config", "check", "--settings-only", str(lab / "sfa-omf.conf")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no problems"


@pytest.mark.skipif(not POSTGRES_URL, reason="SFA_OMF_TEST_POSTGRES_URL is not set (scripts/postgres.sh)")
def test_postgres_database_at_the_newest_migration(
    lab: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert POSTGRES_URL
    empty_postgres()  # lab's own database: one holding another authority's registry is a problem
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", POSTGRES_URL)
    assert main(["db", "upgrade", "--config", str(lab / "sfa-omf.conf")]) == 0
    capsys.readouterr()
    assert check(lab, capsys) == (0, [])
