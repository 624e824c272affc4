"""Bulk node import from CSV and JSON: adds, updates on re-run (never duplicates), refuses bad files before writing,
bumps the calendar's generation, and sfa-omf node import --from-file does the same from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfa_omf.calendar import bulk_import
from sfa_omf.calendar.bulk_import import import_nodes, read_node_file
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import Calendar, node_urn


def generation(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_import_adds_then_updates_without_duplicates(
    calendar: Calendar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_import, "CHUNK", 7)  # several units of work
    header = "component_id,component_name,hardware_type,grain_s,disk_images,radio"
    rows = [f"{node_urn(f'b{index}')},b{index},icarus,3600,ubuntu:Linux:24.04;debian,wifi" for index in range(20)]
    path = write_csv(tmp_path / "nodes.csv", [header, *rows, f"{node_urn('n1')},renamed,,,,"])
    steps: list[tuple[int, int]] = []
    before = generation(calendar.database)
    report = import_nodes(calendar.database, read_node_file(path), progress=lambda d, t: steps.append((d, t)))
    assert (report.added, report.updated, report.unchanged) == (20, 1, 0)
    assert steps == [(7, 21), (14, 21), (21, 21)]
    assert generation(calendar.database) == before + 3
    nodes = {node.component_id: node for node in calendar.inventory.list_nodes()}
    assert len(nodes) == 23
    b0 = nodes[node_urn("b0")]
    assert (b0.component_name, b0.hardware_type, b0.grain_s, b0.pool, b0.state) == (
        "b0",
        "icarus",
        3600,
        "default",
        "usable",
    )
    assert b0.properties == {"radio": "wifi"}
    assert b0.disk_images == (
        {"name": "ubuntu", "os": "Linux", "version": "24.04"},
        {"name": "debian", "os": "", "version": ""},
    )
    n1 = nodes[node_urn("n1")]
    assert (n1.component_name, n1.hardware_type, n1.properties, n1.grain_s) == ("renamed", "icarus", {}, 1800)
    # Again, unchanged: nothing written, the generation stays.
    calendar.inventory.set_state(node_urn("b3"), "maintenance")
    before = generation(calendar.database)
    report = import_nodes(calendar.database, read_node_file(path))
    assert (report.added, report.updated, report.unchanged) == (0, 0, 21)
    assert generation(calendar.database) == before
    # Changed rows are updated in place; the operator's maintenance state stays.
    write_csv(path, [header, *[row.replace("wifi", "lte") for row in rows[:5]]])
    report = import_nodes(calendar.database, read_node_file(path))
    assert (report.added, report.updated, report.unchanged) == (0, 5, 0)
    nodes = {node.component_id: node for node in calendar.inventory.list_nodes()}
    assert len(nodes) == 23 and nodes[node_urn("b3")].properties == {"radio": "lte"}
    assert nodes[node_urn("b3")].state == "maintenance" and nodes[node_urn("b9")].properties == {"radio": "wifi"}


def test_json_import_matches_add_node(calendar: Calendar, tmp_path: Path) -> None:
    """A node imported from JSON reads back exactly as the same node added with Inventory.add_node."""
    calendar.inventory.create_pool("lab", federated=False)
    spec = NodeSpec(
        node_urn("x1"),
        "x1",
        pool="lab",
        hardware_type="usrp",
        exclusive=False,
        properties={"room": "B12", "cores": 4},
        disk_images=({"name": "gnuradio", "os": "Linux", "description": "SDR"},),
        grain_s=900,
    )
    item = {
        "component_id": spec.component_id,
        "component_name": spec.component_name,
        "pool": spec.pool,
        "hardware_type": spec.hardware_type,
        "exclusive": spec.exclusive,
        "properties": spec.properties,
        "disk_images": list(spec.disk_images),
        "grain_s": spec.grain_s,
    }
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps([item]), encoding="utf-8")
    assert import_nodes(calendar.database, read_node_file(path)).added == 1
    imported = calendar.inventory.get_node(spec.component_id)
    calendar.inventory.remove_node(spec.component_id)
    assert calendar.inventory.add_node(spec) == imported


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nodes.csv", "component_name\nx\n", "must name the columns"),
        ("nodes.csv", "component_id\nurn:publicid:IDN+testbed+slice+s\n", "nodes.csv line 2: component_id"),
        ("nodes.csv", "component_id,grain_s\nurn:publicid:IDN+testbed+node+a,soon\n", "line 2: grain_s is 'soon'"),
        ("nodes.csv", "component_id,grain_s\nurn:publicid:IDN+testbed+node+a,-5\n", "positive number"),
        ("nodes.csv", "component_id,exclusive\nurn:publicid:IDN+testbed+node+a,maybe\n", "true or false"),
        ("nodes.csv", "component_id\nurn:publicid:IDN+testbed+node+a\nurn:publicid:IDN+testbed+node+a\n", "twice"),
        ("nodes.csv", "component_id\nurn:publicid:IDN+testbed+node+a,extra\n", "more values than columns"),
        ("nodes.json", "{}", "a list of node objects"),
        ("nodes.json", '[{"component_id": "urn:publicid:IDN+testbed+node+a", "colour": 1}]', "unknown key(s) colour"),
        ("nodes.json", '[{"component_id": "urn:publicid:IDN+testbed+node+a", "disk_images": [{}]}]', "with a name"),
        ("nodes.json", '[{"component_id": "urn:publicid:IDN+testbed+node+a", "exclusive": "yes"}]', "true or false"),
        ("nodes.txt", "", "must end in .csv or .json"),
    ],
)
def test_bad_files_are_refused_with_the_place(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GeniError) as refused:
        read_node_file(path)
    assert refused.value.reason == Reason.BAD_ARGS and message in refused.value.message


def test_an_unknown_pool_changes_nothing(calendar: Calendar, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "nodes.csv", ["component_id,pool", f"{node_urn('a')},default", f"{node_urn('b')},nowhere"]
    )
    before = (generation(calendar.database), calendar.inventory.list_nodes())
    with pytest.raises(GeniError) as refused:
        import_nodes(calendar.database, read_node_file(path))
    assert refused.value.reason == Reason.NOT_FOUND and "'nowhere'" in refused.value.message
    assert (generation(calendar.database), calendar.inventory.list_nodes()) == before


def test_the_default_pool_is_created_on_an_empty_calendar(database: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "nodes.csv", ["component_id", node_urn("a")])
    report = import_nodes(database, read_node_file(path))
    assert report.added == 1 and report.pools_created == ["default"]
    assert [node.pool for node in Inventory(database).list_nodes()] == ["default"]


def test_cli_node_import_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sfa_omf.cli import main

    assert main(["init", str(tmp_path / "tb")]) == 0
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    path = write_csv(
        tmp_path / "nodes.csv", ["component_id,hardware_type", *(f"{node_urn(f'c{i}')},pc" for i in range(3))]
    )
    capsys.readouterr()
    assert main(["node", "import", "--from-file", str(path), "--config", config]) == 0
    out, err = capsys.readouterr()
    assert "3 node(s) added, 0 updated, 0 unchanged" in out and "3/3 nodes" in err
    assert main(["node", "import", "--from-file", str(path), "--config", config]) == 0
    assert "0 node(s) added, 0 updated, 3 unchanged" in capsys.readouterr().out
    assert main(["node", "list", "--config", config, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sum(1 for node in listed if node["hardware_type"] == "pc") == 3
