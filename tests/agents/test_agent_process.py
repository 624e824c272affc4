"""Agents as real processes (``sfa-omf agent enrol`` and ``sfa-omf agent run``) against the aggregate over real TLS
on loopback: a lease's users get their accounts and keys at its start, the agent reports, the server restarts
under it, a silent agent's running lease fails with "node lost contact" and recovers, and the end of the lease takes
the accounts away."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.agents.health import LOST_CONTACT
from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.staging import FileStore
from sfa_omf.calendar.agents import Agents
from sfa_omf.times import format_time, utcnow
from tests.agents.conftest import Lab
from tests.sshkeys import ssh_key
from tests.tls_harness import proxy

REPO = Path(__file__).resolve().parents[2]
SLICE = "urn:publicid:IDN+lab+slice+demo"
NODE = "urn:publicid:IDN+lab+node+pc1"
USER = "urn:publicid:IDN+lab+user+ann"
#: How long a condition may take before the test fails (a bound for failing, not a measured threshold).
PATIENCE_S = 90


def sfa_omf(*args: str) -> list[str]:
    return [sys.executable, "-m", "sfa_omf.cli", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + PATIENCE_S
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE_S} s: {what}")
        time.sleep(0.1)


class AgentProcess:
    def __init__(self, state: Path, root: Path) -> None:
        self.state, self.root = state, root
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            sfa_omf("agent", "run", "--state", str(self.state), "--root-dir", str(self.root), "--interval", "0.2"),
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.process = None


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[AgentProcess]:
    token = lab.invite()
    enrolled = subprocess.run(
        sfa_omf(
            "agent", "enrol", "--server", lab.url, "--token", token, "--root", lab.root,
            "--state", str(tmp_path / "state"), "--hostname", "pc1", "--local-address", "192.168.7.11",
        ),
        env=environment(),
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert f"enrolled as {NODE}" in enrolled.stdout
    process = AgentProcess(tmp_path / "state", tmp_path / "root")
    process.start()
    yield process
    process.stop()


def slice_call(lab: Lab) -> tuple[Any, str]:
    cred = (lab.sfi / "lab.ann-lab.demo.slice.cred").read_text()
    client = proxy(lab.url, str(lab.sfi / "lab.ann.user.gid"), str(lab.sfi / "lab.ann.pkey"))
    return client, cred


def request(moment: datetime, duration: timedelta) -> str:
    """A request for pc1 from the start of the hour-aligned 30-minute slot holding ``moment``, for ``duration``."""
    grain = timedelta(minutes=30)
    start = moment - (moment - moment.replace(minute=0, second=0, microsecond=0)) % grain
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{format_time(start)}" valid_until="{format_time(start + duration)}"/>'
        f'<node client_id="pc1" component_id="{NODE}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
    )


def book_now(lab: Lab, key: str) -> None:
    """Allocate and provision pc1 for the slot running now, through the AM API, with ann's key."""
    client, cred = slice_call(lab)
    grain = timedelta(seconds=lab.aggregate.policy.default_grain_s)
    allocated = client.Allocate(SLICE, [cred], request(utcnow(), 2 * grain), {})
    assert allocated["code"]["geni_code"] == 0, allocated
    users = {"geni_users": [{"urn": USER, "keys": [key]}]}
    provisioned = client.Provision([SLICE], [cred], users)
    assert provisioned["code"]["geni_code"] == 0, provisioned


def sliver_status(lab: Lab) -> tuple[str, str]:
    client, cred = slice_call(lab)
    (sliver,) = client.Status([SLICE], [cred], {})["value"]["geni_slivers"]
    return sliver["geni_operational_status"], sliver["geni_error"]


def test_a_lease_runs_on_an_agent_node_through_restarts_and_loss(lab: Lab, agent: AgentProcess) -> None:
    host = DirectoryHost(str(agent.root), str(agent.state))
    key = ssh_key("ann@laptop")
    book_now(lab, key)
    (account,) = lab.aggregate.local_accounts(SLICE)
    login = account.login
    eventually(lambda: key in host.authorized_keys(login), "the user's key reaches the node")
    assert host.logins() == [login]
    eventually(lambda: sliver_status(lab) == ("geni_ready", ""), "the agent reports the lease started")
    (lease_id,) = {lease.id for lease in lab.aggregate.bookings.leases(slice_urn=SLICE)}
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    store.put(lease_id, "pc1", "in", "input.dat", b"data in", hashlib.sha256(b"data in").hexdigest())
    fetched = agent.root / "home" / login / "stage-in" / "input.dat"
    eventually(lambda: fetched.exists() and fetched.read_bytes() == b"data in", "the staged-in file reaches the home")

    # The server restarts while the agent runs; a key added meanwhile still arrives.
    lab.restart()
    second = ssh_key("ann@desktop")
    client, cred = slice_call(lab)
    updated = client.PerformOperationalAction(
        [SLICE], [cred], "geni_update_users", {"geni_users": [{"urn": USER, "keys": [key, second]}]}
    )
    assert updated["code"]["geni_code"] == 0, updated
    eventually(lambda: second in host.authorized_keys(login), "a key added after the restart reaches the node")

    # The agent goes silent: once it is lost, the running lease has failed and the node is out of service.
    agent.stop()
    timeout = lab.settings.agent_timeout_s
    later = Agents(lab.aggregate.database, clock=lambda: utcnow() + timedelta(seconds=timeout + 1))
    assert later.sweep_lost(timeout) == [NODE]
    assert sliver_status(lab) == ("geni_failed", LOST_CONTACT)
    assert lab.aggregate.inventory.get_node(NODE).state == "lost"
    refused = client.Allocate(SLICE, [cred], request(utcnow() + timedelta(days=1), timedelta(hours=1)), {})
    assert refused["code"]["geni_code"] == 7 and "has lost contact" in refused["output"], refused
    # ... and it comes back when heard again.
    agent.start()
    eventually(lambda: lab.aggregate.inventory.get_node(NODE).state == "usable", "the node is back in service")
    assert sliver_status(lab) == ("geni_ready", "")

    # The lease is deleted: the agent sends back ~/stage-out, takes the keys and the account it made away, says so.
    (agent.root / "home" / login / "stage-out").mkdir()
    (agent.root / "home" / login / "stage-out" / "result.txt").write_bytes(b"42\n")
    client, cred = slice_call(lab)
    assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0
    eventually(lambda: host.logins() == [], "the account is removed at the end of the lease")
    assert host.authorized_keys(login) == ""
    assert store.get(lease_id, "pc1", "out", "result.txt") == (b"42\n", hashlib.sha256(b"42\n").hexdigest())
    eventually(lambda: lab.agents.node_health(NODE, lease_id) == (False, "ended", ""), "the agent reports the end")
