"""An SQLite calendar that can be read but not written (here: the file made immutable, which root cannot bypass as
it bypasses file modes) is a problem ``sfa-omf config check`` reports with its advice, and ``sfa-omf serve`` refuses
to start with it, instead of "no problems" and then a traceback from a background task's first write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.cli import main
from tests.conftest import REPO
from tests.ports import free_port
from tests.requirements import missing

EXIT_TIMEOUT_S = 120  # a hang is a failure (the refusal takes a second or two)


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)


@pytest.fixture
def read_only_calendar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[Path, Path]]:
    """(site directory on free ports, its SQLite calendar made immutable), with no SFA_* variable of the machine
    running the tests; the file is made writable again at the end."""
    for name in list(os.environ):
        if name.startswith("SFA_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)
    directory = tmp_path / "lab"
    ports = [free_port(), free_port()]
    init = ["init", str(directory), "--authority", "lab", "--registry-port", str(ports[0])]
    assert main([*init, "--aggregate-port", str(ports[1])]) == 0
    capsys.readouterr()
    calendar = directory / "sfa-omf.sqlite"
    assert calendar.is_file()
    made = _chattr("+i", calendar)
    if made.returncode != 0:
        missing(f"chattr +i failed on {calendar}: {made.stderr.strip()}", "chattr +i is not available here")
    try:
        yield directory, calendar
    finally:
        _chattr("-i", calendar)


def _advice(calendar: Path) -> str:
    return (
        f"the calendar database {calendar} cannot be opened: attempt to write a readonly database; the user running "
        "sfa-omf must be able to read and write it and its directory, or fix [sfa_omf] database_url"
    )


def test_config_check_reports_a_calendar_it_cannot_write(
    read_only_calendar: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, calendar = read_only_calendar
    code = main(["config", "check", str(directory / "sfa-omf.conf")])
    out = capsys.readouterr().out
    problems = [line.removeprefix("problem: ") for line in out.splitlines() if line.startswith("problem: ")]
    assert code == 1, problems
    assert problems == [_advice(calendar)]
    _chattr("-i", calendar)
    assert main(["config", "check", str(directory / "sfa-omf.conf")]) == 0, "writable again: no problem"
    assert capsys.readouterr().out.splitlines()[-1] == "no problems"


def test_serve_refuses_to_start_on_a_calendar_it_cannot_write(read_only_calendar: tuple[Path, Path]) -> None:
    directory, calendar = read_only_calendar
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
    environment["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "sfa_omf.cli", "serve", "--config", str(directory / "sfa-omf.conf"), "--workers", "1"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"sfa-omf: cannot start: {_advice(calendar)}"], done.stderr
    assert "Traceback" not in done.stderr
