"""A stage-in file the node has no room for fails the lease, said to the experimenter; a full state directory does not.

Since the agent took a full disk for the node's passing fault (887f12c), a stage-in file bigger than the disk of the
homes was downloaded again at every round (15 rounds, 15 MiB for a 1 MiB file) and the sliver stayed geni_configuring
for good. Now a file larger than what is free on the file system of the account's home fails the lease at once,
without being fetched; a write that finds the disk full all the same is a failed stage-in round, and the lease fails
after STAGE_IN_ROUNDS of them with the last error. And a relative state directory (``--state .``) no longer holds
every file named relatively (a missing ``useradd``): the lease such an error held up waited for good.

Real tmpfs file systems (root mounts them); the aggregate is served over real TLS on 127.0.0.1 (tests/agents/
conftest.py; its calendar on SQLite: the agent's side is what is tested); the agent is the real loop or the real CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sfa_omf.agents import node
from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import Agent, LocalFault, enrol, local_fault
from sfa_omf.agents.staging import FileStore
from tests.agents.conftest import Lab
from tests.agents.test_agent_disk_full import FULL, reports
from tests.agents.test_agent_disk_full import enrol as enrol_command
from tests.agents.test_agent_process import SLICE, book_now, environment, sfa_omf, sliver_status
from tests.full_disk import fill, small_tmpfs
from tests.sshkeys import ssh_key


def _stage_in(lab: Lab, data: bytes) -> None:
    """``input.dat`` staged in for the lease booked on pc1 (as ``sfa-omf node stage-in`` keeps it)."""
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    store.put(lease.id, "pc1", "in", "input.dat", data, hashlib.sha256(data).hexdigest())


def _counting_fetches(agent: Agent) -> Callable[[], int]:
    """Count the agent's stage-in downloads (each one still goes to the server); returns the count's reader."""
    fetched = 0
    get_file = agent.client.get_file

    def counted(lease_id: str, name: str) -> bytes:
        nonlocal fetched
        fetched += 1
        return get_file(lease_id, name)

    agent.client.get_file = counted  # type: ignore[method-assign]
    return lambda: fetched


def _round(agent: Agent) -> None:
    """One round; a LocalFault (the node's passing fault: what the regression raised every round) is what it was."""
    with contextlib.suppress(LocalFault):
        agent.run_once()


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_a_stage_in_file_bigger_than_the_disk_fails_the_lease_at_once_unfetched(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    enrol(lab.url, lab.invite(), lab.root, str(state), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    _stage_in(lab, b"x" * (1024 * 1024))  # 1 MiB: more than the whole 512 KiB disk of the homes
    with small_tmpfs(tmp_path / "disk", size_kib=512, inodes=64) as disk:
        agent = Agent(str(state), DirectoryHost(str(disk / "root"), str(state)))
        fetches = _counting_fetches(agent)
        _round(agent)  # (before the fix: LocalFault, fetched again every round, never failed)
        (account,) = lab.aggregate.local_accounts(SLICE)
        home = disk / "root" / "home" / account.login
        status = os.statvfs(home)
        free_kib = status.f_bavail * status.f_frsize // 1024
        state_now, error = sliver_status(lab)
        assert state_now == "geni_failed", error
        assert error.endswith(
            f"staging in failed: no room for input.dat (1 MiB) on the node: the file system of {home} has {free_kib} "
            "KiB free"
        )
        assert fetches() == 0 and reports(lab) == ["failed"]
        assert not (home / "stage-in").exists()
        # Said once: the next round neither fetches nor reports it again.
        agent.run_once()
        assert fetches() == 0 and reports(lab) == ["failed"]


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_a_stage_in_write_that_finds_the_disk_full_is_a_failed_round(lab: Lab, tmp_path: Path) -> None:
    """The home's file system has room, but ~/stage-in is a file system of its own, too small: the file is fetched,
    its write fails (No space left on device), and that is a stage-in round failed, STAGE_IN_ROUNDS of which fail the
    lease with the last error."""
    state, root = tmp_path / "state", tmp_path / "root"
    enrol(lab.url, lab.invite(), lab.root, str(state), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    _stage_in(lab, b"y" * (64 * 1024))
    (account,) = lab.aggregate.local_accounts(SLICE)
    folder = root / "home" / account.login / "stage-in"
    with small_tmpfs(folder, size_kib=16, inodes=8):
        agent = Agent(str(state), DirectoryHost(str(root), str(state)))
        fetches = _counting_fetches(agent)
        for _ in range(node.STAGE_IN_ROUNDS - 1):
            _round(agent)
        assert sliver_status(lab)[0] != "geni_failed" and reports(lab) == []  # may pass: room may come
        assert fetches() == node.STAGE_IN_ROUNDS - 1
        agent.run_once()
        state_now, error = sliver_status(lab)
        assert state_now == "geni_failed", error
        assert error.endswith(
            f"staging in failed: input.dat could not be written in {node.STAGE_IN_ROUNDS} rounds; the last time: no "
            f"room for input.dat (64 KiB) on the node: No space left on device in {folder}"
        )
        assert fetches() == node.STAGE_IN_ROUNDS and os.listdir(folder) == []  # no half-written file left


def test_a_relative_state_directory_does_not_hold_every_relative_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agent run --state .``: a program that is not there (FileNotFoundError naming ``useradd``, relatively) is
    not the state directory's fault, passing; a file of the state directory, named absolutely, is."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        subprocess.run(["sfa-omf-no-such-useradd"], check=False)
    fault = local_fault(missing.value, ".")
    assert fault is not None and not fault.passing
    assert fault.message == "a file of the node (sfa-omf-no-such-useradd) cannot be used: No such file or directory"
    full = OSError(28, "No space left on device", str(tmp_path / "leases.json.tmp"))
    fault = local_fault(full, ".")
    assert fault is not None and fault.passing
    assert fault.message == f"the agent's state directory {tmp_path} cannot be written: {FULL}"
    for outside in (tmp_path.parent / "home" / "x.tmp", Path("/usr/sbin/useradd")):
        fault = local_fault(OSError(13, "Permission denied", str(outside)), ".")
        assert fault is not None and not fault.passing and "state directory" not in fault.message


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_agent_run_with_state_dot_names_the_state_directory_it_is(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files of ``--state .`` are named absolutely (the agent's records and the host's ledger), so a full state
    directory is told as such, by its real name."""
    with small_tmpfs(tmp_path / "disk") as disk:
        state, root = disk / "state", tmp_path / "root"
        assert enrol_command(lab, state, lab.invite()).returncode == 0
        book_now(lab, ssh_key("ann@laptop"))
        fill(disk)
        command = sfa_omf("agent", "run", "--state", ".", "--root-dir", str(root), "--once")
        done = subprocess.run(command, env=environment(), capture_output=True, text=True, check=False, cwd=state)
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == (
            f"sfa-omf agent: the agent's state directory {state} cannot be written: {FULL}; then run the agent again"
        )
        assert sliver_status(lab)[0] != "geni_failed" and reports(lab) == []
        monkeypatch.chdir(state)
        with pytest.raises(OSError) as ledger:
            DirectoryHost(str(root), ".").apply("lease-1", {"bob": [ssh_key("bob@laptop")]})
        monkeypatch.chdir(tmp_path)  # (out of the file system before it is unmounted)
        assert (ledger.value.errno, ledger.value.filename) == (28, str(state / "accounts.json.tmp"))
