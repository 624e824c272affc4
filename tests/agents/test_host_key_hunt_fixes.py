"""Fixes of the SSH key hunt (session 28) on the node agent's host.

- The end of a lease forgot the account in the agent's ledger before ``userdel``; userdel refuses (exit 8) a user
  who still runs a process, so the account and its processes outlived the lease, even after a restart of the agent.
  The login's processes are killed first, and the ledger forgets the account only once userdel succeeded: a failure
  is logged, raised, and tried again at the agent's next round.
- A key whose comment holds U+001C (a line break for Python's splitlines, not for sshd) put a line of its own into
  authorized_keys at the next rewrite, outside the lease's block: it survived the lease's end.
- A user's own authorized_keys with bytes that are not UTF-8 failed every rewrite of it.
- The end of a lease killed every process of the login's uid on the whole host, those of a container without user
  namespaces too (the next lease's, whose image user has the same uid number): processes in a PID or user namespace
  root made are left alone; those in namespaces the login made itself (``unshare --user --pid``) are still killed.

Real accounts (useradd; the tests run as root) named ``sfahk...``, removed at the end with their processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest

from sfa_omf.agents import host as host_module
from sfa_omf.agents.host import DirectoryHost, UnixHost
from sfa_omf.agents.node import Agent, enrol
from sfa_omf.errors import GeniError
from sfa_omf.testbed.unix_accounts import BEGIN, END
from tests.agents.conftest import Lab, userdel
from tests.agents.test_agent_process import SLICE, book_now, slice_call
from tests.sshkeys import ssh_key

L1, L2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def _exists(login: str) -> bool:
    try:
        pwd.getpwnam(login)
    except KeyError:
        return False
    return True


def _run_as(login: str) -> subprocess.Popen[bytes]:
    """A process the user left running at the lease's end (an experiment's background job)."""
    return subprocess.Popen(["sleep", "600"], user=login)


def test_the_end_of_a_lease_kills_the_logins_processes_then_removes_the_account(login: str, tmp_path: Path) -> None:
    host = UnixHost(str(tmp_path / "state"))
    host.apply(L1, {login: [ssh_key("user")]})
    process = _run_as(login)
    try:
        host.remove(L1, [login])  # userdel said "user is currently used by process": raised, the account stayed
        assert not _exists(login)
        assert process.wait(timeout=60) == -9
        assert json.loads((tmp_path / "state" / "accounts.json").read_text()) == {}
    finally:
        process.kill()
        process.wait()


def test_an_account_userdel_could_not_remove_stays_in_the_ledger_and_goes_after_a_restart(
    login: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """userdel fails (the processes are not stopped here: injected): the failure is raised, the ledger on disk
    still holds the account for the lease, and the next try (a new agent process) removes it. It was forgotten
    before userdel ran: the account and its process stayed for good."""
    state = str(tmp_path / "state")
    UnixHost(state).apply(L1, {login: [ssh_key("user")]})
    process = _run_as(login)
    try:
        monkeypatch.setattr(host_module, "_stop_processes", lambda login: None, raising=False)
        with pytest.raises(GeniError, match=f"userdel {login} failed"):
            UnixHost(state).remove(L1, [login])
        assert json.loads((tmp_path / "state" / "accounts.json").read_text()) == {login: [L1]}
        monkeypatch.undo()
        UnixHost(state).remove(L1, [login])
        assert not _exists(login)
        assert process.wait(timeout=60) == -9
    finally:
        process.kill()
        process.wait()


def test_the_agent_tries_the_removal_again_at_its_next_round(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole agent: the round after the lease's end fails to remove the account (injected, as above), and the
    lease is kept; the next round removes the account and reports the lease ended."""
    state = str(tmp_path / "a1")
    enrol(lab.url, lab.invite(), lab.root, state, "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (account,) = lab.aggregate.local_accounts(SLICE)
    login = account.login
    assert not _exists(login), f"{login} exists already (a previous run's?)"
    agent = Agent(state, UnixHost(state))
    process: subprocess.Popen[bytes] | None = None
    try:
        agent.run_once()
        assert _exists(login)
        process = _run_as(login)
        client, cred = slice_call(lab)
        assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0
        monkeypatch.setattr(host_module, "_stop_processes", lambda login: None, raising=False)
        with pytest.raises(GeniError, match="userdel"):
            agent.run_once()
        assert _exists(login) and agent.applied
        monkeypatch.undo()
        agent.run_once()
        assert not _exists(login)
        assert agent.applied == {}
        assert process.wait(timeout=60) == -9
    finally:
        if process is not None:
            process.kill()
            process.wait()
        userdel(login)


def test_a_key_with_a_line_break_python_sees_never_outlives_its_lease_on_a_node(tmp_path: Path) -> None:
    """A key whose comment holds U+001C, a fake end marker and another key: not written. A file holding one already
    (written before the fix) loses the whole line with the lease's block."""
    smuggled = ssh_key("bob") + "\x1c" + END.format(slice_urn=L1) + "\x1c" + ssh_key("carol")
    host = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "state"))
    host.apply(L1, {"bob": [smuggled]})
    host.apply(L2, {"bob": [ssh_key("other")]})
    assert "carol" not in host.authorized_keys("bob")
    keys = tmp_path / "root" / "home" / "bob" / ".ssh" / "authorized_keys"
    keys.write_text(f"{BEGIN.format(slice_urn=L1)}\n{smuggled}\n{END.format(slice_urn=L1)}\n")
    host.apply(L2, {"bob": [ssh_key("other")]})
    host.remove(L1, ["bob"])
    assert "carol" not in host.authorized_keys("bob")
    assert ssh_key("other") in host.authorized_keys("bob")


def test_a_users_own_latin1_comment_fails_no_lease_and_is_kept(login: str, tmp_path: Path) -> None:
    """An account the agent did not make, whose user wrote a Latin-1 comment in their own authorized_keys: leases
    write and take their blocks (UnicodeDecodeError before), and the user's line is kept byte for byte."""
    subprocess.run(["useradd", "--create-home", login], check=True, capture_output=True)
    ssh = Path(pwd.getpwnam(login).pw_dir) / ".ssh"
    ssh.mkdir(mode=0o700)
    own_line = " ".join(ssh_key("own").split()[:2]).encode() + b" Bj\xf6rn\n"
    (ssh / "authorized_keys").write_bytes(own_line)
    host = UnixHost(str(tmp_path / "state"))
    host.apply(L1, {login: [ssh_key("one")]})
    host.apply(L2, {login: [ssh_key("two")]})
    text = (ssh / "authorized_keys").read_bytes()
    assert text.startswith(own_line) and ssh_key("one").encode() in text and ssh_key("two").encode() in text
    host.remove(L1, [login])
    host.remove(L2, [login])
    assert _exists(login), "not the agent's account: it stays"
    assert (ssh / "authorized_keys").read_bytes() == own_line


def _started(command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """``command`` running ``sh`` that says "ready" then becomes ``sleep 600``; the process and the pid of that
    sleep (the last of its descendants: unshare --fork runs it in a child)."""
    process = subprocess.Popen([*command, "sh", "-c", "echo ready; exec sleep 600"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    pid = process.pid
    while children := Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        pid = int(children[0])
    return process, pid


def _alive(pid: int) -> bool:
    """Process ``pid`` runs (not a zombie, not gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize(
    ("where", "survives"),
    [("a PID namespace root made (a container)", True), ("namespaces the login made", False)],
)
def test_the_end_of_a_lease_kills_no_process_in_a_containers_namespace(login: str, where: str, survives: bool) -> None:
    """A process of the login's uid number in another PID namespace made by root (a container without user
    namespaces, maybe the next lease's, whose image user has that uid) survives the removal of the login (it was
    killed); the login's own process is killed, and so is one it ran in a user and PID namespace of its own."""
    subprocess.run(["useradd", "--create-home", login], check=True, capture_output=True)
    entry = pwd.getpwnam(login)
    as_login = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    if survives:
        command = ["unshare", "--pid", "--fork", "--mount-proc", *as_login]
    else:
        command = [*as_login, "unshare", "--user", "--map-root-user", "--pid", "--fork"]
    own = _run_as(login)
    other, other_pid = _started(command)
    pidfd = os.pidfd_open(other_pid)
    try:
        assert f"\nUid:\t{entry.pw_uid}\t" in Path(f"/proc/{other_pid}/status").read_text()
        host_module._stop_processes(login)
        assert own.wait(timeout=60) == -9
        assert _alive(other_pid) == survives, f"a process in {where}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        other.kill()
        other.wait()
        own.kill()
        own.wait()
