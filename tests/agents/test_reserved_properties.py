"""Properties no agent may set (network_address, hostname, uuid, cmc, interfaces): what an agent of an older sfa-omf
stored on its node is removed once, by migration 0020 (SQLite and PostgreSQL); the operator's own nodes keep theirs,
and a value the operator sets on an agent's node afterwards stays (the sweep of lost nodes leaves it)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sfa_omf.agents.node import enrol
from sfa_omf.agents.service import AgentService, AgentSettings
from sfa_omf.calendar.database import MIGRATIONS, Database
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.registry.authority import LocalAuthority
from tests.agents.conftest import Lab

# What the OMF controllers and the OAR backend would read from a node, as an agent of an older version could set it.
STORED_BY_AN_OLD_AGENT = {
    "cmc": "10.0.0.200",
    "interfaces": "eth9",
    "hostname": "pc2",
    "uuid": "6ba7b811-9dad-11d1-80b4-00c04fd430c8",
    "network_address": "10.0.0.9",
}


def _migrate(database: Database, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_migration_0020_removes_once_what_agents_stored_and_operators_values_stay(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "pc1"), "pc1", "10.1.0.1", "lan-a", {"cpu": "4"})
    database = lab.aggregate.database
    inventory = lab.aggregate.inventory
    # The database as an older sfa-omf left it: its registration merged whatever the agent sent.
    _migrate(database, "downgrade", "0019")
    registered = inventory.get_node(enrolled.node).properties
    inventory.update_node(enrolled.node, "pc1", {**registered, **STORED_BY_AN_OLD_AGENT})
    # An operator's node may carry them: it is not an agent's.
    operator_node = "urn:publicid:IDN+lab+node+omf1"
    inventory.add_node(NodeSpec(operator_node, "omf1", properties={"cmc": "10.0.0.201", "uuid": "u-omf1"}))

    with caplog.at_level(logging.WARNING, logger="sfa_omf.calendar"):
        _migrate(database, "upgrade", "0020")
    assert inventory.get_node(enrolled.node).properties == {
        "cpu": "4",
        "local_address": "10.1.0.1",
        "lan_group": "lan-a",
    }
    assert inventory.get_node(operator_node).properties == {"cmc": "10.0.0.201", "uuid": "u-omf1"}
    assert "from 1 agent node(s): urn:publicid:IDN+lab+node+pc1" in caplog.text, caplog.text

    # The downgrade changes nothing (the values are not the aggregate's to restore); the upgrade again neither.
    _migrate(database, "downgrade", "0019")
    _migrate(database, "upgrade", "head")
    assert inventory.get_node(enrolled.node).properties == {
        "cpu": "4",
        "local_address": "10.1.0.1",
        "lan_group": "lan-a",
    }

    # Afterwards the operator records the node's CMC: the sweeps of lost nodes keep it, and so does the agent's
    # next registration (a new token for the same key).
    inventory.update_node(enrolled.node, "pc1", {**inventory.get_node(enrolled.node).properties, "cmc": "10.0.0.42"})
    service = AgentService(
        lab.agents, LocalAuthority.load(str(lab.directory), "lab"), lambda _slice: [], AgentSettings()
    )
    assert service.sweep_lost() == []
    assert service.sweep_lost() == []
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "pc1"), "pc1", "10.1.0.1", "lan-a", {"cpu": "4"})
    node = inventory.get_node(enrolled.node)
    assert node.properties == {"cpu": "4", "local_address": "10.1.0.1", "lan_group": "lan-a", "cmc": "10.0.0.42"}
    assert node.state == "usable"
