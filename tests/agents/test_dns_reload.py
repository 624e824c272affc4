"""The DNS server's reload command when it cannot help (agents/dns.py): not installed, or hanging. The registration
answers 503 with what went wrong and leaves nothing behind; a reload that does not finish is stopped (with what it
started) instead of holding every registration and the zone's lock."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sfa_omf.agents.dns import DnsZones, NodeName
from sfa_omf.agents.node import AgentCallError, enrol
from sfa_omf.errors import GeniError, Reason
from tests.agents.conftest import Lab
from tests.agents.test_api import counts

#: How often a hanging reload is tried before the test gives up on the shell ever starting its child within the 1 s
#: time-out (it takes milliseconds: only a very loaded machine needs a second try).
SHELL_START_TRIES = 5


def test_a_registration_whose_reload_command_cannot_run_answers_503_and_leaves_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    lab.settings = replace(lab.settings, agent_dns_zone="nodes.lab", agent_dns_reload="/nonexistent/rndc reload")
    lab.restart()
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1", "192.0.2.2")
    assert refused.value.status == 503, refused.value
    assert "/nonexistent/rndc reload" in refused.value.message and "could not run" in refused.value.message
    assert counts(lab) == (0, 0)
    assert "pc1" not in (lab.directory / "dns" / "local.zone").read_text()


def _state(pid: int) -> str:
    """The process's state letter (Z: a zombie, dead but not reaped), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def _gone_or_another(pid: int, command: str) -> bool:
    """True when the process is gone, a zombie, or its number is another process's now (not ``command``)."""
    try:
        running = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except FileNotFoundError:
        return True
    return _state(pid) in ("", "Z") or os.path.basename(running) != command


def test_a_reload_that_does_not_finish_is_stopped_and_answers_unavailable(tmp_path: Path) -> None:
    # A shell whose child keeps the output pipes open: killing the shell alone would leave the wait on the pipes. It
    # records its child's pid whole (written, then renamed): on a loaded machine the 1 s time-out may cut the shell
    # off before it started its child or recorded it (the pid file was then not there to read); then the publish is
    # tried again, a bounded number of times, until there is a started child to see stopped.
    for attempt in range(SHELL_START_TRIES):
        pid_file = tmp_path / f"sleeper-{attempt}.pid"
        command = f"sleep 90 & echo $! > {pid_file}.new && mv {pid_file}.new {pid_file}; wait"
        zones = DnsZones(str(tmp_path / f"dns-{attempt}"), "nodes.lab", ["sh", "-c", command])
        zones.reload_timeout_s = 1
        with pytest.raises(GeniError) as failed:
            zones.publish([NodeName("pc1", 1, "192.0.2.1")])
        assert failed.value.reason is Reason.UNAVAILABLE
        assert "did not finish within 1 s" in failed.value.message
        if pid_file.exists():
            break
    else:
        pytest.fail(f"the reload command never recorded its child within its 1 s in {SHELL_START_TRIES} tries")
    # Killed with its group, the sleeper may still be running its exit on a loaded machine: a bounded wait (shorter
    # than the sleeper's 90 s, so a sleeper left running still fails the test).
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while not _gone_or_another(sleeper, "sleep") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone_or_another(sleeper, "sleep"), "what the reload command started is stopped too"


def test_a_reload_command_that_starts_a_daemon_keeping_its_output_answers_at_its_exit(tmp_path: Path) -> None:
    """The command exits 0 at once and leaves a daemon (its own session, as a daemonizing server does) holding the
    output it was given: the reload is done when the command exits, not when the daemon does."""
    pid_file = tmp_path / "daemon.pid"
    zones = DnsZones(str(tmp_path / "dns"), "nodes.lab", ["sh", "-c", f"setsid sleep 60 & echo $! > {pid_file}"])
    zones.reload_timeout_s = 30
    try:
        assert zones.publish([NodeName("pc1", 1, "192.0.2.1")]) > 0
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):  # the daemon the command left
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_reload_that_does_not_finish_and_cannot_be_stopped_answers_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hanging reload command whose process group may not be signalled (run through sudo as another user): the
    registration still answers 503, without waiting for the command."""

    def killpg_permission_fault_stand_in(_group: int, _signal: int) -> None:
        """Stands in for killpg on a group of another user's processes (EPERM), which these tests, run as root or
        without a second user, cannot make for real."""
        raise PermissionError(errno.EPERM, "Operation not permitted")

    pid_file = tmp_path / "reload.pid"
    command = f"echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file}; exec sleep 60"  # (the pid written whole)
    zones = DnsZones(str(tmp_path / "dns"), "nodes.lab", ["sh", "-c", command])
    zones.reload_timeout_s = 1
    monkeypatch.setattr(os, "killpg", killpg_permission_fault_stand_in)
    try:
        with pytest.raises(GeniError) as failed:
            zones.publish([NodeName("pc1", 1, "192.0.2.1")])
    finally:
        monkeypatch.undo()
        deadline = time.monotonic() + 60  # nothing stopped the shell: on a loaded machine it may not have got there yet
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):  # the command the stand-in left running
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    assert failed.value.reason is Reason.UNAVAILABLE
    assert "did not finish within 1 s" in failed.value.message
