"""Times as people type them, and times as the server shows them.

All-digit strings: a compact ISO 8601 date (20270101, 202701011200) is that date, never epoch seconds (it was read as
1970-08-23, or the year 8393); epoch seconds stay readable from 9 to 12 digits (SFA's start_time); anything else
all-digit is refused naming both readings. A time that has the form but cannot be says which part is wrong. Log
lines are stamped in UTC with a Z whatever TZ says, and a refusal comparing two durations never shows them equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rspec.dialects.options import read_slot
from rspec.problems import Problem
from sfa_omf.calendar.policy import DAY, Policy, PolicyViolation, check_window
from sfa_omf.cli import main
from sfa_omf.errors import BadArgs
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import parse_time, utcnow


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20270101", datetime(2027, 1, 1, tzinfo=UTC)),
        ("202701011200", datetime(2027, 1, 1, 12, tzinfo=UTC)),
        ("20270101120030", datetime(2027, 1, 1, 12, 0, 30, tzinfo=UTC)),
        ("202612030100", datetime(2026, 12, 3, 1, tzinfo=UTC)),
        ("20270101T1200Z", datetime(2027, 1, 1, 12, tzinfo=UTC)),
        ("1795316400", datetime(2026, 11, 22, 3, tzinfo=UTC)),  # SFA's start_time: epoch seconds
        ("1795316400.5", datetime(2026, 11, 22, 3, 0, 0, 500_000, tzinfo=UTC)),
        ("100000000", datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)),  # 9 digits: epoch
        ("99999999999", datetime(5138, 11, 16, 9, 46, 39, tzinfo=UTC)),  # 11 digits, the longest epoch
        ("202612032400", datetime(2026, 12, 4, tzinfo=UTC)),  # 24:00, the end of the day
    ],
)
def test_an_all_digit_time_is_a_compact_date_before_epoch_seconds(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("text", "as_epoch"),
    [
        ("2027", "1970-01-01T00:33:47Z"),  # a year alone
        ("20271301", "1970-08-23T14:55:01Z"),  # no month 13
        ("0", "1970-01-01T00:00:00Z"),
        ("202701011200.5", "8393-05-04T12:26:40Z"),  # a date with a fraction
        ("202612011260", "8390-07-09T10:14:20Z"),  # 12 digits that are no date: a mistyped date, not the year 8390
        ("202702301200", "8393-05-19T10:46:40Z"),  # no 30 February
    ],
)
def test_an_all_digit_time_that_is_neither_is_refused_naming_both_readings(text: str, as_epoch: str) -> None:
    with pytest.raises(BadArgs) as refusal:
        parse_time(text)
    message = refusal.value.message
    assert f"cannot read {text!r} as a time: as ISO 8601 it is " in message
    assert f"as epoch seconds it would be {as_epoch}" in message
    assert "write the time as 2027-01-01T12:00:00Z" in message


def test_a_compact_date_as_an_allocate_option_is_that_date() -> None:
    """omni's --start-time/--end-time as geni_start_time/geni_end_time: 202612030100 was the year 8393."""
    problems: list[Problem] = []
    now = datetime(2026, 12, 2, 20, tzinfo=UTC)
    options = {"geni_start_time": "202612030100", "geni_end_time": "202612030200"}
    slot = read_slot(options, now, timedelta(hours=1), problems)
    assert problems == []
    assert slot is not None and (slot.start, slot.duration) == (
        datetime(2026, 12, 3, 1, tzinfo=UTC),
        timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2027-02-29T10:00:00Z", "no such day: 2027 is not a leap year"),
        ("2026-04-31T10:00:00Z", "no such day: 2026-04 has 30 days"),
        ("2026-13-01T10:00:00Z", "no such month: 13"),
        ("2026-12-31T23:59:60Z", "leap seconds are not accepted"),
        ("2026-12-31T25:00:00Z", "no such time of day: 25:00:00"),
    ],
)
def test_an_impossible_time_says_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(BadArgs) as refusal:
        parse_time(text)
    assert refusal.value.message.startswith(f"{text!r} is not a time: {why}"), refusal.value.message


def test_a_leap_day_is_a_time() -> None:
    assert parse_time("2028-02-29T10:00:00Z") == datetime(2028, 2, 29, 10, tzinfo=UTC)


def test_slice_renew_reads_a_compact_date_as_a_date(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``sfa-omf slice renew NAME 202701011200`` wrote the year 8393; the past is refused with the house form."""
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    config = ["--config", str(directory / "sfa-omf.conf")]
    assert main(["slice", "create", "exp", "--researcher", "alice", *config]) == 0
    wanted = (utcnow() + timedelta(days=30)).replace(second=0, microsecond=0)
    assert main(["slice", "renew", "exp", wanted.strftime("%Y%m%d%H%M"), *config]) == 0
    capsys.readouterr()
    assert main(["user", "show", "tb.exp", "--json", *config]) == 0
    assert parse_time(json.loads(capsys.readouterr().out)["expires"]) == wanted
    assert main(["slice", "renew", "exp", "2020-01-01T00:00:00.5Z", *config]) == 2
    assert "the expiry 2020-01-01T00:00:00Z is in the past: give a later time" in capsys.readouterr().err


def test_a_duration_over_the_maximum_never_reads_as_the_maximum() -> None:
    """7 days 30 minutes against a 7-day maximum read "7 days is longer than the maximum of 7 days"."""
    start = 1_800_000_000  # on the half hour
    with pytest.raises(PolicyViolation) as refusal:
        check_window(Policy(), start, start + 7 * DAY + 1800, start - 3600, 1800, "node3")
    assert refusal.value.message == (
        "7 days 30 minutes is longer than the maximum of 7 days (policy rule max_duration)"
    )
    with pytest.raises(PolicyViolation) as refusal:
        check_window(Policy(), start, start + 20 * DAY, start - 3600, 1800, "node3")
    assert refusal.value.message == "20 days is longer than the maximum of 7 days (policy rule max_duration)"


@pytest.mark.parametrize("command", ["server", "agent"])
def test_log_lines_are_stamped_in_utc_whatever_tz_says(tmp_path: Path, command: str) -> None:
    """The server's and the node agent's log set-up, in a process whose TZ is Europe/Paris: the stamp of a record
    made at 2026-12-02T20:08:59.746Z is that, not 21:08:59,746."""
    if command == "server":
        set_up = "from sfa_omf.cli_server import configure_logging; configure_logging('', 'INFO')"
    else:  # the handler `sfa-omf agent run` sets up, before it needs its state directory
        set_up = (
            "import argparse\n"
            "from sfa_omf.cli_agents import _run\n"
            "try:\n"
            f"    _run(argparse.Namespace(root_dir={str(tmp_path)!r}, state={str(tmp_path / 'none')!r},"
            " interval=1, once=True))\n"
            "except BaseException:\n"
            "    pass"
        )
    script = (
        f"{set_up}\n"
        "import logging\n"
        "record = logging.makeLogRecord({'name': 'sfa_omf.am', 'levelname': 'INFO', 'levelno': 20, 'msg': 'hello',\n"
        "                                'created': 1796242139.746, 'msecs': 746.0})\n"
        "print(logging.getLogger().handlers[0].format(record))\n"
    )
    environment = {**os.environ, "TZ": "Europe/Paris"}
    environment.pop("JOURNAL_STREAM", None)
    shown = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    assert shown.startswith("2026-12-02T20:08:59.746Z "), shown
    assert shown.endswith("sfa_omf.am hello")
