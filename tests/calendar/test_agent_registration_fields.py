"""Agents.register checks what it writes into the node's row as every node writer does (inventory.check_node_fields),
whatever checked the enrolment before it: a newline in a host name became one in the node's name and URN, and every
ListResources failed. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from sfa_omf.calendar.agents import Agents, Enrolment
from sfa_omf.calendar.database import Database
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import node_urn


@pytest.mark.parametrize(
    ("hostname", "properties", "message"),
    [
        ("a1\n", {}, "component_id"),
        ("a1", {"room": "b\x07"}, "control character U+0007"),
        ("a1", {"load": float("nan")}, "give a finite number"),
    ],
)
def test_register_refuses_what_a_node_row_cannot_hold_and_writes_nothing(
    database: Database, hostname: str, properties: dict[str, object], message: str
) -> None:
    agents = Agents(database)
    token, _ = agents.create_token("default", 600)
    enrolment = Enrolment(token, hostname, node_urn(hostname), "00" * 32, properties, "10.0.0.1")
    with pytest.raises(GeniError) as refused:
        agents.register(enrolment, lambda _urn: ("", ""))
    assert refused.value.reason == Reason.BAD_ARGS and message in refused.value.message
    assert agents.list_agents() == []
    # The token was not spent: a good enrolment with it goes through.
    agents.register(Enrolment(token, "a1", node_urn("a1"), "00" * 32), lambda _urn: ("", ""))
    assert [agent.hostname for agent in agents.list_agents()] == ["a1"]
