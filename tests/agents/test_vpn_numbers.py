"""Each agent has a VPN number of its own (its node's VPN address, 10.200.0.0 + 1 + number), given at registration
as the lowest one no agent holds and free again once its node is removed; it used to be the node's row id, which is
never given back (PostgreSQL spends one on every failed insert; ``node add`` and ``node import`` spend theirs), so
once ids passed 65533 every registration was refused however few nodes there were. Migration 0027 gives the agents
there were their node id as number: the same addresses. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import JSON, bindparam, select, text
from sqlalchemy.exc import IntegrityError

from sfa_omf.agents.node import enrol, request_vpn
from sfa_omf.agents.vpn import VpnCa, node_address
from sfa_omf.calendar import agents as agents_module
from sfa_omf.calendar.agents import VPN_NUMBER_QUARANTINE_S, Agents, Enrolment
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Node
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.agent_http import STATUS
from sfa_omf.times import utcnow
from sfa_omf.trust.pki import new_private_key
from tests.agents.conftest import Lab
from tests.calendar.conftest import fresh_database, node_urn
from tests.postgres import empty_postgres
from tests.registry.test_removed_logins import migrate_database

PAST_THE_VPN = 100_000  # a node id the VPN's 65533 addresses do not reach


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = fresh_database(request.param, tmp_path)
    yield made
    made.dispose()


def register(agents: Agents, hostname: str) -> int:
    """Enrol an agent's node ``hostname`` with a token of its own; its VPN number."""
    token, _ = agents.create_token("default", 600)
    record, _ = agents.register(Enrolment(token, hostname, node_urn(hostname), "00" * 32), lambda _urn: ("", ""))
    return record.number


def push_node_ids_past_the_vpn(database: Database) -> None:
    """The next node id is past PAST_THE_VPN, as after many failed registrations and imports: an operator's node
    holds the highest id (SQLite gives max(id) + 1) and PostgreSQL's sequence is moved on."""
    Inventory(database).add_node(NodeSpec(node_urn("filler"), "filler"))
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE node SET id = :id"), {"id": PAST_THE_VPN})
        if not database.is_sqlite:
            connection.execute(text("SELECT setval('node_id_seq', :id)"), {"id": PAST_THE_VPN})


def after_the_quarantine() -> datetime:
    """A registrations' clock past the quarantine of a number given back now (tests/agents/test_vpn_number_quarantine.py
    tests the quarantine itself)."""
    return utcnow() + timedelta(seconds=VPN_NUMBER_QUARANTINE_S + 1)


def test_a_removed_node_s_number_is_given_again_and_names_carry_the_numbers(database: Database) -> None:
    agents = Agents(database)
    assert [register(agents, name) for name in ("a1", "a2", "a3")] == [1, 2, 3]
    Inventory(database).remove_node(node_urn("a2"))
    agents = Agents(database, clock=after_the_quarantine)
    assert register(agents, "a4") == 2  # the lowest free one, not the new node's id (4)
    assert register(agents, "a5") == 4
    assert agents.node_number(node_urn("a4")) == 2
    assert [(row[0], row[1]) for row in agents.names()] == [("a1", 1), ("a3", 3), ("a4", 2), ("a5", 4)]
    assert [(row[0], row[1]) for row in agents.presence()] == [("a1", 1), ("a3", 3), ("a4", 2), ("a5", 4)]
    assert {agent.hostname: agent.number for agent in agents.list_agents()}["a4"] == 2
    # Registering again (the same node, a new token) keeps the number.
    assert register(agents, "a4") == 2


def test_nodes_with_ids_past_the_vpn_get_a_number_and_an_address(database: Database, tmp_path: Path) -> None:
    push_node_ids_past_the_vpn(database)
    agents = Agents(database)
    assert register(agents, "far") == 1
    with database.read() as session:
        assert session.scalar(select(Node.id).where(Node.component_id == node_urn("far"))) == PAST_THE_VPN + 1
    ca = VpnCa(str(tmp_path / "vpn"), "lab")  # one host, no records: what the server runs on SQLite
    _, address = ca.issue("far", agents.node_number(node_urn("far")), new_private_key().public_key(), lambda: True)
    assert address == "10.200.0.2" == str(node_address(1))
    assert (tmp_path / "vpn" / "ccd" / "far").read_text() == "ifconfig-push 10.200.0.2 255.255.0.0\n"


def test_when_every_number_is_held_registration_is_refused_saying_what_to_do(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VPN of three numbers (the query is the same for 65533): the fourth agent is refused with 409, which the
    agent does not retry, and nothing is written; once a node is removed, it enrols with the same token."""
    monkeypatch.setattr(agents_module, "VPN_NUMBERS", 3)
    agents = Agents(database)
    assert [register(agents, name) for name in ("a1", "a2", "a3")] == [1, 2, 3]
    token, _ = agents.create_token("default", 600)
    enrolment = Enrolment(token, "a4", node_urn("a4"), "00" * 32)
    with pytest.raises(GeniError) as refused:
        agents.register(enrolment, lambda _urn: ("", ""))
    assert refused.value.reason == Reason.ALREADY_EXISTS and STATUS[refused.value.reason] == 409
    assert "no free address" in refused.value.message and "sfa-omf node remove HOSTNAME" in refused.value.message
    assert [agent.hostname for agent in agents.list_agents()] == ["a1", "a2", "a3"]
    assert node_urn("a4") not in [node.component_id for node in Inventory(database).list_nodes()]

    Inventory(database).remove_node(node_urn("a1"))
    record, _ = Agents(database, clock=after_the_quarantine).register(enrolment, lambda _urn: ("", ""))
    assert record.number == 1


def test_concurrent_registrations_get_distinct_numbers_on_postgresql(tmp_path: Path) -> None:
    """Registrations racing for the lowest free numbers (one freed by a removal among them) each get their own:
    they take the number one at a time until their commit."""
    database = fresh_database("postgresql", tmp_path)
    try:
        agents = Agents(database)
        assert [register(agents, name) for name in ("a1", "a2", "a3")] == [1, 2, 3]
        Inventory(database).remove_node(node_urn("a2"))
        agents = Agents(database, clock=after_the_quarantine)
        racers = 8
        tokens = [agents.create_token("default", 600)[0] for _ in range(racers)]
        start = threading.Barrier(racers)
        numbers: list[int] = []
        errors: list[BaseException] = []

        def race(index: int) -> None:
            hostname = f"c{index}"
            start.wait()
            try:
                record, _ = agents.register(
                    Enrolment(tokens[index], hostname, node_urn(hostname), "00" * 32), lambda _urn: ("", "")
                )
                numbers.append(record.number)
            except BaseException as exc:  # (reported by the assertion below)
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(index,)) for index in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(numbers) == [2, *range(4, 4 + racers - 1)]
    finally:
        database.dispose()


def insert_node_and_agent(connection: Any, node_id: int, hostname: str) -> None:
    """An agent's node and its agent row in SQL, as an sfa-omf at migration 0026 wrote them."""
    pool_id = connection.execute(text("SELECT id FROM pool WHERE name = 'default'")).scalar()
    if pool_id is None:
        connection.execute(text("INSERT INTO pool (name, federated, description) VALUES ('default', true, '')"))
        pool_id = connection.execute(text("SELECT id FROM pool WHERE name = 'default'")).scalar()
    connection.execute(
        text(
            "INSERT INTO node (id, component_id, component_name, hardware_type, exclusive, properties, disk_images, "
            "grain_s, state, pool_id) VALUES (:id, :urn, :name, 'agent', true, :properties, :images, 60, 'usable', "
            ":pool)"
        ).bindparams(bindparam("properties", type_=JSON), bindparam("images", type_=JSON)),
        {"id": node_id, "urn": node_urn(hostname), "name": hostname, "properties": {}, "images": [], "pool": pool_id},
    )
    connection.execute(
        text(
            "INSERT INTO agent (node_id, hostname, key_sha256, cert_sha256, certificate, local_address, lan_group, "
            "registered_s, last_seen_s, lost) VALUES (:id, :name, :key, :cert, '', '', '', 0, 0, false)"
        ),
        {"id": node_id, "name": hostname, "key": "00" * 32, "cert": f"{node_id:064x}"},
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_db_upgrade_from_0026_keeps_the_agents_addresses(kind: str, tmp_path: Path) -> None:
    """`sfa-omf db upgrade` from 0026 with agents there: each keeps its address (number = node id, the host part
    node id + 1 it had); one whose node id was past the VPN gets the lowest free number; the next registration the
    lowest one still free."""
    init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = tmp_path / "lab" / "sfa-omf.conf"
    if kind == "postgresql":
        url = empty_postgres()
        lines = config.read_text().splitlines()
        config.write_text(
            "".join(f"database_url = {url}\n" if line.startswith("database_url =") else f"{line}\n" for line in lines)
        )
    database = Database(read_config(str(config)).calendar_url)
    try:
        database.upgrade()
        migrate_database(database, "downgrade", "0026")
        with database.engine.begin() as connection:
            for node_id, hostname in ((1, "a1"), (3, "a3"), (65533, "last"), (70_000, "far")):
                insert_node_and_agent(connection, node_id, hostname)
            if kind == "postgresql":
                connection.execute(text("SELECT setval('node_id_seq', 70000)"))
        old_addresses = {"a1": "10.200.0.2", "a3": "10.200.0.4", "last": "10.200.255.254"}  # host part: node id + 1

        assert main(["db", "upgrade", "--config", str(config)]) == 0

        agents = Agents(database)
        numbers = {hostname: number for hostname, number, _, _ in agents.names()}
        assert numbers == {"a1": 1, "a3": 3, "last": 65533, "far": 2}
        assert {hostname: str(node_address(numbers[hostname])) for hostname in old_addresses} == old_addresses
        assert register(agents, "new") == 4
        with pytest.raises(IntegrityError), database.engine.begin() as connection:  # one holder per number
            connection.execute(text("UPDATE agent SET vpn_number = 1 WHERE hostname = 'a3'"))

        # Down to 0026 and up again: the same numbers.
        migrate_database(database, "downgrade", "0026")
        assert main(["db", "upgrade", "--config", str(config)]) == 0
        assert {hostname: number for hostname, number, _, _ in agents.names()} == {**numbers, "new": 4}
    finally:
        database.dispose()


def test_a_registered_agent_s_vpn_certificate_carries_its_number_s_address(lab: Lab, tmp_path: Path) -> None:
    """End to end through the agent API (the server's VPN: file-only on SQLite, the cluster's records on
    PostgreSQL): node ids past the VPN, the agent's certificate and ccd/ entry are at its number's address; a node
    enrolled right after a removal does not get the removed one's number and address (its tunnel may still be up:
    test_vpn_number_quarantine.py), but the next free one."""
    lab.settings = replace(lab.settings, agent_vpn_remote="127.0.0.1")
    lab.restart()
    push_node_ids_past_the_vpn(lab.aggregate.database)
    vpn = lab.directory / "vpn"
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1", "192.168.1.10")
    pc2 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a2"), "pc2", "192.168.1.11")
    _, address = request_vpn(str(tmp_path / "a2"))
    assert address == "10.200.0.3"
    assert (vpn / "ccd" / "pc2").read_text() == "ifconfig-push 10.200.0.3 255.255.0.0\n"
    issued = x509.load_pem_x509_certificate((vpn / "issued" / "pc2.pem").read_bytes())
    assert issued.subject.rfc4514_string() == "CN=pc2"

    assert main(["node", "remove", pc2.node, "--config", lab.settings_path]) == 0
    assert not (vpn / "ccd" / "pc2").exists()
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a3"), "pc3", "192.168.1.12")
    _, address = request_vpn(str(tmp_path / "a3"))
    assert address == "10.200.0.4"
    assert (vpn / "ccd" / "pc3").read_text() == "ifconfig-push 10.200.0.4 255.255.0.0\n"
