"""A node agent whose state directory is on a full disk says so, and the lease waits for room instead of failing.

`agent enrol` and `agent run --once` said "no answer from https://...: [Errno 28] No space left on device" (the
server blamed for the node's own disk), the loop logged "server unreachable", and the second round of a full disk
reported the lease failed for good ("the node's agent failed to set the lease up: [Errno 28] ..."), though room
again would have let it go on. A write that failed left its half-written ``.tmp`` file behind. Now the words name
the state directory and say to free space; the lease is not reported failed and is set up once there is room; no
temporary file is left.

A real tmpfs (root mounts it) holds the state directory; the aggregate is served over real TLS on 127.0.0.1
(tests/agents/conftest.py; its calendar on SQLite: the agent's side is what is tested), the agent is the real CLI or
the real loop."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sfa_omf.agents.host import DirectoryHost, write_replacing
from sfa_omf.agents.node import Agent
from sfa_omf.calendar.agent_models import AgentReport
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, book_now, environment, eventually, sfa_omf, sliver_status
from tests.full_disk import fill, remount, small_tmpfs
from tests.ports import free_port
from tests.sshkeys import ssh_key

FULL = "No space left on device; free space there"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs for the agent's state directory."""
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def enrol(lab: Lab, state: Path, token: str, server: str = "") -> subprocess.CompletedProcess[str]:
    """``sfa-omf agent enrol`` for pc1 (at ``server``, else the lab's) as a process of its own (the token given as
    the variable: no warning)."""
    command = sfa_omf("agent", "enrol", "--server", server or lab.url, "--root", lab.root, "--state", str(state))
    return subprocess.run(
        [*command, "--hostname", "pc1", "--retry-for", "0"],
        env={**environment(), "SFA_OMF_AGENT_TOKEN": token},
        capture_output=True,
        text=True,
        check=False,
    )


def run_once(state: Path, root: Path) -> subprocess.CompletedProcess[str]:
    command = sfa_omf("agent", "run", "--state", str(state), "--root-dir", str(root), "--once")
    return subprocess.run(command, env=environment(), capture_output=True, text=True, check=False)


def temporary_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def reports(lab: Lab) -> list[str]:
    """The states of every report the agent made."""
    with lab.aggregate.database.read() as session:
        return list(session.scalars(select(AgentReport.state)))


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_enrol_on_a_full_state_directory_says_so_and_the_same_token_enrols_once_there_is_room(
    lab: Lab, tmp_path: Path
) -> None:
    # Four inodes: the tmpfs's root, the state directory, the node's key and its bootstrap certificate; the server
    # answers, the certificate takes the bootstrap's place, and the root's copy finds no inode.
    with small_tmpfs(tmp_path / "disk", inodes=4) as disk:
        state = disk / "state"
        token = lab.invite()
        done = enrol(lab, state, token)
        assert done.returncode == 1
        assert done.stderr == (
            f"sfa-omf agent: the agent's state directory {state} cannot be written: {FULL}; then enrol again (the "
            "same token works again)\n"
        )
        assert temporary_files(state) == []
        remount(disk, inodes=64)
        again = enrol(lab, state, token)
        assert again.returncode == 0, again.stderr
        assert f"enrolled as {NODE}" in again.stdout
        assert len(lab.agents.list_agents()) == 1


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_agent_run_once_on_a_full_state_directory_says_so_and_sets_the_lease_up_once_there_is_room(
    lab: Lab, disk: Path, tmp_path: Path
) -> None:
    state, root = disk / "state", tmp_path / "root"
    assert enrol(lab, state, lab.invite()).returncode == 0
    key = ssh_key("ann@laptop")
    book_now(lab, key)
    filler = fill(disk)
    for _ in range(2):  # the same again: the lease still waits for room
        done = run_once(state, root)
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == (
            f"sfa-omf agent: the agent's state directory {state} cannot be written: {FULL}; then run the agent again"
        )
        assert "no answer" not in done.stderr
        assert temporary_files(state) == []
        assert sliver_status(lab)[0] != "geni_failed" and reports(lab) == []
    filler.unlink()
    done = run_once(state, root)
    assert done.returncode == 0, done.stderr
    assert sliver_status(lab) == ("geni_ready", "")
    (login,) = DirectoryHost(str(root), str(state)).logins()
    assert key in DirectoryHost(str(root), str(state)).authorized_keys(login)


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_the_loop_warns_naming_the_state_directory_and_the_lease_waits_for_room_not_failed(
    lab: Lab, disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state, root = disk / "state", tmp_path / "root"
    assert enrol(lab, state, lab.invite()).returncode == 0
    key = ssh_key("ann@laptop")
    book_now(lab, key)
    filler = fill(disk)
    host = DirectoryHost(str(root), str(state))
    agent = Agent(str(state), host, interval_s=0.2)
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,))
    said = f"the agent's state directory {state} cannot be written: {FULL}; trying again in"
    caplog.set_level(logging.INFO, logger="sfa_omf.agent")
    loop.start()
    try:
        # Three rounds on a full disk (the second was the one that reported the lease failed for good).
        eventually(
            lambda: (
                sliver_status(lab)[0] == "geni_failed"
                or sum(r.levelno == logging.WARNING and said in r.getMessage() for r in caplog.records) >= 3
            ),
            "three rounds warn of the full state directory",
        )
        assert not [r for r in caplog.records if "server unreachable" in r.getMessage()]
        assert sliver_status(lab)[0] != "geni_failed" and reports(lab) == []
        assert host.logins() == []  # nothing is made on the host before the lease is recorded in the state
        assert temporary_files(state) == []
        filler.unlink()
        eventually(lambda: sliver_status(lab) == ("geni_ready", ""), "the lease is set up once there is room")
    finally:
        stop.set()
        loop.join()
    (login,) = host.logins()
    assert key in host.authorized_keys(login)
    assert reports(lab) == ["started"]


def test_writes_that_fail_on_a_full_disk_leave_no_temporary_file_and_name_it(disk: Path, tmp_path: Path) -> None:
    """The agent's records (host.py write_replacing), the host's ledger and keys (host.py _write_atomic) and a user's
    stage-in file (host.py _write_into): a write() that fails names no file by itself, and left its file behind."""
    state, root = disk / "state", disk / "root"
    host = DirectoryHost(str(root), str(state))
    key = ssh_key("ann@laptop")
    host.apply("lease-1", {"alice": [key]})
    fill(disk)
    with pytest.raises(OSError) as records:
        write_replacing(state / "leases.json", bytes(8192))
    with pytest.raises(OSError) as keys:
        host.apply("lease-2", {"alice": [key]})
    with pytest.raises(OSError) as ledger:  # (a root elsewhere: the accounts are made, the ledger is not written)
        DirectoryHost(str(tmp_path / "root"), str(state)).apply("lease-3", {"bob": [key]})
    with pytest.raises(OSError) as staged:
        host.write_file("alice", "stage-in", "data.bin", bytes(8192))
    home = root / "home" / "alice"
    assert (records.value.errno, records.value.filename) == (28, str(state / "leases.json.tmp"))
    assert (keys.value.errno, keys.value.filename) == (28, str(home / ".ssh" / "authorized_keys.tmp"))
    assert (ledger.value.errno, ledger.value.filename) == (28, str(state / "accounts.json.tmp"))
    assert (staged.value.errno, staged.value.filename) == (28, str(home / "stage-in" / ".data.bin.tmp"))
    assert temporary_files(state) == [] and temporary_files(home / ".ssh") == []
    assert os.listdir(home / "stage-in") == []


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_a_server_that_does_not_answer_is_still_no_answer(lab: Lab, tmp_path: Path) -> None:
    """The node's own files are told apart from the network's errors, which stay the server's silence."""
    state = tmp_path / "state"
    token = lab.invite()
    assert enrol(lab, state, token).returncode == 0
    closed = f"https://127.0.0.1:{free_port()}/"
    config = json.loads((state / "agent.json").read_text())
    (state / "agent.json").write_text(json.dumps({**config, "server": closed}))
    done = run_once(state, tmp_path / "root")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"sfa-omf agent: no answer from {closed} ([Errno 111] Connection refused); try again later"
    )
    refused = enrol(lab, state, token, closed)
    assert refused.returncode == 1
    assert (
        refused.stderr == f"sfa-omf agent: no answer from {closed} ([Errno 111] Connection refused); try again later\n"
    )
