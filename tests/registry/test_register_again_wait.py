"""A removed user or slice name is registered again only ``REGISTER_AGAIN_AFTER_S`` after its removal: until then
a process of the aggregate may still take the removed holder's key (am/caller_keys.py keeps a verdict for 10 s) and a
call it let through may still be writing, which would become the next holder's. Refused with BUSY (14), nothing
written, through the Registry API over TLS (both databases), ``sfa-omf user add`` / ``slice create``, ``sfa-omf init``
(its demo users and slice) and ``sfa-omf credential issue --type slice``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from sfa_omf.am.caller_keys import DEFAULT_TTL_S
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import RetiredLogin
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import REGISTER_AGAIN_AFTER_S, Records
from sfa_omf.trust.pki import create_gid, new_private_key
from tests.postgres import empty_postgres
from tests.registry.conftest import Registry
from tests.registry.test_registry_hunt_operator import run

BOB = "urn:publicid:IDN+tb+user+bob"


def moved_back(database: Database, urn: str, seconds: int) -> None:
    """``urn``'s removal stamped ``seconds`` earlier (negative: later, as by a remover whose clock is ahead)."""
    with database.write() as session:
        session.execute(
            update(RetiredLogin).where(RetiredLogin.urn == urn).values(retired_s=RetiredLogin.retired_s - seconds)
        )


def files_under(directory: Path) -> set[str]:
    """The files of an authority directory, but the SQLite calendar's (its journal comes and goes)."""
    return {
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and not path.name.startswith("sfa-omf.sqlite")
    }


def as_if_removed_long_ago(database: Database, urn: str) -> None:
    """As if ``REGISTER_AGAIN_AFTER_S`` had passed since ``urn`` was removed: its removal moved back that long."""
    moved_back(database, urn, REGISTER_AGAIN_AFTER_S)


def test_the_wait_outlasts_the_aggregate_s_key_verdicts() -> None:
    assert REGISTER_AGAIN_AFTER_S > DEFAULT_TTL_S


def test_register_refuses_a_name_removed_moments_ago_and_writes_nothing(registry: Registry) -> None:
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


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_init_again_refuses_a_demo_user_removed_moments_ago_before_writing_anything(
    kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``sfa-omf init DIR --user alice --user bob`` run again just after ``user remove bob``: BUSY, and no file
    written, for bob nor for a user named for the first time (carol). Before, init answered 0 and printed bob as
    registered, leaving his GID file, sfi.py directory and place among tb.demo's researchers without a record, so
    that ``user add bob`` was refused for good ("users/bob/sfi exists already")."""
    directory = tmp_path / "tb"
    database_url = [] if kind == "sqlite" else ["--database-url", empty_postgres()]
    init = ["init", str(directory), "--authority", "tb", "--user", "alice", "--user", "bob"]
    assert main([*init, *database_url]) == 0
    assert run(capsys, directory, "user", "remove", "bob")[0] == 0
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    try:
        records = Records(database)
        before = files_under(directory)
        assert main([*init, "--user", "carol"]) != 0
        out = capsys.readouterr()
        assert "tb.bob was removed" in out.err and "register it again in" in out.err, out
        assert files_under(directory) == before, "the refused init wrote files"
        assert records.get("tb.bob") is None and records.get("tb.carol") is None
        demo = records.get("tb.demo")
        assert demo is not None and demo.researchers == ("tb.alice",), demo

        as_if_removed_long_ago(database, BOB)
        assert main(init) == 0
        demo = records.get("tb.demo")
        assert records.get("tb.bob") is not None and demo is not None and "tb.bob" in demo.researchers
        assert (directory / "users" / "bob" / "sfi" / "tb.bob.pkey").exists()
    finally:
        database.dispose()


def test_credential_issue_refuses_a_slice_removed_moments_ago_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``sfa-omf credential issue --type slice`` for a slice just removed: BUSY, no GID file, no credential. Before,
    it wrote gids/tb.exp.gid (not recorded: the aggregate refused the credential) and later ``slice create exp`` was
    refused ("a GID for 'tb.exp' exists already")."""
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    credential = tmp_path / "exp.cred"
    issue = ["credential", "issue", "--dir", str(directory), "--owner", "tb.alice", "--target", "tb.exp"]
    try:
        assert run(capsys, directory, "slice", "create", "exp", "--researcher", "alice")[0] == 0
        assert run(capsys, directory, "slice", "remove", "exp")[0] == 0
        assert main([*issue, "--type", "slice", "-o", str(credential)]) != 0
        out = capsys.readouterr()
        assert "tb.exp was removed" in out.err and "register it again in" in out.err, out
        assert not (directory / "gids" / "tb.exp.gid").exists(), "the refused issue left a GID file"
        assert not credential.exists()

        as_if_removed_long_ago(database, "urn:publicid:IDN+tb+slice+exp")
        assert main([*issue, "--type", "slice", "-o", str(credential)]) == 0
        assert credential.read_text().startswith("<?xml")
    finally:
        database.dispose()


def test_the_wait_asked_for_is_never_more_than_the_rule_s_wait(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A removal stamped by a host whose clock runs an hour ahead: "register it again in 60 s", not "in 3660 s"."""
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    database = Database(read_config(str(directory / "sfa-omf.conf")).calendar_url)
    try:
        assert run(capsys, directory, "user", "add", "dave")[0] == 0
        assert run(capsys, directory, "user", "remove", "dave")[0] == 0
        moved_back(database, "urn:publicid:IDN+tb+user+dave", -3600)
        code, out = run(capsys, directory, "user", "add", "dave")
        assert code != 0 and "removed 0 s ago" in out, out
        assert f"register it again in {REGISTER_AGAIN_AFTER_S} s" in out, out
    finally:
        database.dispose()
