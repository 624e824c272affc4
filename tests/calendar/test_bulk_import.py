"""Bulk node import from CSV and JSON: adds, updates on re-run (never duplicates), refuses bad files before writing,
bumps the calendar's generation, and sfa-omf node import --from-file does the same from the command line."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from sfa_omf.calendar import bulk_import
from sfa_omf.calendar.bulk_import import import_nodes, read_node_file
from sfa_omf.calendar.database import Database, TransientConflict
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import BookingRequest, NodeRecord, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.omf.importer import node_entries
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn


def generation(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_import_adds_then_updates_without_duplicates(
    calendar: Calendar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_import, "CHUNK", 7)  # several chunks, in one unit of work
    header = "component_id,component_name,hardware_type,grain_s,disk_images,radio"
    rows = [f"{node_urn(f'b{index}')},b{index},icarus,3600,ubuntu:Linux:24.04;debian,wifi" for index in range(20)]
    path = write_csv(tmp_path / "nodes.csv", [header, *rows, f"{node_urn('n1')},renamed,,,,"])
    steps: list[tuple[int, int]] = []
    before = generation(calendar.database)
    report = import_nodes(calendar.database, read_node_file(path), progress=lambda d, t: steps.append((d, t)))
    assert (report.added, report.updated, report.unchanged) == (20, 1, 0)
    assert steps == [(7, 21), (14, 21), (21, 21)]
    assert generation(calendar.database) == before + 1  # one unit of work, whatever the number of chunks
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


def nodes_and_generation(database: Database) -> tuple[int, list[NodeRecord]]:
    return generation(database), Inventory(database).list_nodes()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nodes.csv", f"component_id,component_name\n{node_urn('a')},a\x07b\n", "line 2: component_name holds"),
        ("nodes.csv", f"component_id,hardware_type\n{node_urn('a')},pc\x1b\n", "line 2: hardware_type holds"),
        ("nodes.csv", f"component_id,room\n{node_urn('a')},B\x7f12\n", "line 2: property 'room' holds"),
        ("nodes.csv", f"component_id,ro\x01om\n{node_urn('a')},B12\n", "line 2: a property name holds"),
        ("nodes.csv", f"component_id,disk_images\n{node_urn('a')},ubu\x00ntu\n", "line 2: disk image name holds"),
        ("nodes.csv", f"component_id\n{node_urn('a')}\x0cb\n", "line 2: component_id holds the control character"),
        ("nodes.json", json.dumps([{"component_id": node_urn("a\u0000")}]), "item 0: component_id holds"),
        ("nodes.json", json.dumps([{"component_id": node_urn("a"), "component_name": "a\x85"}]), "component_name"),
        (
            "nodes.json",
            json.dumps([{"component_id": node_urn("a"), "properties": {"cmc": {"ip": ["10.0.0.1\x00"]}}}]),
            "item 0: property 'cmc' holds the control character U+0000",
        ),
        (
            "nodes.json",
            json.dumps([{"component_id": node_urn("a"), "disk_images": [{"name": "u", "description": "x\x08"}]}]),
            "item 0: disk image description holds",
        ),
    ],
)
def test_control_characters_are_refused_naming_the_field_and_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    """One node with a character XML cannot carry would make every ListResources fail: refused with its place."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GeniError) as refused:
        read_node_file(path, "testbed")
    assert refused.value.reason == Reason.BAD_ARGS and message in refused.value.message
    assert "U+" in refused.value.message


def test_component_ids_are_checked_and_spelled_as_node_add_does(calendar: Calendar, tmp_path: Path) -> None:
    for row, message in [
        ("urn:publicid:IDN+other+node+x", "line 2: component_id urn:publicid:IDN+other+node+x belongs to authority"),
        ("urn:publicid:IDN+testbed+node+a b", "line 2: component_id urn:publicid:IDN+testbed+node+a b: the node name"),
        ("a b", "line 2: component_id 'a b' is neither a node URN nor"),
    ]:
        path = write_csv(tmp_path / "nodes.csv", ["component_id", row])
        with pytest.raises(GeniError) as refused:
            read_node_file(path, "testbed")
        assert refused.value.reason == Reason.BAD_ARGS and message in refused.value.message.replace(" (", " nor (")
    # Three spellings of one URN are one node; a bare name is one too.
    spellings = ["URN:PUBLICID:IDN+testbed+NODE+n1", "urn:publicid:IDN+testbed+Node+n2", "n3", node_urn("new")]
    path = write_csv(tmp_path / "nodes.csv", ["component_id,hardware_type", *(f"{urn},pc" for urn in spellings)])
    report = import_nodes(calendar.database, read_node_file(path, "testbed"))
    assert (report.added, report.updated) == (1, 3)
    nodes = {node.component_id: node for node in calendar.inventory.list_nodes()}
    assert sorted(nodes) == [node_urn(name) for name in ("n1", "n2", "n3", "new")]
    assert {node.hardware_type for node in nodes.values()} == {"pc"}
    path = write_csv(tmp_path / "nodes.csv", ["component_id", "URN:PUBLICID:IDN+testbed+NODE+n1", node_urn("n1")])
    with pytest.raises(GeniError) as refused:
        read_node_file(path, "testbed")
    assert "line 3: urn:publicid:IDN+testbed+node+n1 is in the file twice (first at nodes.csv line 2)" in (
        refused.value.message
    )


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("component_name", "x" * 201, "line 1200: component_name is 201 characters long: at most 200"),
        ("hardware_type", "x" * 101, "line 1200: hardware_type is 101 characters long: at most 100"),
        ("component_id", node_urn("x" * 300), "line 1200: component_id is 330 characters long: at most 300"),
        ("grain_s", "3000000000", "line 1200: grain 3000000000 s: a node's booking slot must be from 1 s to"),
        ("grain_s", str(10**20), "line 1200: grain 100000000000000000000 s"),
    ],
)
def test_every_limit_is_checked_before_the_first_write(
    calendar: Calendar, tmp_path: Path, column: str, value: str, message: str
) -> None:
    """A value the database would refuse (too long, out of an integer's range) at node 1200 writes nothing."""
    rows = [f"{node_urn(f'l{index}')},l{index},pc,1800" for index in range(1198)]
    bad = {"component_id": node_urn("bad"), "component_name": "bad", "hardware_type": "pc", "grain_s": "1800"}
    bad[column] = value
    path = write_csv(tmp_path / "nodes.csv", ["component_id,component_name,hardware_type,grain_s", *rows])
    with path.open("a", encoding="utf-8") as file:
        file.write(",".join(bad.values()) + "\n")
    before = nodes_and_generation(calendar.database)
    with pytest.raises(GeniError) as refused:
        import_nodes(calendar.database, read_node_file(path, "testbed"))
    assert refused.value.reason == Reason.BAD_ARGS and message in refused.value.message
    assert nodes_and_generation(calendar.database) == before


def test_a_refusal_while_writing_undoes_every_chunk(
    calendar: Calendar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grain of a booked node (refused while writing, in the last chunk) leaves the earlier chunks unwritten."""
    monkeypatch.setattr(bulk_import, "CHUNK", 5)
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    rows = [f"{node_urn(f'c{index}')},1800" for index in range(12)]
    path = write_csv(tmp_path / "nodes.csv", ["component_id,grain_s", *rows, f"{node_urn('n1')},3600"])
    before = nodes_and_generation(calendar.database)
    with pytest.raises(GeniError) as refused:
        import_nodes(calendar.database, read_node_file(path, "testbed"))
    assert refused.value.reason == Reason.BAD_ARGS and "line 14: grain_s 3600 would change the grain (1800 s) of " in (
        refused.value.message
    )
    assert f"which lease {lease.id} hold(s) now or later" in refused.value.message
    assert nodes_and_generation(calendar.database) == before


def test_a_grain_change_waits_for_the_bookings_of_the_node(calendar: Calendar, tmp_path: Path) -> None:
    """Leases booked on the old grain could never be renewed on the new one: the change is refused while they hold
    the node; the same grain, another node's grain, and the change once the lease is cancelled are fine."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(1.5))]).leases
    path = write_csv(tmp_path / "nodes.csv", ["component_id,grain_s", f"{node_urn('n1')},7200"])
    with pytest.raises(GeniError) as refused:
        import_nodes(calendar.database, read_node_file(path))
    assert (
        "Keep its grain_s until they end, or cancel them first (`sfa-omf slice shutdown SLICE_URN` cancels all of a "
        "slice's leases and refuses it new ones until `sfa-omf slice release SLICE_URN`); nothing was imported"
    ) in refused.value.message
    assert calendar.inventory.get_node(node_urn("n1")).grain_s == 1800
    calendar.bookings.renew(lease.id, at(2))  # the lease still renews on its grain
    path = write_csv(tmp_path / "nodes.csv", ["component_id,grain_s", f"{node_urn('n1')},1800", f"{node_urn('n2')},60"])
    assert import_nodes(calendar.database, read_node_file(path)).updated == 1
    calendar.bookings.cancel(lease.id)
    path = write_csv(tmp_path / "nodes.csv", ["component_id,grain_s", f"{node_urn('n1')},7200"])
    assert import_nodes(calendar.database, read_node_file(path)).updated == 1
    assert calendar.inventory.get_node(node_urn("n1")).grain_s == 7200


def test_hostile_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    """Deep nesting and a cell over the csv module's limit: BadArgs, not a traceback."""
    cases = {
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "deepprop.json": json.dumps([{"component_id": node_urn("a"), "properties": {"x": "PLACE"}}]).replace(
            '"PLACE"', "[" * 50 + "]" * 50
        ),
        "big.csv": f"component_id,room\n{node_urn('a')},{'x' * 200_000}\n",
    }
    messages = {
        "deep.json": "deep.json: nested too deeply to read",
        "deepprop.json": "deepprop.json item 0: property 'x' nests lists or objects more than 20 levels deep",
        "big.csv": "big.csv line 2: not CSV (field larger than field limit",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(GeniError) as refused:
            read_node_file(path)
        assert refused.value.reason == Reason.BAD_ARGS and messages[name] in refused.value.message


def test_csv_lines_end_only_at_line_ends(tmp_path: Path) -> None:
    """\\u2028, \\x1c or \\x0c inside a cell do not end a CSV line (str.splitlines would make two nodes of one)."""
    path = tmp_path / "nodes.csv"
    path.write_text(f"component_id,note\n{node_urn('a')},one\u2028two\n{node_urn('b')},three\n", encoding="utf-8")
    entries = read_node_file(path)
    assert [(entry.component_id, entry.given["properties"], entry.where) for entry in entries] == [
        (node_urn("a"), {"note": "one\u2028two"}, "nodes.csv line 2"),
        (node_urn("b"), {"note": "three"}, "nodes.csv line 3"),
    ]
    path.write_text(f"component_id,note\n{node_urn('a')},one\x1ctwo\n", encoding="utf-8")
    with pytest.raises(GeniError) as refused:
        read_node_file(path)
    assert "nodes.csv line 2: property 'note' holds the control character U+001C" in refused.value.message


def test_a_byte_order_mark_duplicate_columns_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(f"\ufeffcomponent_id,room\n{node_urn('a')},B12\n", encoding="utf-8")
    assert [entry.component_id for entry in read_node_file(path)] == [node_urn("a")]
    path.write_text(f"component_id,room,room\n{node_urn('a')},B12,C3\n", encoding="utf-8")
    with pytest.raises(GeniError) as refused:
        read_node_file(path)
    assert "nodes.csv line 1: the column(s) 'room' are named twice" in refused.value.message
    path = tmp_path / "nodes.json"
    for constant in ("NaN", "Infinity", "-Infinity"):
        path.write_text(f'[{{"component_id": "{node_urn("a")}", "properties": {{"x": {constant}}}}}]')
        with pytest.raises(GeniError) as refused:
            read_node_file(path)
        assert refused.value.reason == Reason.BAD_ARGS and f"nodes.json: {constant} is not a number JSON allows" in (
            refused.value.message
        )


def test_a_node_stored_under_another_spelling_is_updated_not_added_again(database: Database, tmp_path: Path) -> None:
    """Before the import made ids canonical it stored them as the file spelled them: a re-run, in that spelling or the
    canonical one, updates that row (it added a second node of the same machine, both bookable)."""
    inventory = Inventory(database)
    old_spellings = ["urn:publicid:idn+testbed+node+old1", "urn:publicid:IDN+testbed+NODE+old2"]
    for urn in old_spellings:
        inventory.add_node(NodeSpec(urn, urn.rsplit("+", 1)[-1]))
    for rows, hardware_type in [(old_spellings, "pc"), ([node_urn("old1"), node_urn("old2")], "icarus")]:
        path = write_csv(
            tmp_path / "nodes.csv", ["component_id,hardware_type", *(f"{urn},{hardware_type}" for urn in rows)]
        )
        report = import_nodes(database, read_node_file(path, "testbed"))
        assert (report.added, report.updated, report.unchanged) == (0, 2, 0)
        nodes = inventory.list_nodes()
        assert sorted(node.component_id for node in nodes) == sorted(old_spellings)
        assert {node.hardware_type for node in nodes} == {hardware_type}


def test_two_spellings_of_one_broker_node_are_refused_naming_both(database: Database) -> None:
    """The twice-in-the-file check is import_nodes' own, so a broker's nodes (omf importer.node_entries) get it too:
    two URNs differing only in case were one id, two INSERTs, an IntegrityError traceback."""
    broker_nodes = [
        {"name": "n1", "urn": "urn:publicid:IDN+testbed+node+n1"},
        {"name": "n1-again", "urn": "urn:publicid:IDN+testbed+NODE+n1"},
    ]
    entries = node_entries(broker_nodes, "testbed", "broker")
    with pytest.raises(GeniError) as refused:
        import_nodes(database, entries)
    assert refused.value.reason == Reason.BAD_ARGS
    assert refused.value.message == (
        "broker node n1-again: urn:publicid:IDN+testbed+node+n1 is in the file twice (first at broker node n1)"
    )
    assert Inventory(database).list_nodes() == []


def test_two_concurrent_imports_of_reversed_files_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the first import holds its rows (paused after its first chunk) while a second import of the same
    nodes in the reverse order starts. Rows locked in id order across the whole import: the second waits, then
    updates. (Locked in file order chunk by chunk, each held one node and waited for the other: a deadlock, the
    loser a TransientConflict traceback.) The node new to both: the second read the inventory before the first
    added it, its INSERT is refused, and it runs again, updating it (an IntegrityError traceback)."""
    first = fresh_database("postgresql", tmp_path)
    second = Database(first.url)
    watcher = create_engine(first.url)
    inventory = Inventory(first)
    for name in ("low", "high"):  # ids in this order
        inventory.add_node(NodeSpec(node_urn(name), name))
    monkeypatch.setattr(bulk_import, "CHUNK", 1)
    forward = write_csv(
        tmp_path / "forward.csv",
        ["component_id,hardware_type", f"{node_urn('high')},a", f"{node_urn('low')},a", f"{node_urn('new')},a"],
    )
    reverse = write_csv(
        tmp_path / "reverse.csv",
        ["component_id,hardware_type", f"{node_urn('new')},b", f"{node_urn('low')},b", f"{node_urn('high')},b"],
    )
    outcome: dict[str, object] = {}
    failed_statements: list[str] = []  # a deadlock the retry hid shows here

    def record_failure(context: Any) -> None:
        failed_statements.append(str(context.original_exception))

    for engine in (first.engine, second.engine):
        event.listen(engine, "handle_error", record_failure)

    def import_reverse() -> None:
        try:
            outcome["reverse"] = import_nodes(second, read_node_file(reverse, "testbed"))
        except Exception as exc:  # the assertions below report it
            outcome["reverse"] = exc

    other = threading.Thread(target=import_reverse)

    def waiting_on_a_lock() -> bool:
        with watcher.connect() as connection:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return bool(connection.execute(text(query)).scalar())

    def after_first_chunk(done: int, _total: int) -> None:
        if done != 1 or other.is_alive() or outcome:
            return
        other.start()
        deadline = time.monotonic() + 60  # only against a hang: the other import ends or waits within milliseconds
        while other.is_alive() and not waiting_on_a_lock():
            assert time.monotonic() < deadline, "the other import neither ended nor waited for a lock"
            time.sleep(0.01)

    try:
        try:
            outcome["forward"] = import_nodes(first, read_node_file(forward, "testbed"), progress=after_first_chunk)
        except Exception as exc:  # the assertions below report it
            outcome["forward"] = exc
        other.join(60)
        assert not other.is_alive()
        assert all(isinstance(report, bulk_import.BulkImportReport) for report in outcome.values()), outcome
        assert not [failure for failure in failed_statements if "deadlock" in failure]  # waited, not retried
        assert {node.hardware_type for node in inventory.list_nodes()} == {"b"}  # the second committed last
        assert len(inventory.list_nodes()) == 3
    finally:
        second.dispose()
        watcher.dispose()
        first.dispose()


class FaultCollisionAfterTheFirstChunk:
    """Stands in for a deadlock or serialization failure the database reports mid-import (TransientConflict, as
    database.py makes of SQLSTATE 40P01/40001), which cannot be caused on purpose once rows are locked in id order:
    the first attempt writes its first chunk, then fails."""

    def __init__(self) -> None:
        self.write_chunk = bulk_import._write_chunk
        self.calls = 0

    def __call__(self, *args: Any) -> None:
        self.write_chunk(*args)
        self.calls += 1
        if self.calls == 1:
            raise TransientConflict("deadlock detected (stand-in)")


def test_an_import_the_database_reports_a_collision_in_runs_again_and_counts_once(
    calendar: Calendar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import is run again by retry_transient (it was a TransientConflict traceback from the CLI), with a fresh
    report: the first attempt's counts are not added to the second's."""
    monkeypatch.setattr(bulk_import, "CHUNK", 1)
    monkeypatch.setattr(bulk_import, "_write_chunk", FaultCollisionAfterTheFirstChunk())
    path = write_csv(
        tmp_path / "nodes.csv", ["component_id,hardware_type", f"{node_urn('new')},pc", f"{node_urn('n1')},pc"]
    )
    report = import_nodes(calendar.database, read_node_file(path, "testbed"))
    assert (report.added, report.updated, report.unchanged) == (1, 1, 0)
    nodes = {node.component_id: node.hardware_type for node in calendar.inventory.list_nodes()}
    assert (len(nodes), nodes[node_urn("new")], nodes[node_urn("n1")]) == (4, "pc", "pc")
