"""A registration whose name the DNS server cannot take (a real bind9, stopped) answers 503 and leaves nothing
behind: no node, no agent, the token still unused, the name in no zone file; once named runs again the agent's retry
with the same token succeeds and the name resolves. Needs bind9 (scripts/test.sh installs it)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from sfa_omf.agents.node import AgentCallError, enrol
from tests.agents.conftest import Lab
from tests.agents.named import Named
from tests.agents.test_api import counts

ZONE = "nodes.lab"


def test_a_registration_the_dns_server_cannot_take_leaves_nothing_and_its_retry_works(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("named") is None or shutil.which("dig") is None:
        pytest.fail("bind9 is not installed: scripts/test.sh installs it (apt-get install bind9 bind9-dnsutils)")
    (tmp_path / "named").mkdir()
    dns_dir = lab.directory / "dns"
    named = Named(tmp_path / "named", dns_dir, ZONE)
    try:
        lab.settings = replace(lab.settings, agent_dns_zone=ZONE, agent_dns_reload=named.reload_command)
        lab.restart()
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a0"), "pc0", "192.0.2.1")
        assert named.resolve(["pc0"]) == ["192.0.2.1"]

        named.stop()
        token = lab.invite()
        with pytest.raises(AgentCallError) as refused:
            enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1", "192.0.2.2")
        assert refused.value.status == 503, refused.value
        assert "did not reload" in refused.value.message
        assert counts(lab) == (1, 1)  # pc0 alone
        assert [agent.hostname for agent in lab.agents.list_agents()] == ["pc0"]
        for zone_file in ("local.zone", "vpn.zone"):  # rewritten without it
            text = (dns_dir / zone_file).read_text()
            assert "pc0 IN A" in text and "pc1" not in text

        named.start()
        assert named.resolve(["pc0"]) == ["192.0.2.1"] and named.resolve(["pc1"]) == [""]  # the zone without pc1
        enrolled = enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1", "192.0.2.2")  # the same token
        assert lab.aggregate.inventory.get_node(enrolled.node).state == "usable"
        assert counts(lab) == (2, 2)
        assert named.resolve(["pc0", "pc1"]) == ["192.0.2.1", "192.0.2.2"]
    finally:
        named.stop()
