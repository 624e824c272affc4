"""The root agent stages files into and out of a real account's home (useradd; the tests run as root) without
following what the user planted there: a linked ~/stage-in or ~/stage-out, a linked temporary file, a hard link."""

from __future__ import annotations

import os
import pwd
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.agents.host import UnixHost
from sfa_omf.agents.node import STAGE_IN, STAGE_OUT
from sfa_omf.testbed.unix_accounts import NotFollowed
from tests.sshkeys import ssh_key

LEASE = "33333333-3333-3333-3333-333333333333"
LIMIT = 1024 * 1024  # the server's default limit of a staged file


@pytest.fixture
def account(tmp_path: Path) -> Iterator[tuple[UnixHost, pwd.struct_passwd]]:
    """A real account made by the agent's host for a lease, removed (userdel) at the end."""
    login = f"sfalink{secrets.token_hex(3)}"
    host = UnixHost(str(tmp_path / "state"))
    host.apply(LEASE, {login: [ssh_key("user")]})
    try:
        yield host, pwd.getpwnam(login)
    finally:
        host.remove(LEASE, [login])
        subprocess.run(["userdel", "--remove", login], capture_output=True, check=False)


def _secret(path: Path) -> Path:
    """A root-only file: what the user must not get to read or own."""
    path.write_text("root:SECRET\n")
    os.chmod(path, 0o600)
    return path


def _as_user(path: Path, entry: pwd.struct_passwd) -> None:
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def test_a_linked_stage_in_folder_is_refused(account: tuple[UnixHost, pwd.struct_passwd], tmp_path: Path) -> None:
    host, entry = account
    victim = tmp_path / "etc"
    victim.mkdir()
    link = Path(entry.pw_dir) / STAGE_IN
    link.symlink_to(victim)
    _as_user(link, entry)
    with pytest.raises(OSError):
        host.write_file(entry.pw_name, STAGE_IN, "input.dat", b"data")
    assert os.stat(victim).st_uid == 0
    assert list(victim.iterdir()) == []


def test_a_planted_temporary_link_is_replaced_not_written_through(
    account: tuple[UnixHost, pwd.struct_passwd], tmp_path: Path
) -> None:
    host, entry = account
    shadow = _secret(tmp_path / "shadow")
    folder = Path(entry.pw_dir) / STAGE_IN
    folder.mkdir()
    _as_user(folder, entry)
    (folder / ".input.dat.tmp").symlink_to(shadow)
    (folder / "input.dat").symlink_to(shadow)  # and the target name too: rename replaces the link
    host.write_file(entry.pw_name, STAGE_IN, "input.dat", b"data")
    assert shadow.read_text() == "root:SECRET\n"
    assert (os.stat(shadow).st_uid, stat.S_IMODE(os.stat(shadow).st_mode)) == (0, 0o600)
    written = os.lstat(folder / "input.dat")
    assert stat.S_ISREG(written.st_mode) and written.st_uid == entry.pw_uid
    assert (folder / "input.dat").read_bytes() == b"data"
    assert sorted(p.name for p in folder.iterdir()) == ["input.dat"]


def test_a_stage_in_folder_made_by_the_agent_is_the_users(account: tuple[UnixHost, pwd.struct_passwd]) -> None:
    host, entry = account
    host.write_file(entry.pw_name, STAGE_IN, "input.dat", b"data")
    folder = Path(entry.pw_dir) / STAGE_IN
    assert os.stat(folder).st_uid == entry.pw_uid
    assert (folder / "input.dat").read_bytes() == b"data"


def test_stage_out_sends_only_the_users_own_plain_files(
    account: tuple[UnixHost, pwd.struct_passwd], tmp_path: Path
) -> None:
    host, entry = account
    home = Path(entry.pw_dir)
    # A linked ~/stage-out is not read.
    (home / STAGE_OUT).symlink_to(tmp_path)
    _secret(tmp_path / "shadow")
    assert host.read_files(entry.pw_name, STAGE_OUT, LIMIT) == []
    (home / STAGE_OUT).unlink()
    folder = home / STAGE_OUT
    folder.mkdir()
    _as_user(folder, entry)
    (folder / "result.txt").write_bytes(b"42\n")
    _as_user(folder / "result.txt", entry)
    (folder / "linked.txt").symlink_to(tmp_path / "shadow")
    # A hard link to a file of root's (same file system as the home, as a user could make it where links are
    # not protected), a FIFO (must not hang the agent), a folder.
    os.link(_secret(home / ".root-only"), folder / "hard.txt")
    os.mkfifo(folder / "pipe")
    (folder / "sub").mkdir()
    # A file over the limit the server takes (sparse: 64 MiB that cost no disk) is not read into root's memory.
    with open(folder / "huge.bin", "wb") as huge:
        huge.truncate(64 * 1024 * 1024)
    _as_user(folder / "huge.bin", entry)
    assert host.read_files(entry.pw_name, STAGE_OUT, LIMIT) == [("result.txt", b"42\n")]
    assert host.read_files(entry.pw_name, STAGE_OUT, 3) == [("result.txt", b"42\n")]  # (at the limit: read)
    assert host.read_files(entry.pw_name, STAGE_OUT, 2) == []


def test_an_account_made_before_another_failed_is_removed_after_a_restart(tmp_path: Path) -> None:
    """The agent makes the lease's first account, then the second fails (its ~/.ssh a link: refused). The ledger of
    accounts the agent made is saved all the same, so an agent restarted before the lease's end still removes the
    account it made (userdel), not only its keys."""
    first, second = f"sfaled{secrets.token_hex(3)}", f"sfaled{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", second], check=True, capture_output=True)
    (Path(pwd.getpwnam(second).pw_dir) / ".ssh").symlink_to(tmp_path)
    state = str(tmp_path / "state")
    try:
        with pytest.raises(NotFollowed):
            UnixHost(state).apply(LEASE, {first: [ssh_key("one")], second: [ssh_key("two")]})
        pwd.getpwnam(first)  # made
        UnixHost(state).remove(LEASE, [first, second])  # a new agent process: the ledger on disk is all it knows
        with pytest.raises(KeyError):
            pwd.getpwnam(first)
        assert pwd.getpwnam(second)  # not the agent's: it stays
    finally:
        for login in (first, second):
            subprocess.run(["userdel", "--remove", login], capture_output=True, check=False)
