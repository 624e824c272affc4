"""With the OAR backend, an agent's node is an OAR resource, against the real shared OAR 2.5.9 (scripts/oar.sh):
registering creates it (network_address = host name, vpn_number, local_ip_address) and OAR then books it; a lost
node is Dead in OAR, which refuses to book it, and is Alive and bookable again once its agent is heard; a
registration that OAR or the DNS server cannot take writes nothing (in the calendar or in OAR) and its retry works.

The aggregate's server is the agent tests' one (embedded backend: the OAR backend's reconciler must not run against
the shared OAR's other jobs), told to use the real OAR for agents' nodes. Each test names its nodes uniquely and
removes their resources afterwards; it never assumes how many resources OAR has."""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.agents.node import AgentCallError, enrol
from sfa_omf.agents.service import AgentService, AgentSettings
from sfa_omf.calendar.agents import Agents
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.server import app
from sfa_omf.testbed.oar.agent_nodes import OarAgentNodes
from sfa_omf.testbed.oar.client import OarClient, OarError, OarResource
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import environment, sfa_omf
from tests.agents.test_api import counts
from tests.ports import free_port
from tests.testbed.oar.conftest import OarJobs, wait_for_job

PROPERTIES = {"local_ip_address": ["-c"], "vpn_number": []}  # oarproperty -a NAME [-c: a string]


class OarNodes:
    """The real OAR's resources for this test's agents' nodes: unique host names, removed at the end."""

    def __init__(self, client: OarClient) -> None:
        self.client = client
        self.nodes = OarAgentNodes(client)
        self.names: list[str] = []

    def name(self) -> str:
        hostname = f"ag{secrets.token_hex(5)}"
        self.names.append(hostname)
        return hostname

    def resource(self, hostname: str) -> OarResource | None:
        (found,) = [resource for resource in self.client.resources() if resource.network_address == hostname] or [None]
        return found

    def state(self, hostname: str) -> str:
        """The state of the node's one resource in OAR ("" when OAR has none)."""
        found = self.resource(hostname)
        return "" if found is None else found.state

    def remove_all(self) -> None:
        for resource in self.client.resources(full=False):
            if resource.network_address in self.names:
                self.client.delete_resource(resource.id)


def _properties_exist() -> None:
    """The properties agents' resources carry, added to OAR once (what docs/node-agents.md asks of operators)."""
    try:
        known = subprocess.run(["oarproperty", "-l"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"oarproperty (OAR's admin tool, as root) is needed to add agents' properties: {exc}")
    for name, flags in PROPERTIES.items():
        if name not in known:
            added = subprocess.run(["oarproperty", "-a", name, *flags], capture_output=True, text=True)
            # another test run may have added it meanwhile
            listed = subprocess.run(["oarproperty", "-l"], capture_output=True, text=True).stdout.split()
            assert name in listed, added.stderr


@pytest.fixture
def oar_nodes(oar_client: OarClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[OarNodes]:
    """Agents' nodes go to the real OAR (the server is restarted by each test to take it)."""
    _properties_exist()
    made = OarNodes(oar_client)
    monkeypatch.setattr(app, "_testbed_nodes", lambda _aggregate: made.nodes)
    yield made
    made.remove_all()


def _service(lab: Lab, at: datetime, nodes: OarAgentNodes) -> AgentService:
    """The agent service on the lab's calendar at another time (to let an agent be silent for the timeout)."""
    return AgentService(
        Agents(lab.aggregate.database, clock=lambda: at),
        LocalAuthority.load(str(lab.directory), "lab"),
        lambda _slice: [],
        AgentSettings(heartbeat_s=30, timeout_s=120),
        testbed_nodes=nodes,
    )


def test_a_registered_node_is_booked_by_oar_and_leaves_its_pool_when_lost(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes, oar_jobs: OarJobs, oar_start: datetime
) -> None:
    hostname = oar_nodes.name()
    lab.restart()
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), hostname, "192.168.9.4")
    resource = oar_nodes.resource(hostname)
    assert resource is not None and resource.state == "Alive"
    (agent,) = lab.agents.list_agents()
    assert resource.properties["local_ip_address"] == "192.168.9.4"
    assert resource.properties["vpn_number"] == str(agent.number)
    # OAR books the new resource.
    job_id = oar_jobs.submit(user="alice", nodes=[hostname], start=oar_start, walltime_s=3599)
    assert wait_for_job(oar_jobs.client, job_id, {"Waiting"}).state == "Waiting"
    booked = oar_jobs.client.job(job_id, with_nodes=True)
    assert booked is not None and booked.nodes == (hostname,)

    # Silent for longer than the timeout: lost in the calendar, Dead in OAR, which books it no more.
    chain = load_gid_chain_file(str(tmp_path / "a1" / "node.gid"))
    later = _service(lab, utcnow() + timedelta(seconds=300), oar_nodes.nodes)
    assert later.sweep_lost() == [enrolled.node]
    assert oar_nodes.state(hostname) == "Dead"
    with pytest.raises(OarError) as refused:
        oar_jobs.submit(user="alice", nodes=[hostname], start=oar_start + timedelta(hours=2), walltime_s=3599)
    assert "not enough resources" in refused.value.message

    # Heard again: Alive and bookable at once.
    later.heartbeat(chain)
    assert oar_nodes.state(hostname) == "Alive"
    again = oar_jobs.submit(user="alice", nodes=[hostname], start=oar_start + timedelta(hours=4), walltime_s=3599)
    assert wait_for_job(oar_jobs.client, again, {"Waiting"}).state == "Waiting"

    # A state OAR missed (set behind the aggregate's back) is put right by the next sweep.
    oar_jobs.client.set_resource_state(resource.id, "Dead")
    assert later.sweep_lost() == []
    assert oar_nodes.state(hostname) == "Alive"


def test_a_registration_oar_cannot_take_writes_nothing_and_its_retry_works(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostname = oar_nodes.name()
    # An OAR whose API nobody answers (a port nothing listens on): a real connection refused.
    down = OarAgentNodes(OarClient(f"http://127.0.0.1:{free_port()}/oarapi", timeout_s=5))
    monkeypatch.setattr(app, "_testbed_nodes", lambda _aggregate: down)
    lab.restart()
    token = lab.invite()
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, token, lab.root, str(tmp_path / "a1"), hostname, "192.168.9.5")
    assert refused.value.status == 503 and "OAR" in refused.value.message
    assert counts(lab) == (0, 0)

    monkeypatch.setattr(app, "_testbed_nodes", lambda _aggregate: oar_nodes.nodes)
    lab.restart()
    enrolled = enrol(lab.url, token, lab.root, str(tmp_path / "a1"), hostname, "192.168.9.5")  # the same token
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "usable"
    assert oar_nodes.state(hostname) == "Alive"


def test_a_resource_left_by_a_failed_registration_does_not_lock_the_agent_out(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes
) -> None:
    """A registration OAR made the resource for, then rolled back without removing it (OAR answered too late, or
    the undo failed): the resource carries the number the database did not give back. The agent's retry replaces
    it with its own instead of taking it for a stranger's."""
    hostname = oar_nodes.name()
    leftover_number = str(900_000 + secrets.randbelow(99_999))
    oar_nodes.client.add_resource({"network_address": hostname, "vpn_number": leftover_number})
    lab.restart()
    token = lab.invite()
    enrolled = enrol(lab.url, token, lab.root, str(tmp_path / "a1"), hostname, "192.168.9.11")
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "usable"
    (agent,) = lab.agents.list_agents()
    (resource,) = [item for item in oar_nodes.client.resources() if item.network_address == hostname]
    # The only one of that name is the agent's (OAR numbers max(id) + 1: the new one may reuse the leftover's id).
    assert resource.properties["vpn_number"] == str(agent.number) != leftover_number
    assert resource.state == "Alive"


def test_a_resource_oar_had_under_the_agent_s_name_is_not_taken_over(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes
) -> None:
    hostname = oar_nodes.name()
    theirs = oar_nodes.client.add_resource({"network_address": hostname})  # made in OAR by its operator
    lab.restart()
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), hostname, "192.168.9.8")
    assert refused.value.status == 502 and "enrol under another host name" in refused.value.message
    assert counts(lab) == (0, 0)
    (resource,) = [item for item in oar_nodes.client.resources() if item.network_address == hostname]
    assert (resource.id, resource.state, resource.properties["vpn_number"]) == (theirs, "Alive", "")


def test_a_registration_dns_refuses_removes_the_oar_resource_it_made(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes
) -> None:
    hostname = oar_nodes.name()
    # The DNS server's reload fails (`false`: the command's real exit status, as rndc's when named is down).
    lab.settings = replace(lab.settings, agent_dns_zone="nodes.lab", agent_dns_reload="false")
    lab.restart()
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), hostname, "192.168.9.6")
    assert refused.value.status == 503
    assert counts(lab) == (0, 0)
    assert oar_nodes.state(hostname) == ""  # the resource it had made is gone


def test_removing_an_agent_s_node_removes_its_oar_resource_only(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes, oar_url: str
) -> None:
    hostname = oar_nodes.name()
    lab.restart()
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), hostname, "192.168.9.7")
    assert oar_nodes.state(hostname) == "Alive"
    others = {(resource.id, resource.network_address) for resource in oar_nodes.client.resources(full=False)}
    removed = subprocess.run(
        sfa_omf("node", "remove", enrolled.node, "--config", lab.settings_path),
        env={**environment(), "SFA_AGGREGATE_TYPE": "oar", "SFA_OAR_API_URL": oar_url},
        capture_output=True,
        text=True,
    )
    assert removed.returncode == 0, removed.stderr
    assert f"removed its resource from OAR ({hostname})" in removed.stdout
    assert oar_nodes.state(hostname) == ""
    left = {(resource.id, resource.network_address) for resource in oar_nodes.client.resources(full=False)}
    # The nodes scripts/oar.sh made (not agents' nodes) are all still there; other tests' come and go meanwhile.
    fixed = {pair for pair in others if re.fullmatch(r"d?node\d+", pair[1])}
    assert fixed and fixed <= left


def _oar_backend(monkeypatch: pytest.MonkeyPatch, oar_url: str) -> None:
    """The commands run in this process see the OAR backend (the lab's server keeps its own)."""
    monkeypatch.setenv("SFA_AGGREGATE_TYPE", "oar")
    monkeypatch.setenv("SFA_OAR_API_URL", oar_url)


def test_a_node_removed_while_oar_fails_to_delete_its_resource_loses_its_vpn_access_and_record(
    lab: Lab,
    tmp_path: Path,
    oar_nodes: OarNodes,
    oar_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cryptography import x509

    from sfa_omf.agents.vpn import VpnCa
    from sfa_omf.cli import main
    from sfa_omf.registry.nodes import node_hrn, record_nodes
    from sfa_omf.registry.records import Records
    from sfa_omf.testbed.oar.client import OarUnavailable
    from sfa_omf.trust.pki import new_private_key

    hostname = oar_nodes.name()
    lab.restart()
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), hostname, "192.168.9.9")
    certificate, _ = VpnCa(str(lab.directory / "vpn"), "lab").issue(hostname, 1, new_private_key().public_key())
    records = Records(lab.aggregate.database)
    record_nodes(
        LocalAuthority.load(str(lab.directory), "lab"), records, [lab.aggregate.inventory.get_node(enrolled.node)]
    )
    hrn = node_hrn(enrolled.node) or ""
    assert records.get(hrn) is not None
    with monkeypatch.context() as patched:
        _oar_backend(patched, oar_url)

        # OAR goes away between taking the node out of its pool and deleting its resource (a real refusal would
        # need OAR down for one call only): injected into the real client's deletion.
        def unreachable(_client: OarClient, resource_id: int) -> None:
            raise OarUnavailable(f"connection refused while deleting resource {resource_id}")

        patched.setattr(OarClient, "delete_resource", unreachable)
        assert main(["node", "remove", enrolled.node, "--config", lab.settings_path]) == 0
    said = capsys.readouterr()
    assert f"removed {enrolled.node}" in said.out and "could not be deleted" in said.err
    assert f"revoked the VPN certificate of {hostname}" in said.out
    crl = x509.load_pem_x509_crl((lab.directory / "vpn" / "crl.pem").read_bytes())
    serial = x509.load_pem_x509_certificate(certificate.encode("ascii")).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert "removed its record from the registry of lab" in said.out and records.get(hrn) is None
    assert oar_nodes.state(hostname) == "Dead"  # out of OAR's pool: no job is given to it


def test_a_removal_the_calendar_refuses_leaves_the_oar_resource_in_its_state_before(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes, oar_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sfa_omf.calendar.booking import Bookings
    from sfa_omf.calendar.records import BookingRequest
    from sfa_omf.cli import main

    hostname = oar_nodes.name()
    lab.restart()
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), hostname, "192.168.9.10")
    resource = oar_nodes.resource(hostname)
    assert resource is not None
    oar_nodes.client.set_resource_state(resource.id, "Absent")  # the operator had it Absent
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    Bookings(lab.aggregate.database).book(
        "urn:publicid:IDN+lab+slice+s",
        start + timedelta(days=1),
        [BookingRequest(enrolled.node, start, start + timedelta(hours=1))],
    )
    _oar_backend(monkeypatch, oar_url)
    assert main(["node", "remove", enrolled.node, "--config", lab.settings_path]) != 0
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "usable"
    assert oar_nodes.state(hostname) == "Absent"


# PostgreSQL only: on SQLite one process serves the calendar, and a registration holds its write lock throughout.
@pytest.mark.parametrize("lab", ["postgresql"], indirect=True)
def test_oar_resources_are_added_one_at_a_time_across_the_aggregate_s_processes(
    lab: Lab, tmp_path: Path, oar_nodes: OarNodes
) -> None:
    """Another process of the aggregate adding a resource (here: a connection of its own to the calendar, holding
    the lock such an addition takes) keeps a registration from asking OAR to add its node until it is done (OAR
    2.5.9 numbers resources without a lock of its own); then the registration completes."""
    import threading

    from sqlalchemy import text

    from sfa_omf.calendar.agents import TESTBED_ADDITIONS_KEY

    hostname = oar_nodes.name()
    lab.restart()
    token = lab.invite()
    outcome: dict[str, object] = {}

    def register() -> None:
        try:
            outcome["enrolled"] = enrol(lab.url, token, lab.root, str(tmp_path / "a1"), hostname, "192.168.9.12")
        except Exception as exc:  # the test's thread reports it
            outcome["error"] = exc

    waiting = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid::bigint = :high "
        "AND objid::bigint = :low AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    key = {"high": TESTBED_ADDITIONS_KEY >> 32, "low": TESTBED_ADDITIONS_KEY & 0xFFFF_FFFF}
    registration = threading.Thread(target=register)
    with lab.aggregate.database.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": TESTBED_ADDITIONS_KEY})
        other.commit()
        try:
            registration.start()
            for _ in range(1200):  # until the registration waits for the lock (at most ~2 min: a loaded machine)
                if other.execute(waiting, key).scalar() or not registration.is_alive():
                    break
                other.commit()
                registration.join(timeout=0.1)
            assert other.execute(waiting, key).scalar() == 1, outcome
            assert oar_nodes.state(hostname) == ""  # OAR was not asked while the other addition held the lock
        finally:
            other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TESTBED_ADDITIONS_KEY})
            other.commit()
    registration.join(timeout=300)
    assert "enrolled" in outcome, outcome
    assert oar_nodes.state(hostname) == "Alive"
