"""Slice names starting with ``external-`` are the testbed mirror's pseudo-slices (calendar/external.py
source_slice_urn): the registry refuses to register one (1, saying the prefix is reserved and to choose another
name), through Register (sfi.py register) and ``sfa-omf slice create``, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import Records
from tests.registry.conftest import Registry
from tests.registry.test_operator_commands import run

RESERVED = ["tb.external-oar", "tb.External-OAR", "tb.external-", "urn:publicid:IDN+tb+slice+external-omf"]


@pytest.mark.parametrize("name", RESERVED)
def test_register_refuses_a_reserved_slice_name(registry: Registry, name: str) -> None:
    before = registry.written()
    record = {"urn" if name.startswith("urn:") else "hrn": name, "type": "slice"}

    fault = registry.fault(registry.alice.Register, record, [registry.auth_cred])

    assert fault.faultCode == 1, fault.faultString
    assert "reserved for the testbed's own reservations" in fault.faultString, fault.faultString
    assert "choose another name" in fault.faultString, fault.faultString
    assert registry.written() == before


def test_register_takes_names_that_only_look_alike(registry: Registry) -> None:
    """Only a slice's own name is reserved: a user external-oar, a slice my-external-oar or externals register."""
    for hrn, kind in (("tb.external-oar", "user"), ("tb.my-external-oar", "slice"), ("tb.externals", "slice")):
        assert registry.alice.Register({"hrn": hrn, "type": kind}, [registry.auth_cred]), hrn
        assert registry.records.get(hrn) is not None, hrn


def test_slice_create_refuses_a_reserved_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    gids = sorted(path.name for path in (directory / "gids").iterdir())

    code, out, err = run(capsys, directory, "slice", "create", "external-oar", "--researcher", "alice")

    assert code == 2 and not out, (out, err)
    assert "reserved for the testbed's own reservations" in err and "choose another name" in err, err
    assert sorted(path.name for path in (directory / "gids").iterdir()) == gids
    assert run(capsys, directory, "slice", "create", "experiment", "--researcher", "alice")[0] == 0
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    try:
        records = Records(database)
        assert records.get("tb.external-oar") is None and records.get("tb.experiment") is not None
    finally:
        database.dispose()
