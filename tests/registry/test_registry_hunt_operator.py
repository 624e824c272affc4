"""The operator's side of the defect hunt's fixes: nodes with long names do not stop the registry from starting,
``sfa-omf user add|remove`` can be repeated and never shares or leaves half an sfi.py directory, names and addresses
the registry cannot hold are refused before anything is written, and the account mapping refuses a URN its column
cannot hold instead of failing in the database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.errors import BadArgs
from sfa_omf.registry.accounts import Accounts
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.nodes import record_nodes
from sfa_omf.registry.records import Records
from sfa_omf.server.app import start_registry
from sfa_omf.trust.gid import load_gid_chain
from sfa_omf.trust.pki import MAX_COMMON_NAME, common_name, create_gid, new_private_key
from tests.postgres import empty_postgres

LONG_NODE = "gpu-node-a100-rack12-slot04.compute.grenoble.site.example.org"  # tb.<this>: 69 characters


def run(capsys: pytest.CaptureFixture[str], directory: Path, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--config", str(directory / "sfa-omf.conf")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_long_hrn_gets_a_bounded_distinct_common_name_and_keeps_its_urn() -> None:
    first, second = "tb." + "x" * 80 + "1", "tb." + "x" * 80 + "2"
    assert len(common_name(first).encode("utf-8")) <= MAX_COMMON_NAME
    assert common_name(first) != common_name(second)
    assert len(common_name("tb." + "é" * 60).encode("utf-8")) <= MAX_COMMON_NAME  # bytes, not characters
    assert common_name("tb.alice") == "tb.alice"  # short names keep SFA's CN = HRN
    key = new_private_key()
    urn = f"urn:publicid:IDN+tb+node+{LONG_NODE}"
    gid = create_gid(urn, key.public_key(), key)
    assert (gid.urn, gid.hrn, gid.type) == (urn, f"tb.{LONG_NODE.replace('.', chr(92) + '.')}", "node")


def test_the_registry_starts_with_a_node_whose_hrn_is_over_64_characters(
    running_reactor: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ())
    settings = read_config(str(directory / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    database.upgrade()
    long_urn = f"urn:publicid:IDN+tb+node+{LONG_NODE}"
    code, out = run(capsys, directory, "node", "add", long_urn)
    assert code == 0 and "1 node record(s) added to the registry of tb" in out, out
    # Added another way: the registry's start records it (before the fix it raised and serve would not start).
    Inventory(database).add_node(NodeSpec(f"urn:publicid:IDN+tb+node+{LONG_NODE}-2", "long2"))
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    blockingCallFromThread(running_reactor, port.stopListening)
    records = Records(database)
    for urn in (long_urn, f"{long_urn}-2"):
        (record,) = [record for record in records.of_type("node") if record.urn == urn]
        leaf = load_gid_chain(record.gid)[0]
        assert (leaf.urn, leaf.hrn, leaf.type) == (urn, record.hrn, "node")
        assert len(record.hrn) > MAX_COMMON_NAME


def test_a_node_no_gid_can_be_issued_for_is_reported_and_skipped(tmp_path: Path) -> None:
    """A node whose name is too long for its GID file (over 255 bytes) is logged and skipped; the others are
    recorded: one odd node must not keep the registry from starting."""
    init_directory(str(tmp_path / "tb"), "tb", ())
    authority = LocalAuthority.load(str(tmp_path / "tb"), "tb")
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    inventory = Inventory(database)
    too_long = "urn:publicid:IDN+tb+node+" + "n" * 260
    inventory.add_node(NodeSpec(too_long, "too-long"))
    inventory.add_node(NodeSpec("urn:publicid:IDN+tb+node+node1", "node1"))
    report = record_nodes(authority, Records(database), inventory.list_nodes())
    assert report.added == ["tb.node1"]
    assert [component_id for component_id, _ in report.failed] == [too_long]
    assert not any(name.startswith("tb.nnn") for name in os.listdir(tmp_path / "tb" / "gids"))


@pytest.mark.usefixtures("register_again_at_once")  # the name added again at once
def test_user_add_remove_add_and_separate_sfi_directories(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("alice",))
    users = directory / "users"
    assert run(capsys, directory, "user", "add", "dave")[0] == 0
    code, out = run(capsys, directory, "user", "remove", "dave")
    assert code == 0 and f"deleted its sfi.py directory {users / 'dave' / 'sfi'}" in out
    assert not (users / "dave").exists()
    code, out = run(capsys, directory, "user", "add", "dave")  # the name can be given again
    assert code == 0, out
    assert (users / "dave" / "sfi" / "tb.dave.pkey").exists()
    # A user under a sub-authority gets a directory named by the whole HRN; a direct child keeps the short name
    # (as the demo users of init: users/alice/sfi).
    assert run(capsys, directory, "user", "add", "tb.x.erin")[0] == 0
    assert run(capsys, directory, "user", "add", "erin")[0] == 0
    client_files = ["id_ed25519", "id_ed25519.pub", "omni_config"]  # as init's demo users (test_client_config_fixes)
    assert sorted(os.listdir(users / "tb.x.erin" / "sfi")) == [
        *client_files,
        "sfi_config",
        "tb.x.erin.pkey",
        "tb.x.erin.user.gid",
    ]
    assert sorted(os.listdir(users / "erin" / "sfi")) == [
        *client_files,
        "sfi_config",
        "tb.erin.pkey",
        "tb.erin.user.gid",
    ]
    assert "user = tb.erin" in (users / "erin" / "sfi" / "sfi_config").read_text()
    assert (users / "alice" / "sfi" / "tb.alice.pkey").exists()
    # Removing a demo user deletes the directory init wrote for them too.
    assert run(capsys, directory, "user", "remove", "alice")[0] == 0
    assert not (users / "alice").exists()


def test_a_user_add_that_fails_half_way_leaves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The sfi.py directory cannot be made (a file stands where it goes): the GID issued a moment before goes again,
    no record is written, and the same add works once the way is clear."""
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ())
    (directory / "users").mkdir(exist_ok=True)
    (directory / "users" / "frank").write_text("in the way\n")
    code, out = run(capsys, directory, "user", "add", "frank", "--pi")
    assert code != 0, out
    assert not (directory / "gids" / "tb.frank.gid").exists()
    assert run(capsys, directory, "user", "show", "frank")[0] != 0
    (directory / "users" / "frank").unlink()
    code, out = run(capsys, directory, "user", "add", "frank")
    assert code == 0, out


@pytest.mark.parametrize(
    "argv",
    [
        ("user", "add", "x:y"),
        ("user", "add", "tb.a+b"),
        ("user", "add", "a/b"),
        ("user", "add", "a b"),
        ("user", "add", "z" * 260),
        ("user", "add", "mailer", "--email", "josé@example.org"),
        ("user", "add", "mailer", "--email", "a" * 60 + "@" + "b" * 240 + ".org"),
        ("slice", "create", "x:y"),
        ("slice", "create", "a/b"),
    ],
)
def test_the_cli_refuses_names_and_addresses_the_registry_cannot_hold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...]
) -> None:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ())
    assert run(capsys, directory, "user", "list")[0] == 0  # records the authority before we look
    before = sorted(os.listdir(directory / "gids")), sorted(os.listdir(directory))
    code, out = run(capsys, directory, *argv)
    assert code != 0 and "Traceback" not in out, out
    assert (sorted(os.listdir(directory / "gids")), sorted(os.listdir(directory))) == before
    assert not (directory / "users").exists() or os.listdir(directory / "users") == []


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_account_mapping_refuses_a_urn_its_column_cannot_hold(kind: str, tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "a.sqlite")) if kind == "sqlite" else empty_postgres())
    database.upgrade()
    accounts = Accounts(database)
    with pytest.raises(BadArgs, match="at most 300"):
        accounts.login_for("urn:publicid:IDN+ple:inria+user+" + "b" * 300, "urn:publicid:IDN+tb+slice+x")
    assert accounts.list() == []
    assert accounts.login_for("urn:publicid:IDN+ple:inria+user+bob", "urn:publicid:IDN+tb+slice+x").startswith("bob_")
    database.dispose()


@pytest.mark.parametrize("login", ["root", "www-data", "postgres"])
def test_a_system_login_is_never_pinned_for_a_user_nor_shared(
    login: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """root or a system user of the host would get a federation user's SSH keys: `account map` refuses it (2, one
    line, nothing written), and so does [sfa_omf] shared_login."""
    database = Database(sqlite_url(str(tmp_path / "a.sqlite")))
    database.upgrade()
    accounts = Accounts(database)
    with pytest.raises(BadArgs, match=f"'{login}' is a system"):
        accounts.pin("urn:publicid:IDN+tb+user+alice", login)
    assert accounts.list() == []
    assert accounts.pin("urn:publicid:IDN+tb+user+alice", "alice").login == "alice"
    database.dispose()
    directory = tmp_path / "site"
    init_directory(str(directory), "tb", ("alice",))
    capsys.readouterr()
    config = directory / "sfa-omf.conf"
    code = main(["account", "map", "urn:publicid:IDN+tb+user+alice", login, "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 2 and "system" in err and "Traceback" not in err, (out, err)
    config.write_text(config.read_text() + f"\n[sfa_omf]\nshared_login = {login}\n")
    with pytest.raises(ValueError, match="not '" + login):  # read_config's refusal of a setting, not a crash
        read_config(str(config))
