"""What a registration may put in the nodes' zone, with a real bind9: an IPv6 local address is an AAAA record (an A
record of it stops the zone loading for every node), LAN groups that differ only in punctuation have views of their
own (a shared view fails the reload for good), and the host name ``ns`` (the server's own) is refused. Needs bind9
(scripts/test.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sfa_omf.agents.node import AgentCallError, enrol
from tests.agents.conftest import Lab
from tests.agents.named import Named
from tests.agents.test_api import counts

ZONE = "nodes.lab"


@pytest.fixture
def named(lab: Lab, tmp_path: Path) -> Iterator[Named]:
    """named serving the lab's zone, and the lab's aggregate reloading it with every registration."""
    if shutil.which("named") is None or shutil.which("dig") is None:
        pytest.fail("bind9 is not installed: scripts/test.sh installs it (apt-get install bind9 bind9-dnsutils)")
    (tmp_path / "named").mkdir()
    server = Named(tmp_path / "named", lab.directory / "dns", ZONE)
    try:
        lab.settings = replace(lab.settings, agent_dns_zone=ZONE, agent_dns_reload=server.reload_command)
        lab.restart()
        yield server
    finally:
        server.stop()


def _zone_loads(lab: Lab, zone_file: str) -> None:
    checked = subprocess.run(
        ["named-checkzone", ZONE, str(lab.directory / "dns" / zone_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout


def test_an_ipv6_local_address_is_an_aaaa_record_and_the_zone_still_loads(
    lab: Lab, named: Named, tmp_path: Path
) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a6"), "pc6", "2001:db8::5")
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1", "192.0.2.1")
    _zone_loads(lab, "local.zone")
    assert named.resolve(["pc1"]) == ["192.0.2.1"]
    assert named.resolve(["pc6"], "AAAA") == ["2001:db8::5"]
    assert named.resolve(["pc6"]) == [""]  # no A record of it


def test_lan_groups_differing_only_in_punctuation_have_views_of_their_own(
    lab: Lab, named: Named, tmp_path: Path
) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1", "192.0.2.1", "lab.a")
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a2"), "pc2", "192.0.2.2", "lab_a")
    views = (lab.directory / "dns" / "views.conf").read_text()
    assert 'view "lan-lab.a"' in views and 'view "lan-lab_a"' in views
    for zone_file in ("lan-lab.a.zone", "lan-lab_a.zone", "local.zone", "vpn.zone"):
        _zone_loads(lab, zone_file)
    assert named.resolve(["pc1", "pc2"]) == ["192.0.2.1", "192.0.2.2"]
    # A third node of a group already there joins its view; the server reloads as before.
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a3"), "pc3", "192.0.2.3", "lab.a")
    assert named.resolve(["pc3"]) == ["192.0.2.3"]


def test_the_name_of_the_dns_server_is_refused(lab: Lab, named: Named, tmp_path: Path) -> None:
    token = lab.invite()
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "ns", "192.0.2.9")
    assert refused.value.status == 400 and "DNS server's own name" in refused.value.message, refused.value
    assert counts(lab) == (0, 0)
    enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1", "192.0.2.1")  # the token was not spent
    assert named.resolve(["ns", "pc1"]) == ["10.200.0.1", "192.0.2.1"]
