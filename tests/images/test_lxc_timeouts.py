"""Every LXC command has a time-out (sfa_omf/images/lxc.py LXC_TIMEOUTS_S): one that hangs is killed, with what it
started, and the container fails with a reason naming the command and its time-out; the start ends. A real hang
cannot be caused at will: HangingLxcStandIn puts a stand-in for one LXC command first on PATH that never returns;
every other LXC command is the real one (lxc-create really builds the container the failed start destroys). Both
ways containers run: on this host (the embedded backend's Instances.start_lease) and through the node command of an
OAR job (sfa-omf-lease-containers run). The time-outs are set to 1 s here; nothing asserts how long anything took."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.images import lxc, node_containers
from sfa_omf.images.instances import FAILED, Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.node_plans import LeasePlans, PlannedContainer, read_states, report_path_of
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import Calendar, at
from tests.images.lxc_env import bridge, needs_lxc
from tests.images.plans_env import node_script
from tests.images.test_instances_db import provisioned_lease
from tests.images.test_node_side import PLAN

pytestmark = needs_lxc
NO_BRIDGE = "sfaomf-nobridge"  # no container runs here (the hanging command is the one that would start it)


class HangingLxcStandIn:
    """A stand-in for one LXC command (``lxc-start``, ``lxc-create``, ``lxc-info``) that hangs: a shell that makes
    the container's directory as a real lxc-create begins by doing (``-P``/``-n``), then starts a child sleeping for
    an hour and waits for it, first on PATH. It records both pids, so a test sees that the time-out killed the
    command with what it started. Only that command is faked: a real hang of LXC cannot be caused at will."""

    def __init__(self, directory: Path, command: str) -> None:
        self.directory = directory
        self.command = command
        self.pids = directory / f"{command}.pids"
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / command
        script.write_text(
            "#!/bin/sh\n"
            'P=""; N=""\n'
            'while [ $# -gt 0 ]; do case "$1" in -P) P="$2"; shift;; -n) N="$2"; shift;; esac; shift; done\n'
            'if [ -n "$P" ] && [ -n "$N" ]; then mkdir -p "$P/$N/rootfs"; fi\n'
            # Written whole (then renamed): a file read while the shell writes it showed no pid, and a test saw
            # nothing to check as "all killed".
            f'sleep 3600 &\necho "$$ $!" > {self.pids}.new && mv {self.pids}.new {self.pids}\nwait\n'
        )
        script.chmod(0o755)

    def path(self) -> str:
        return f"{self.directory}:{os.environ['PATH']}"

    def killed(self) -> bool:
        """It ran, and neither it nor its child lives any more (a zombie is dead: its parent reaps it later)."""
        if not self.pids.exists():
            return False
        return all(not _alive(int(pid)) for pid in self.pids.read_text().split())


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[-1].split()[0] != "Z"


def until_killed(stand_in: HangingLxcStandIn) -> None:
    """SIGKILL is delivered at once, the kernel's clean-up of the child follows: bounded polling, no threshold."""
    deadline = time.monotonic() + 30
    while not stand_in.killed():
        if time.monotonic() > deadline:
            recorded = stand_in.pids.read_text() if stand_in.pids.exists() else "never recorded: it never started"
            pytest.fail(f"the hanging {stand_in.command} (pids {recorded}) still runs")
        time.sleep(0.1)


@pytest.mark.parametrize("command", ["lxc-create", "lxc-start"])
def test_a_hanging_lxc_command_fails_the_container_naming_it_and_the_start_ends(
    calendar: Calendar,
    database: Database,
    store: ImageStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    bridge()  # LXC must be there: every other LXC command is the real one
    stand_in = HangingLxcStandIn(tmp_path / "bin", command)
    monkeypatch.setenv("PATH", stand_in.path())
    monkeypatch.setitem(lxc.LXC_TIMEOUTS_S, command, 1.0)
    host = LxcHost(NO_BRIDGE, lxc_path=str(tmp_path / "lxc"))
    instances = Instances(database, host, "10.217.99.0/29", store, ssh_timeout_s=1)
    lease_id = provisioned_lease(calendar, instances, "n1", 1, at(1))
    (record,) = instances.start_lease(lease_id, [], at(1.5))  # it returns: the hang was cut short
    assert record.state == FAILED, record
    assert record.error.startswith(f"{command} for {record.name} did not finish within 1 s and was killed")
    assert instances.of_lease(lease_id) == [record]
    until_killed(stand_in)
    assert host.instances() == [] and not (tmp_path / "lxc" / record.name).exists()  # nothing half made is left


def test_a_hanging_lxc_info_reads_as_an_unknown_state_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lxc-info that hangs: state() says UNKNOWN (the container exists, not known to run) instead of raising, so a
    round's sweep over the host's containers and a start's checks go on for the others."""
    stand_in = HangingLxcStandIn(tmp_path / "bin", "lxc-info")
    monkeypatch.setenv("PATH", stand_in.path())
    monkeypatch.setitem(lxc.LXC_TIMEOUTS_S, "lxc-info", 1.0)
    host = LxcHost(NO_BRIDGE, lxc_path=str(tmp_path / "lxc"))
    wedged = tmp_path / "lxc" / f"{host.prefix}wedged"
    wedged.mkdir(parents=True)
    (wedged / "config").write_text("lxc.net.0.ipv4.address = 10.217.99.5/29\n")
    assert host.state(wedged.name) == lxc.UNKNOWN_STATE
    assert [(record.name, record.state) for record in host.instances()] == [(wedged.name, lxc.UNKNOWN_STATE)]
    until_killed(stand_in)


def test_the_node_command_fails_a_container_whose_lxc_start_hangs_and_runs_on(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    """The job's command reports the container failed with the time-out, then waits for the job's end as usual."""
    bridge()
    stand_in = HangingLxcStandIn(tmp_path / "bin", "lxc-start")
    name = "sfaomf-0f94abcd-0"
    plan = replace(
        PLAN,
        bridge=NO_BRIDGE,
        lxc_path=str(tmp_path / "lxc"),
        containers=(PlannedContainer(name, "10.217.99.2/29", ""),),
    )
    path = LeasePlans(tmp_path / "leases", plan_signer).write(plan)
    runs = tmp_path / "runs"
    script = node_script(runs, node_containers.SIGNERS_FILE, "lxc.LXC_TIMEOUTS_S['lxc-start'] = 1.0")
    command = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": stand_in.path()},
    )
    try:
        line = command.stdout.readline() if command.stdout else ""
        reason = f"lxc-start for {name} did not finish within 1 s and was killed"
        assert line.startswith(f"container {name}: failed ({reason}"), line
        state, error = read_states(report_path_of(path, plan.nodes[0]).read_text())[name]
        assert state == "failed" and error.startswith(reason)
        until_killed(stand_in)
        assert not (tmp_path / "lxc" / name).exists()
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 1
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert list(runs.iterdir()) == []
