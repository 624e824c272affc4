"""``sfa-omf node import --from-oar``: OAR's resources become nodes (one per network address); re-running updates
and never duplicates. The grouping is checked on made-up resources; the command against the real OAR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.testbed.oar.client import OarResource
from sfa_omf.testbed.oar.importer import node_specs
from sfa_omf.xrn import parse_urn


def resource(number: int, address: str, **properties: str) -> OarResource:
    common = {"network_address": address, "state": "Alive", "last_job_date": str(number), "cluster": "c1"}
    return OarResource(number, address, "Alive", {**common, "cpu": str(number), **properties})


def test_resources_group_into_nodes() -> None:
    specs = node_specs(
        [
            resource(1, "griffon-1.nancy.grid5000.fr", memnode="32768"),
            resource(2, "griffon-1.nancy.grid5000.fr", memnode="32768"),
            resource(3, "node3"),
            resource(4, ""),  # no address: not a node
        ],
        "testbed",
    )
    assert [spec.component_name for spec in specs] == ["griffon-1.nancy.grid5000.fr", "node3"]
    griffon = specs[0]
    assert griffon.component_id == "urn:publicid:IDN+testbed+node+griffon-1.nancy.grid5000.fr"
    assert parse_urn(griffon.component_id).hrn == r"testbed.griffon-1\.nancy\.grid5000\.fr", "one name, not 4"
    assert griffon.properties == {
        "network_address": "griffon-1.nancy.grid5000.fr",
        "cluster": "c1",
        "memnode": "32768",
        "oar_resources": 2,
    }, "host-level properties only: cpu differs per resource, state and dates change all the time"


def test_import_from_the_real_oar(oar_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_directory(str(tmp_path / "tb"), "testbed", ("alice",))
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    assert main(["node", "import", "--from-oar", oar_url, "--config", config]) == 0
    first = capsys.readouterr()
    assert "0 updated, 0 unchanged" in first.out and "] " in first.err
    assert main(["node", "list", "--json", "--config", config]) == 0
    nodes = {node["component_name"]: node for node in json.loads(capsys.readouterr().out)}
    assert {f"node{number}" for number in range(1, 11)} <= set(nodes)
    assert nodes["node3"]["component_id"] == "urn:publicid:IDN+testbed+node+node3"
    assert nodes["node3"]["properties"]["network_address"] == "node3"
    count = len(nodes)
    # Someone changed a node's description here: the next import puts OAR's back, and adds nothing twice.
    inventory = Inventory(Database(read_config(config).calendar_url))
    inventory.update_node("urn:publicid:IDN+testbed+node+node3", "node3", {"network_address": "node3"})
    assert main(["node", "import", "--from-oar", oar_url, "--config", config]) == 0
    again = capsys.readouterr().out
    assert f"0 node(s) added, 1 updated, {count - 1} unchanged" in again
    assert inventory.get_node("urn:publicid:IDN+testbed+node+node3").properties == nodes["node3"]["properties"]
    assert len(inventory.list_nodes()) == count
    # OAR not answering: a clear refusal, nothing changed.
    assert main(["node", "import", "--from-oar", "http://127.0.0.1:9/oarapi", "--config", config]) == 2
    assert "cannot read OAR's resources" in capsys.readouterr().err
    assert len(inventory.list_nodes()) == count
