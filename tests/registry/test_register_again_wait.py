"""A removed user or slice name is registered again only ``REGISTER_AGAIN_AFTER_S`` after its removal: until then
a process of the aggregate may still take the removed holder's key (am/caller_keys.py keeps a verdict for 10 s) and a
call it let through may still be writing, which would become the next holder's. Refused with BUSY (14), nothing
written, through the Registry API over TLS (both databases) and ``sfa-omf user add`` / ``slice create``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from sfa_omf.am.caller_keys import DEFAULT_TTL_S
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import RetiredLogin
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import REGISTER_AGAIN_AFTER_S
from sfa_omf.trust.pki import create_gid, new_private_key
from tests.registry.test_registry_hunt_fixes import Registry, registry  # noqa: F401 (the registry over TLS)
from tests.registry.test_registry_hunt_operator import run


def as_if_removed_long_ago(database: Database, urn: str) -> None:
    """As if ``REGISTER_AGAIN_AFTER_S`` had passed since ``urn`` was removed: its removal moved back that long."""
    with database.write() as session:
        session.execute(
            update(RetiredLogin)
            .where(RetiredLogin.urn == urn)
            .values(retired_s=RetiredLogin.retired_s - REGISTER_AGAIN_AFTER_S)
        )


def test_the_wait_outlasts_the_aggregate_s_key_verdicts() -> None:
    assert REGISTER_AGAIN_AFTER_S > DEFAULT_TTL_S


def test_register_refuses_a_name_removed_moments_ago_and_writes_nothing(registry: Registry) -> None:  # noqa: F811
    assert registry.alice.Remove("tb.bob", [registry.auth_cred], "user") == 1
    before = registry.written()
    key = new_private_key()
    again = {
        "hrn": "tb.bob",
        "type": "user",
        "gid": create_gid("urn:publicid:IDN+tb+user+bob", key.public_key(), key).pem(),
    }
    fault = registry.fault(registry.alice.Register, again, [registry.auth_cred])
    assert fault.faultCode == 14, fault
    assert "tb.bob was removed" in fault.faultString and "register it again in" in fault.faultString, fault
    assert registry.written() == before, "the refused Register left a GID file or a record"

    as_if_removed_long_ago(registry.database, "urn:publicid:IDN+tb+user+bob")
    assert registry.alice.Register(again, [registry.auth_cred])
    assert registry.records.get("tb.bob") is not None


def test_user_add_and_slice_create_wait_for_a_removed_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    try:
        for add, remove, name, urn in (
            (("user", "add", "dave"), ("user", "remove", "dave"), "tb.dave", "urn:publicid:IDN+tb+user+dave"),
            (("slice", "create", "exp", "--researcher", "alice"), ("slice", "remove", "exp"), "tb.exp", None),
        ):
            assert run(capsys, directory, *add)[0] == 0
            assert run(capsys, directory, *remove)[0] == 0
            code, out = run(capsys, directory, *add)
            assert code != 0 and f"{name} was removed" in out and "register it again in" in out, out
            assert not (directory / "gids" / f"{name}.gid").exists(), "the refused add left its GID file"
            if add[0] == "user":
                assert not (directory / "users" / "dave").exists(), "the refused add left an sfi.py directory"
            assert run(capsys, directory, "user", "show", name)[0] != 0, "the refused add left a record"

            as_if_removed_long_ago(database, urn or f"urn:publicid:IDN+tb+slice+{name.split('.')[-1]}")
            code, out = run(capsys, directory, *add)
            assert code == 0, out
    finally:
        database.dispose()
