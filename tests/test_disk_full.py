"""The aggregate's calendar on a full disk: what the operator is told.

Calls that failed because the calendar database failed (DBERROR: the aggregate's own fault, not the caller's) were
logged at INFO like any caller's refusal, so a full disk went unseen at the usual WARNING level; now they are
warnings, at most one a minute per reason, the next one counting the calls logged at INFO in between. And ``serve``
/ ``config check`` said an SQLite calendar on a full disk "cannot be opened: disk I/O error; the user running sfa-omf
must be able to read and write it" (a permission, it seemed); now they say the file system is full.

A real tmpfs (root mounts it) filled by a real file; the real SQLite calendar; AM API v3 calls as the server
dispatches them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am import dispatch
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import opening_advice
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.errors import GeniCode
from sfa_omf.server.xmlrpc import CallContext
from tests.am.conftest import aggregate_on
from tests.am.test_interop_hunt_fixes import no_time_request
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.full_disk import fill, small_tmpfs
from tests.ports import free_port


class Clock:
    """The seconds FaultWarnings counts with, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_calendar_failures_are_warnings_at_most_one_a_minute_counting_the_calls_between(
    tmp_path: Path, pki: DemoPki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(dispatch, "FAULT_WARNINGS", dispatch.FaultWarnings(clock=clock))
    alice = pki.users["alice"]
    with (
        small_tmpfs(tmp_path / "disk", size_kib=2048) as disk,
        aggregate_on("sqlite", disk, pki, NodeSpec(node_urn("n1"), "n1")) as aggregate,
    ):
        endpoint = ApiV3(aggregate)
        context = CallContext(alice.chain, "127.0.0.1", "/")

        def allocate() -> dict[str, Any]:
            answer: dict[str, Any] = endpoint(
                context, "Allocate", (pki.slice_urn, [alice.slice_cred], no_time_request("n1"), {})
            )
            return answer

        def call_lines() -> list[tuple[int, str]]:
            lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("Allocate ")]
            caplog.clear()
            return lines

        caplog.set_level(logging.INFO, logger="sfa_omf.am")
        refused = endpoint(context, "Allocate", ("urn:publicid:IDN+testbed+slice+x", [], no_time_request("n1"), {}))
        assert refused["code"]["geni_code"] != 0
        [(level, _)] = call_lines()
        assert level == logging.INFO  # a caller's refusal: no warning
        fill(disk)
        for _ in range(3):
            answer = allocate()
            assert answer["code"]["geni_code"] == GeniCode.DBERROR, answer
        first, second, third = call_lines()
        assert first[0] == logging.WARNING and "reason=database" in first[1] and "full" in first[1]
        assert "more such failures" not in first[1]
        assert (second[0], third[0]) == (logging.INFO, logging.INFO)
        clock.now += dispatch.SERVER_FAULT_WARNING_S
        assert allocate()["code"]["geni_code"] == GeniCode.DBERROR
        [(level, line)] = call_lines()
        assert level == logging.WARNING
        assert line.endswith(" (2 more such failures since the last warning, logged at INFO)")


def test_config_check_and_commands_say_the_file_system_of_an_sqlite_calendar_is_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("SFA_OMF_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)
    ports = ["--registry-port", str(free_port()), "--aggregate-port", str(free_port())]
    assert main(["init", str(tmp_path / "tb"), "--authority", "tb", *ports]) == 0
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    with small_tmpfs(tmp_path / "disk", size_kib=2048) as disk:
        monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"sqlite:///{disk}/calendar.sqlite")
        assert main(["db", "upgrade", "--config", config]) == 0
        fill(disk)
        capsys.readouterr()
        says = (
            f"{disk}/calendar.sqlite cannot be opened: disk I/O error; the file system holding {disk} is full (0 "
            "bytes free): free space there, then start again"
        )
        main(["config", "check", config])
        problems = [line for line in capsys.readouterr().out.splitlines() if "calendar database" in line]
        assert problems == [f"problem: the calendar database {says}"]
        assert main(["node", "list", "--config", config]) == 2
        assert capsys.readouterr().err == f"sfa-omf: the calendar database failed: {says}\n"


def test_a_file_that_is_no_database_on_a_nearly_full_file_system_is_said_to_be_no_database(tmp_path: Path) -> None:
    """Under FULL_BELOW_BYTES free, SQLite's "file is not a database" is still what to act on (the review found the
    full file system said instead, and the file never moved aside)."""
    with small_tmpfs(tmp_path / "disk", size_kib=512) as disk:
        calendar = disk / "calendar.sqlite"
        calendar.write_bytes(b"not a database, " * 256)
        filler = fill(disk)
        assert os.statvfs(disk).f_bavail == 0
        advice = opening_advice(f"sqlite:///{calendar}", "file is not a database")
        assert advice.startswith(f"{calendar} is not an SQLite database (file is not a database)"), advice
        assert "full" not in advice
        # (A failure to open it that is no NOTADB, on the same full file system, is said to be the full disk.)
        assert "is full (0 bytes free)" in opening_advice(f"sqlite:///{calendar}", "disk I/O error")
        filler.unlink()
