"""`sfa-omf rspec validate`, run through a parser built as sfa_omf/cli.py will build it."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from sfa_omf.cli_rspec import add_rspec_commands
from tests.rspec.conftest import DATA


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="sfa-omf")
    add_rspec_commands(parser.add_subparsers(title="commands"))
    args = parser.parse_args(list(argv))
    code: int = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_files_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(DATA / "two-slots-ol-jfed.xml"), str(DATA / "two-slots-sfa-sfi.xml")]
    code, out, err = run(capsys, "rspec", "validate", *files)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{files[0]}: valid", f"{files[1]}: valid"]


def test_invalid_file_exits_1_with_one_problem_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    name = str(DATA / "invalid-request.xml")
    code, out, err = run(capsys, "rspec", "validate", "--type", "request", name)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 8
    assert lines[0] == (
        f"{name}:3:3: <ol:lease>: valid_from='2026-13-01T10:00:00Z' is not an RFC 3339 time; "
        "expected e.g. 2026-12-01T10:00:00Z"
    )
    assert all(line.startswith(f"{name}:") and line.count(":") >= 3 for line in lines)


def test_type_given_on_the_command_line_wins(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "rspec", "validate", "--type", "manifest", str(DATA / "one-slot-ol.xml"))
    assert code == 1 and 'type="manifest"' in err


def test_geni_base(capsys: pytest.CaptureFixture[str]) -> None:
    name = str(DATA / "two-slots-sfa-sfi.xml")
    assert run(capsys, "rspec", "validate", name)[0] == 0
    code, _, err = run(capsys, "rspec", "validate", "--geni-base", name)
    assert code == 1
    assert [line.split(": ")[0:2] for line in err.splitlines()] == [
        [f"{name}:6:5", "<available>"],
        [f"{name}:16:3", "<lease>"],
        [f"{name}:20:3", "<lease>"],
    ]


def test_not_well_formed_and_hostile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text('<rspec type="request">\n  <node>\n</rspec>\n')
    code, _, err = run(capsys, "rspec", "validate", str(broken))
    assert code == 1 and err.startswith(f"{broken}:3:")
    hostile = tmp_path / "laughs.xml"
    hostile.write_text('<!DOCTYPE r [<!ENTITY a "ha">]><rspec type="request">&a;</rspec>')
    code, _, err = run(capsys, "rspec", "validate", str(hostile))
    assert code == 1
    assert err == f"{hostile}:1:1: RSpec declares entities (<!ENTITY>): entity declarations are refused\n"
    code, _, err = run(capsys, "rspec", "validate", "--max-bytes", "100", str(DATA / "one-slot-ol.xml"))
    assert code == 1 and "more than the limit of 100" in err


def test_standard_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = (DATA / "asap-sfa.xml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert run(capsys, "rspec", "validate", "-")[:2] == (0, "-: valid\n")


def test_unreadable_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "rspec", "validate", str(tmp_path / "missing.xml"))
    assert code == 2 and "cannot read" in err and "missing.xml" in err
