"""``serve``'s log file on a full disk (a real tmpfs written full): lines are lost quietly, standard error gets one
short line (Python's handler wrote a traceback of some 77 lines per lost line: 231 842 lines for 3 000 calls), and
once the file takes lines again a line in it says how many were lost."""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

import pytest

from sfa_omf.cli_server import configure_logging
from tests.full_disk import fill, small_tmpfs

LINES_WHILE_FULL = 3000


def test_a_full_log_disk_costs_lines_not_a_traceback_each_and_the_loss_is_logged(
    tmp_path: Path,
    root_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = logging.getLogger("sfa_omf.server")
    with small_tmpfs(tmp_path / "logs", 64) as logs:
        log_file = logs / "sfa-omf.log"
        configure_logging(str(log_file), "INFO")
        log.info("before the disk filled")
        filler = fill(logs)
        for number in range(LINES_WHILE_FULL):
            log.info("line %d of the full disk", number)  # the file's last page takes a few, then none
        stderr = capsys.readouterr().err
        assert stderr == (
            f"sfa-omf: cannot write the log file {log_file}: No space left on device; log lines are being lost "
            "(said at most once a minute)\n"
        )

        filler.unlink()
        log.info("after the disk had room again")
        assert capsys.readouterr().err == ""
        lines = log_file.read_text().splitlines()
        for handler in logging.getLogger().handlers:
            handler.close()  # before the tmpfs is unmounted
    kept = [line for line in lines if re.search(r"INFO sfa_omf\.server line \d+ of the full disk$", line)]
    (note,) = [line for line in lines if "log lines were lost" in line]
    counted = re.search(r"WARNING sfa_omf\.server (\d+) log lines were lost since \S+Z: ", note)
    assert counted is not None, note
    lost = int(counted.group(1))
    assert note.endswith("the log file could not be written (No space left on device)")
    # Every line is in the file whole or counted as lost (a line the disk took part of is both: its part is
    # not a line of its own, and the note begins a line of its own all the same).
    assert len(kept) + lost == LINES_WHILE_FULL and lost > LINES_WHILE_FULL - 100
    assert lines[0].endswith("before the disk filled") and lines[-1].endswith("after the disk had room again")
    assert re.match(r"\d{4}-\d\d-\d\dT\S+Z WARNING sfa_omf\.server ", note)
    assert lines.index(note) == len(lines) - 2


def test_a_log_call_of_its_own_mistake_still_gets_pythons_traceback(
    tmp_path: Path,
    root_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only a file that cannot be written is quiet: a bad log call (its format) is named as Python names it."""
    configure_logging(str(tmp_path / "sfa-omf.log"), "INFO")
    logging.getLogger("sfa_omf.server").info("%d calls", "not a number")
    assert "--- Logging error ---" in capsys.readouterr().err
