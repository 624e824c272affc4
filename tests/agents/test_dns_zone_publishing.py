"""When a node's DNS name counts as published (agents/dns.py, agents/service.py), with a real bind9 named on
127.0.0.1 reloaded by rndc: a zone named would refuse is never put in place (``rndc reload`` exits 0 all the same),
a name too long for DNS is refused at registration, a serial file cut short does not stop registrations, two
registrations' DNS steps fit in SQLite's busy timeout, zone files are written at start and by ``node
dns-config`` (DNS turned on after nodes enrolled), and each host of a cluster follows the calendar's names. Needs
bind9 (scripts/test.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.agents.dns import KILLED_WAIT_S, RELOAD_TIMEOUT_S, DnsZones, NodeName
from sfa_omf.agents.node import AgentCallError, enrol
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import SQLITE_BUSY_TIMEOUT_MS
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from tests.agents.conftest import Lab
from tests.agents.named import Named
from tests.agents.test_vpn_cluster import _copy_host
from tests.postgres import empty_postgres

ZONE = "nodes.lab"
# A valid zone of 195 characters: a host name of 58 or more makes a full name over DNS's 253.
LONG_ZONE = ".".join(["a" * 63] * 3) + ".lab"
# A bound for failing only: the heartbeats' flush (every AGENT_FLUSH_S, 5 s) rewrites a zone behind the calendar.
WAIT_S = 60


@pytest.fixture(autouse=True)
def _bind9() -> None:
    if shutil.which("named") is None or shutil.which("dig") is None or shutil.which("named-checkzone") is None:
        pytest.fail("bind9 is not installed: scripts/test.sh installs it (apt-get install bind9 bind9-dnsutils)")


def _named(tmp_path: Path, dns_dir: Path, zone: str = ZONE, name: str = "named") -> Named:
    (tmp_path / name).mkdir()
    return Named(tmp_path / name, dns_dir, zone)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        time.sleep(0.2)


def test_a_zone_named_would_refuse_is_not_put_in_place_and_named_keeps_serving(tmp_path: Path) -> None:
    """Before: the zone with a full name over 255 octets was written, `rndc reload` exited 0 and named kept serving
    the previous zone: the caller took the names as published, and no later name was served either."""
    dns_dir = tmp_path / "dns"
    named = _named(tmp_path, dns_dir, LONG_ZONE)
    try:
        zones = DnsZones(str(dns_dir), LONG_ZONE, named.reload_command.split())
        first = NodeName("ok1", 1, "192.168.1.10")
        zones.publish([first])
        assert named.resolve(["ok1"]) == ["192.168.1.10"]
        before = {path.name: path.read_text() for path in dns_dir.iterdir() if path.name != "lock"}

        with pytest.raises(GeniError) as refused:  # a name an older version let into the calendar
            zones.publish([first, NodeName("p" * 63, 2, "192.168.1.11")])
        assert refused.value.reason is Reason.UNAVAILABLE
        assert "would refuse the zone" in str(refused.value) and "left as they were" in str(refused.value)
        assert {path.name: path.read_text() for path in dns_dir.iterdir() if path.name != "lock"} == before

        second = NodeName("ok2", 3, "192.168.1.12")  # the next rewrite is served
        zones.publish([first, second])
        assert named.resolve(["ok1", "ok2"]) == ["192.168.1.10", "192.168.1.12"]
    finally:
        named.stop()


def test_a_host_name_too_long_for_the_zone_is_refused_at_registration(lab: Lab, tmp_path: Path) -> None:
    """Before: the registration of a 63-character name in a 195-character zone committed (200) with no name."""
    named = _named(tmp_path, lab.directory / "dns", LONG_ZONE)
    try:
        lab.settings = replace(lab.settings, agent_dns_zone=LONG_ZONE, agent_dns_reload=named.reload_command)
        lab.restart()
        with pytest.raises(AgentCallError) as refused:
            enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "p" * 63, "192.0.2.1", retry_for_s=0)
        assert refused.value.status == 400, refused.value
        assert "at most 253" in refused.value.message and "at most 57 characters" in refused.value.message
        assert lab.agents.list_agents() == []

        longest = "q" * 57  # the longest that fits is named and served
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a2"), longest, "192.0.2.2")
        assert named.resolve([longest]) == ["192.0.2.2"]
    finally:
        named.stop()


def test_config_check_refuses_a_zone_that_is_not_a_dns_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: dns_zone = nodes_lab.example passed, and named refused the zone at every registration."""
    init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = tmp_path / "lab" / "sfa-omf.conf"
    config.write_text(config.read_text() + "\n[sfa_agents]\ndns_zone = nodes_lab.example\n")
    assert main(["config", "check", str(config)]) == 1
    out = capsys.readouterr().out
    assert "[sfa_agents] dns_zone 'nodes_lab.example' is not a DNS host name: its label 'nodes_lab'" in out


def test_a_serial_file_cut_short_does_not_stop_registrations(lab: Lab, tmp_path: Path) -> None:
    """Before: int('') in every registration, answered 500 without a word on the cause."""
    named = _named(tmp_path, lab.directory / "dns")
    try:
        lab.settings = replace(lab.settings, agent_dns_zone=ZONE, agent_dns_reload=named.reload_command)
        lab.restart()
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7", "192.0.2.7")
        serial_path = lab.directory / "dns" / "serial"
        served = int(serial_path.read_text())
        serial_path.write_text("")  # what a power cut after the rename of an unsynced file can leave
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a8"), "pc8", "192.0.2.8")
        assert named.resolve(["pc7", "pc8"]) == ["192.0.2.7", "192.0.2.8"]
        assert int(serial_path.read_text()) > served
    finally:
        named.stop()


def test_two_registrations_dns_steps_fit_in_sqlites_busy_timeout() -> None:
    """A write waiting for SQLite's lock behind a hanging DNS server waits for the registration holding it and, at
    worst, the one that takes it next: both DNS steps (each bounded by RELOAD_TIMEOUT_S, plus KILLED_WAIT_S for a
    command that will not die) must end within SQLite's busy timeout. Before: one step alone (30 s) was the whole
    busy timeout."""
    assert 2 * (RELOAD_TIMEOUT_S + KILLED_WAIT_S) <= SQLITE_BUSY_TIMEOUT_MS / 1000


def test_dns_turned_on_after_nodes_enrolled_names_them(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: no zone file until the next registration: `node dns-config`'s include named a missing file (named
    would not start) and serve published nothing."""
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7", "192.0.2.7")
    dns_dir = lab.directory / "dns"
    assert not dns_dir.exists()
    config = Path(lab.settings_path)
    config.write_text(config.read_text() + f"\n[sfa_agents]\ndns_zone = {ZONE}\n")
    assert main(["node", "dns-config", "--config", lab.settings_path]) == 0
    include = capsys.readouterr().out
    named_conf = tmp_path / "named.conf"
    named_conf.write_text(f'options {{ directory "{tmp_path}"; }};\n{include}')
    checked = subprocess.run(["named-checkconf", "-z", str(named_conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "pc7 IN A 192.0.2.7" in (dns_dir / "local.zone").read_text()

    shutil.rmtree(dns_dir)  # serve writes them too, and has the running named reload them
    named = _named(tmp_path, dns_dir)
    try:
        assert named.resolve(["pc7"]) == [""]  # named started on an empty zone
        lab.settings = replace(lab.settings, agent_dns_zone=ZONE, agent_dns_reload=named.reload_command)
        lab.restart()
        assert "pc7 IN A 192.0.2.7" in (dns_dir / "local.zone").read_text()
        _until(lambda: named.resolve(["pc7"]) == ["192.0.2.7"], "pc7 served after the restart")
    finally:
        named.stop()


def _serve(directory: Path, url: str, reload: str, reactor: Any) -> tuple[Any, Any]:
    config = directory / "sfa-omf.conf"
    lines = config.read_text().splitlines()
    config.write_text(
        "".join(f"database_url = {url}\n" if line.startswith("database_url =") else f"{line}\n" for line in lines)
        + f"\n[sfa_agents]\ndns_zone = {ZONE}\ndns_reload = {reload}\n"
    )
    settings = read_config(str(config))
    aggregate = build_aggregate(settings)
    return aggregate, blockingCallFromThread(reactor, start_aggregate, settings, aggregate, 0)


def test_each_host_of_a_cluster_follows_the_names_registered_through_another(
    running_reactor: Any, tmp_path: Path
) -> None:
    """Two serving hosts on one PostgreSQL, each with its named. Before: a host's zone changed only with the
    registrations made through it."""
    url = empty_postgres()
    init_directory(str(tmp_path / "a"), "lab", ("ann",))
    root = str(tmp_path / "a" / "authority" / "lab.gid")
    b_dir = _copy_host(tmp_path, "a", "b")
    named_a = _named(tmp_path, tmp_path / "a" / "dns", name="named-a")
    named_b = _named(tmp_path, b_dir / "dns", name="named-b")
    hosts = []
    try:
        hosts.append(_serve(tmp_path / "a", url, named_a.reload_command, running_reactor))
        hosts.append(_serve(b_dir, url, named_b.reload_command, running_reactor))
        (a, server_a), (_, server_b) = hosts
        agents = Agents(a.database, a.policy)
        enrol(
            f"https://127.0.0.1:{server_a.port_number}/",
            agents.create_token("default", 3600)[0],
            root,
            str(tmp_path / "n1"),
            "pc1",
            "192.168.1.10",
        )
        assert named_a.resolve(["pc1"]) == ["192.168.1.10"]
        _until(lambda: named_b.resolve(["pc1"]) == ["192.168.1.10"], "pc1 served by host B")

        enrol(
            f"https://127.0.0.1:{server_b.port_number}/",
            agents.create_token("default", 3600)[0],
            root,
            str(tmp_path / "n2"),
            "pc2",
            "192.168.1.20",
        )
        _until(lambda: named_a.resolve(["pc2"]) == ["192.168.1.20"], "pc2 served by host A")
    finally:
        for aggregate, server in hosts:
            blockingCallFromThread(running_reactor, server.stop)
            aggregate.database.dispose()
        named_a.stop()
        named_b.stop()
