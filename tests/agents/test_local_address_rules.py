"""Which local address a node may register with: one that names this node on its LAN, and no other node's.

The address is what DNS publishes for the node (to the other nodes of its LAN group, and to everyone outside the
VPN) and what OAR is told (local_ip_address). Real TLS on 127.0.0.1, SQLite and the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.agents.node import AgentCallError, enrol
from tests.agents.conftest import Lab

REFUSED = [
    ("127.0.0.1", "is a loopback address"),
    ("127.3.0.7", "is a loopback address"),
    ("::1", "is a loopback address"),
    ("::ffff:127.0.0.1", "is a loopback address"),  # an IPv4-mapped spelling of the same
    ("0.0.0.0", "means 'this host'"),
    ("0.1.2.3", "means 'this host'"),
    ("::", "means 'this host'"),
    ("255.255.255.255", "is the broadcast address"),
    ("224.0.0.1", "is a multicast address"),
    ("ff02::1", "is a multicast address"),
    ("169.254.7.1", "is a link-local address"),
    ("fe80::1", "is a link-local address"),
    ("240.0.0.1", "is in a reserved range"),
    ("10.200.0.1", "is in the nodes' VPN network 10.200.0.0/16"),
    ("10.200.3.4", "is in the nodes' VPN network 10.200.0.0/16"),
]


def test_addresses_that_name_no_one_node_are_refused_and_nothing_is_written(lab: Lab, tmp_path: Path) -> None:
    token = lab.invite()
    for number, (address, why) in enumerate(REFUSED):
        with pytest.raises(AgentCallError) as refused:
            enrol(lab.url, token, lab.root, str(tmp_path / f"a{number}"), "pc1", address, "lab-a")
        said = refused.value
        assert said.status == 400 and why in said.message, (address, said)
        assert "give the node's own address on its LAN" in said.message, said
        assert lab.agents.list_agents() == []
    # Nothing was written, the token not spent: the same token enrols the node at a LAN address.
    enrolled = enrol(lab.url, token, lab.root, str(tmp_path / "good"), "pc1", "10.201.0.7", "lab-a")
    (agent,) = lab.agents.list_agents()
    assert (agent.node, agent.local_address) == (enrolled.node, "10.201.0.7")


def test_an_address_another_node_of_the_lan_group_holds_is_refused(lab: Lab, tmp_path: Path) -> None:
    first = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1", "192.168.1.10", "lab-a")
    token = lab.invite()
    for number, spelling in enumerate(["192.168.1.10", "::ffff:192.168.1.10"]):
        with pytest.raises(AgentCallError) as refused:
            enrol(lab.url, token, lab.root, str(tmp_path / f"b{number}"), "pc2", spelling, "lab-a")
        said = refused.value
        assert (said.status, said.reason) == (409, "already_exists"), said
        assert "192.168.1.10 is node pc1's in LAN group 'lab-a'" in said.message, said
        assert "sfa-omf node remove pc1" in said.message, said
        assert {agent.hostname: agent.local_address for agent in lab.agents.list_agents()} == {"pc1": "192.168.1.10"}
    # Its own address is the node's to register with again (here re-bound to a new key by a new token made for it).
    for_pc1 = lab.invite(hostname="pc1")
    again = enrol(lab.url, for_pc1, lab.root, str(tmp_path / "a1-new"), "pc1", "192.168.1.10", "lab-a")
    assert again.node == first.node
    # Another LAN group is another LAN, where the same private address is another host; and the token that was
    # refused above was not spent.
    enrol(lab.url, token, lab.root, str(tmp_path / "b-other-lan"), "pc2", "192.168.1.10", "lab-b")
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "c"), "pc3", "192.168.1.11", "lab-a")
    addresses = {agent.hostname: (agent.local_address, agent.lan_group) for agent in lab.agents.list_agents()}
    assert addresses == {
        "pc1": ("192.168.1.10", "lab-a"),
        "pc2": ("192.168.1.10", "lab-b"),
        "pc3": ("192.168.1.11", "lab-a"),
    }
