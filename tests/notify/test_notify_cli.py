"""``sfa-omf notify`` against a real configuration and database (``sfa-omf init``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.cli import main
from sfa_omf.config import read_config


def test_unsubscribing_a_user_mailed_at_the_address_on_record_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user with no address of their own gets lease e-mails at the registry's address: unsubscribing them stops
    that (an opt-out is written), so the command must say it did, not "was not subscribed" with a failure code."""
    assert main(["init", str(tmp_path / "lab"), "--authority", "lab", "--user", "ann"]) == 0
    config = str(tmp_path / "lab" / "sfa-omf.conf")
    ann = "urn:publicid:IDN+lab+user+ann"
    database = Database(read_config(config).calendar_url)
    try:
        assert Outbox(database).email_defaults([ann]) == {ann: "ann@lab.example.org"}  # mailed by default
        capsys.readouterr()
        assert main(["notify", "unsubscribe", ann, "email", "--config", config]) == 0
        assert "no more email notifications" in capsys.readouterr().out
        assert Outbox(database).email_defaults([ann]) == {}  # and indeed no longer mailed
        assert main(["notify", "unsubscribe", ann, "email", "--config", config]) == 1  # now there is nothing to stop
        assert "was not subscribed" in capsys.readouterr().out
    finally:
        database.dispose()
