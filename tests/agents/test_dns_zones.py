"""The DNS zone writer without a DNS server: simultaneous callers share rewrites (group commit), the serial grows,
and the files hold every node."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sfa_omf.agents.dns import DnsZones, NodeName
from sfa_omf.agents.service import AgentService, AgentSettings
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.registry.authority import LocalAuthority


def test_simultaneous_callers_share_one_rewrite(tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    gate = tmp_path / "go"
    # The "reload" of the first rewrite waits until the test opens the gate, so every other caller queues meanwhile.
    reload = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; echo reload >> {tmp_path / 'reloads'}"]
    service = AgentService(
        Agents(database),
        LocalAuthority.create(str(tmp_path / "auth"), "lab"),
        lambda _slice: [],
        AgentSettings(),
        dns=DnsZones(str(tmp_path / "dns"), "nodes.lab", reload),
    )
    callers = [threading.Thread(target=service.publish_names) for _ in range(10)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 60
    while service._dns_requested < 10:  # every caller has its ticket (a bound for failing only)
        assert time.monotonic() < deadline, "the callers did not all start"
        time.sleep(0.01)
    gate.touch()
    for caller in callers:
        caller.join()
    # The first rewrite (which may already cover callers who took their ticket before it read the calendar), then at
    # most one for all who waited: not ten.
    assert (tmp_path / "reloads").read_text().splitlines() in (["reload"], ["reload", "reload"])
    database.dispose()


def test_the_serial_grows_and_every_view_holds_every_node(tmp_path: Path) -> None:
    zones = DnsZones(str(tmp_path / "dns"), "nodes.lab", [])
    nodes = [NodeName(f"n{i}", i + 1, f"192.168.0.{i + 10}", "lan-" + "ab"[i % 2]) for i in range(6)]
    first = zones.publish(nodes[:3])
    second = zones.publish(nodes)
    assert second > first
    vpn = (tmp_path / "dns" / "vpn.zone").read_text()
    local = (tmp_path / "dns" / "local.zone").read_text()
    lan_a = (tmp_path / "dns" / "lan-lan-a.zone").read_text()
    assert f"( {second} " in vpn and f"( {second} " in local
    for i, node in enumerate(nodes):
        vpn_address = f"10.200.0.{i + 2}"
        assert f"n{i} IN A {vpn_address}" in vpn
        assert f"n{i} IN A 192.168.0.{i + 10}" in local
        assert f"n{i} IN A {'192.168.0.' + str(i + 10) if node.lan_group == 'lan-a' else vpn_address}" in lan_a
    views = (tmp_path / "dns" / "views.conf").read_text()
    assert views.index('view "lan-lan-a"') < views.index('view "vpn"') < views.index('view "local"')
    assert "10.200.0.2; 10.200.0.4; 10.200.0.6;" in views
