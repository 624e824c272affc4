"""Writing a slice's keys into a real account (useradd; the tests run as root) never follows what the user planted
in ~/.ssh: a linked ~/.ssh, a linked or hard-linked authorized_keys, a linked temporary file; nor waits for a lock
the user holds on it."""

from __future__ import annotations

import fcntl
import os
import pwd
import secrets
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.testbed.unix_accounts import LocalAccount, NotFollowed, UnixAccounts
from tests.sshkeys import ssh_key

SLICE = "urn:publicid:IDN+lab+slice+demo"


@pytest.fixture
def entry() -> Iterator[pwd.struct_passwd]:
    """A real account with its home (useradd), removed at the end."""
    login = f"sfakeys{secrets.token_hex(3)}"
    made = UnixAccounts().ensure(login)
    try:
        yield made
    finally:
        subprocess.run(["userdel", "--remove", login], capture_output=True, check=False)


def _secret(path: Path) -> Path:
    path.write_text("root:SECRET\n")
    os.chmod(path, 0o600)
    return path


def _set(entry: pwd.struct_passwd, key: str) -> None:
    UnixAccounts().set_slice_keys([LocalAccount(entry.pw_name, (), (key,))], SLICE)


def _ssh_dir(entry: pwd.struct_passwd) -> Path:
    ssh = Path(entry.pw_dir) / ".ssh"
    ssh.mkdir(mode=0o700)
    os.chown(ssh, entry.pw_uid, entry.pw_gid)
    return ssh


def test_a_linked_ssh_folder_is_refused(entry: pwd.struct_passwd, tmp_path: Path) -> None:
    victim = tmp_path / "root-ssh"
    victim.mkdir(mode=0o700)
    (victim / "authorized_keys").write_text(ssh_key("root's own") + "\n")
    (Path(entry.pw_dir) / ".ssh").symlink_to(victim)
    with pytest.raises(NotFollowed, match="does not follow"):
        _set(entry, ssh_key("the user's"))
    assert (victim / "authorized_keys").read_text() == ssh_key("root's own") + "\n"
    assert sorted(p.name for p in victim.iterdir()) == ["authorized_keys"]
    assert os.stat(victim / "authorized_keys").st_uid == 0
    UnixAccounts().remove_slice_keys([entry.pw_name], SLICE)  # not refused: there is nothing of ours to take away
    assert (victim / "authorized_keys").read_text() == ssh_key("root's own") + "\n"


def test_a_planted_temporary_link_is_not_written_through(entry: pwd.struct_passwd, tmp_path: Path) -> None:
    shadow = _secret(tmp_path / "shadow")
    ssh = _ssh_dir(entry)
    (ssh / "authorized_keys.sfa-omf.tmp").symlink_to(shadow)
    _set(entry, ssh_key("the user's"))
    assert shadow.read_text() == "root:SECRET\n"
    assert (os.stat(shadow).st_uid, stat.S_IMODE(os.stat(shadow).st_mode)) == (0, 0o600)
    written = os.lstat(ssh / "authorized_keys")
    assert stat.S_ISREG(written.st_mode) and written.st_uid == entry.pw_uid
    assert UnixAccounts().slice_keys(entry.pw_name, SLICE) == [ssh_key("the user's")]
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys"]


@pytest.mark.parametrize("kind", ["symbolic", "hard"])
def test_a_linked_keys_file_is_not_read(entry: pwd.struct_passwd, kind: str) -> None:
    # In the home, on the home's file system (where a user can make a hard link when links are not protected).
    shadow = _secret(Path(entry.pw_dir) / ".root-only")
    ssh = _ssh_dir(entry)
    if kind == "symbolic":
        (ssh / "authorized_keys").symlink_to(shadow)
    else:
        os.link(shadow, ssh / "authorized_keys")
    with pytest.raises(NotFollowed):
        _set(entry, ssh_key("the user's"))
    assert shadow.read_text() == "root:SECRET\n"
    # Its text was not copied into a file of the user's.
    users = [p for p in ssh.iterdir() if os.lstat(p).st_uid == entry.pw_uid and stat.S_ISREG(os.lstat(p).st_mode)]
    assert not any("SECRET" in p.read_text() for p in users)
    assert os.stat(shadow).st_uid == 0


def test_a_lock_the_user_holds_on_ssh_stalls_no_key_write(entry: pwd.struct_passwd) -> None:
    """~/.ssh is the user's, who may flock it for ever (flock ~/.ssh sleep 1d): the slice's keys are still written,
    and taken away at the lease's end (the writers' lock is a file of root's)."""
    key = ssh_key("the user's")
    _set(entry, key)
    users_lock = os.open(Path(entry.pw_dir) / ".ssh", os.O_RDONLY | os.O_DIRECTORY)  # as the user would hold it
    fcntl.flock(users_lock, fcntl.LOCK_EX)
    try:
        removal = threading.Thread(target=UnixAccounts().remove_slice_keys, args=([entry.pw_name], SLICE), daemon=True)
        removal.start()
        removal.join(timeout=60)  # (a liveness bound, not a timing: the write takes milliseconds)
        assert not removal.is_alive(), "the key removal waited for the user's lock"
    finally:
        os.close(users_lock)
    assert UnixAccounts().slice_keys(entry.pw_name, SLICE) == []
