"""sfa-omf node|pool|lease|db, as an operator uses them on the embedded default made by sfa-omf init."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.times import utcnow

NODE = "urn:publicid:IDN+testbed+node+node1"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(tmp_path / "tb")]) == 0
    capsys.readouterr()
    return str(tmp_path / "tb" / "sfa-omf.conf")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_nodes_and_pools(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "node",
        "add",
        NODE,
        "--config",
        config,
        "--hardware-type",
        "icarus",
        "--image",
        "ubuntu:Linux:24.04",
        "--property",
        "radio=wifi",
        "--grain",
        "3600",
    )
    assert code == 0, err
    assert "added urn:publicid:IDN+testbed+node+node1 to pool default (slots of 3600 s)" in out
    code, out, _ = run(capsys, "node", "list", "--config", config, "--json")
    (node,) = json.loads(out)
    assert (node["component_name"], node["hardware_type"], node["properties"]) == ("node1", "icarus", {"radio": "wifi"})
    assert node["disk_images"] == [{"name": "ubuntu", "os": "Linux", "version": "24.04"}]
    code, out, _ = run(capsys, "node", "list", "--config", config)
    assert out.splitlines()[0].split() == ["COMPONENT_ID", "NAME", "POOL", "HARDWARE", "GRAIN", "STATE"]
    assert run(capsys, "pool", "create", "local", "--private", "--config", config)[0] == 0
    code, out, err = run(capsys, "pool", "move", NODE, "--from", "local", "--to", "default", "--config", config)
    assert code == 2 and "is in pool 'default', not 'local'" in err
    code, out, _ = run(capsys, "pool", "move", NODE, "--from", "default", "--to", "local", "--config", config)
    assert code == 0 and "now in pool local" in out
    code, out, _ = run(capsys, "pool", "list", "--config", config, "--json")
    assert {pool["name"]: pool["node_count"] for pool in json.loads(out)} == {"default": 0, "local": 1}
    assert run(capsys, "node", "set-state", NODE, "maintenance", "--config", config)[0] == 0
    code, _, err = run(capsys, "node", "add", NODE, "--config", config)
    assert code == 2 and "exists already" in err
    assert run(capsys, "node", "remove", NODE, "--config", config)[0] == 0


def test_lease_list(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "node", "add", NODE, "--config", config)
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    database = Database(read_config(config).calendar_url)
    Bookings(database).book(
        "urn:publicid:IDN+testbed+slice+demo",
        start + timedelta(days=1),
        [BookingRequest(NODE, start, start + timedelta(hours=1))],
    )
    code, out, _ = run(capsys, "lease", "list", "--config", config, "--json", "--node", NODE)
    assert code == 0
    (lease,) = json.loads(out)
    assert lease["nodes"] == [NODE] and lease["slice"] == "urn:publicid:IDN+testbed+slice+demo"
    code, out, _ = run(capsys, "lease", "list", "--config", config, "--from", "+1d")
    assert code == 0 and out.splitlines()[1:] == []
    code, out, _ = run(capsys, "lease", "list", "--config", config)
    assert code == 0 and "urn:publicid:IDN+testbed+slice+demo" in out.splitlines()[1]


def test_db_upgrade_is_repeatable(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "db", "upgrade", "--config", config)[0] == 0
    code, out, _ = run(capsys, "db", "upgrade", "--config", config)
    assert code == 0 and "up to date" in out


def test_missing_config_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "node", "list", "--config", str(tmp_path / "nope.conf"))
    assert code == 2 and "sfa-omf init DIR" in err


def test_slice_shutdown_and_release(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "node", "add", NODE, "--config", config)
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    slice_urn = "urn:publicid:IDN+testbed+slice+demo"
    bookings = Bookings(Database(read_config(config).calendar_url))
    bookings.book(slice_urn, start + timedelta(days=1), [BookingRequest(NODE, start, start + timedelta(hours=1))])
    code, out, _ = run(capsys, "slice", "shutdown", slice_urn, "--config", config)
    assert code == 0 and "1 lease(s) cancelled" in out
    assert bookings.leases(slice_urn=slice_urn) == []
    code, _, err = run(capsys, "slice", "release", "urn:publicid:IDN+testbed+slice+nope", "--config", config)
    assert code == 2 and "nothing here" in err
    code, out, _ = run(capsys, "slice", "release", slice_urn, "--config", config)
    assert code == 0 and "may book again" in out
    bookings.book(slice_urn, start + timedelta(days=1), [BookingRequest(NODE, start, start + timedelta(hours=1))])


def test_account_map_and_list(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    urn = "urn:publicid:IDN+onelab:inria+user+alice"
    code, out, _ = run(capsys, "account", "map", urn, "alice", "--config", config)
    assert code == 0 and "logs in as alice (pinned)" in out
    code, out, _ = run(capsys, "account", "list", "--json", "--config", config)
    assert code == 0 and json.loads(out) == [{"urn": urn, "login": "alice", "pinned": True}]
    code, _, err = run(capsys, "account", "map", urn, "Not Valid", "--config", config)
    assert code == 2 and "not a usable Unix login" in err


def test_node_add_makes_a_name_into_a_node_urn_and_honours_the_configured_grain(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFA_OMF_GRAIN_S", "600")
    code, out, err = run(capsys, "node", "add", "node7.lab", "--config", config)
    assert code == 0, err
    assert out.splitlines()[0] == "added urn:publicid:IDN+testbed+node+node7.lab to pool default (slots of 600 s)"


@pytest.mark.parametrize(
    ("component_id", "grain", "message"),
    [
        (
            "urn:publicid:IDN+other+node+n1",
            None,
            "urn:publicid:IDN+other+node+n1 belongs to authority 'other', not to this aggregate's 'testbed'",
        ),
        ("urn:publicid:IDN+testbed+user+n1", None, "names a user, not a node"),
        ("urn:publicid:IDN+testbed+node", None, "is not a GENI URN: expected urn:publicid:IDN+<authority>+<type>"),
        ("urn:publicid:IDN+testbed+node+a b", None, "the node name 'a b' may hold only letters, digits"),
        ("node 1", None, "is neither a node URN"),
        (NODE, "0", "grain 0 s: a node's booking slot must be from 1 s to 31536000 s (a year)"),
        (NODE, "-5", "grain -5 s"),
        (NODE, "3000000000", "grain 3000000000 s: a node's booking slot must be from 1 s to 31536000 s"),
        (NODE, str(10**20), "grain 100000000000000000000 s"),
        # A regression guard, not a fix's test: node_urn refused a control character in the name already.
        (NODE.replace("node1", "node\x07"), None, "the node name 'node\\x07' may hold only letters"),
    ],
)
def test_node_add_refusals(
    config: str, capsys: pytest.CaptureFixture[str], component_id: str, grain: str | None, message: str
) -> None:
    extra = ["--grain", grain] if grain else []
    code, out, err = run(capsys, "node", "add", component_id, "--config", config, *extra)
    assert (code, out) == (2, "")
    assert err.startswith("sfa-omf: ") and message in err and "bad_args" not in err
    assert run(capsys, "node", "list", "--config", config, "--json")[1] == "[]\n"  # nothing was added


def test_node_add_reports_the_dot_colon_trap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "site"), "--authority", "onelab.inria", "--no-demo"]) == 0
    capsys.readouterr()
    config = str(tmp_path / "site" / "sfa-omf.conf")
    code, _, err = run(capsys, "node", "add", "urn:publicid:IDN+onelab.inria+node+n1", "--config", config)
    assert code == 2
    assert "in a URN the authority's levels are joined by ':', not '.'" in err
    assert "urn:publicid:IDN+onelab:inria+node+n1 is the node of authority onelab.inria" in err
    code, out, _ = run(capsys, "node", "add", "urn:publicid:IDN+onelab:inria+node+n1", "--config", config)
    assert code == 0 and "urn:publicid:IDN+onelab:inria+node+n1" in out


@pytest.mark.parametrize("command", [["db", "upgrade"], ["node", "list"], ["user", "list"]])
def test_an_unreachable_database_is_one_line(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", f"postgresql+psycopg://u:p@127.0.0.1:{port}/x")
    code, out, err = run(capsys, *command, "--config", config)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "Connection refused" in err
    assert err.startswith("sfa-omf: the calendar database failed: ")


def test_node_commands_take_the_bare_name_node_add_takes(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "node", "add", "node1", "--config", config)[0] == 0
    assert run(capsys, "pool", "create", "lab", "--config", config)[0] == 0
    code, out, err = run(capsys, "pool", "move", "node1", "--to", "lab", "--config", config)
    assert code == 0 and f"{NODE} is now in pool lab" in out, err
    code, out, err = run(capsys, "node", "set-state", "node1", "maintenance", "--config", config)
    assert code == 0 and f"{NODE} is maintenance" in out, err
    code, _, err = run(capsys, "node", "set-state", "node 1", "usable", "--config", config)
    assert code == 2 and "'node 1' is neither a node URN" in err
    code, out, err = run(capsys, "node", "remove", "node1", "--config", config)
    assert code == 0 and f"removed {NODE}" in out, err
    assert run(capsys, "node", "list", "--config", config, "--json")[1] == "[]\n"


def test_node_commands_find_a_node_urn_typed_in_another_spelling(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URN in another spelling (case of the prefix and type) names the node stored under its canonical form, and a
    node an older import stored under another spelling is found by the canonical one (both were "no such node")."""
    from sfa_omf.calendar.inventory import Inventory
    from sfa_omf.calendar.records import NodeSpec

    assert run(capsys, "node", "add", "node1", "--config", config)[0] == 0
    code, out, err = run(
        capsys, "node", "set-state", "URN:PUBLICID:IDN+testbed+NODE+node1", "maintenance", "--config", config
    )
    assert code == 0 and f"{NODE} is maintenance" in out, err
    old_spelling = "urn:publicid:idn+testbed+node+old1"
    database = Database(read_config(config).calendar_url)
    Inventory(database).add_node(NodeSpec(old_spelling, "old1"))
    code, out, err = run(
        capsys, "node", "set-state", "urn:publicid:IDN+testbed+node+old1", "maintenance", "--config", config
    )
    assert code == 0 and f"{old_spelling} is maintenance" in out, err
    code, out, err = run(capsys, "node", "remove", "URN:publicid:IDN+testbed+Node+old1", "--config", config)
    assert code == 0 and f"removed {old_spelling}" in out, err
    assert [node.component_id for node in Inventory(database).list_nodes()] == [NODE]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "a pool needs a name"), ("l\x01ab", "U+0001"), ("p" * 5000, "5000 characters long: at most 100")],
)
def test_pool_create_refuses_bad_names(
    config: str, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    code, out, err = run(capsys, "pool", "create", name, "--config", config)
    assert (code, out) == (2, "") and err.startswith("sfa-omf: ") and message in err and "Traceback" not in err
    code, out, _ = run(capsys, "pool", "list", "--config", config, "--json")
    assert json.loads(out) == []  # nothing was created


def test_node_import_takes_only_this_authoritys_nodes(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(f"component_id\n{NODE}\nurn:publicid:IDN+other+node+n1\n", encoding="utf-8")
    code, out, err = run(capsys, "node", "import", "--from-file", str(path), "--config", config)
    assert (code, out) == (2, "") and "nodes.csv line 3: component_id urn:publicid:IDN+other+node+n1 belongs to" in err
    assert run(capsys, "node", "list", "--config", config, "--json")[1] == "[]\n"
    path.write_text("component_id\nnode1\nURN:PUBLICID:IDN+testbed+NODE+node1\n", encoding="utf-8")
    code, _, err = run(capsys, "node", "import", "--from-file", str(path), "--config", config)
    assert code == 2 and f"line 3: {NODE} is in the file twice (first at nodes.csv line 2)" in err
