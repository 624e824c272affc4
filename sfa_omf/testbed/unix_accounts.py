"""Local Unix accounts for mapped federation users, and their SSH keys.

Each slice owns one block of an account's ``~/.ssh/authorized_keys``, between marker lines naming the slice. Writing
a slice's keys replaces its block only, so keys the user or the operator put there themselves, and other slices'
blocks, are never touched; removing the block takes exactly that slice's keys away again. Needs root (useradd,
chown); the operator turns it on with ``[sfa_omf] create_accounts = yes``.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.accounts import check_login
from sfa_omf.sshkeys import is_ssh_public_key

BEGIN = "# >>> sfa-omf slice {slice_urn} (managed by sfa-omf; edits inside are replaced)"
END = "# <<< sfa-omf slice {slice_urn}"


@dataclass(frozen=True)
class LocalAccount:
    """A local login and the SSH keys the slice's users mapped to it sent."""

    login: str
    user_urns: tuple[str, ...]
    ssh_keys: tuple[str, ...]


def replace_block(text: str, slice_urn: str, keys: Sequence[str]) -> str:
    """``text`` (an authorized_keys file) with the slice's block holding exactly ``keys`` (none: no block)."""
    begin, end = BEGIN.format(slice_urn=slice_urn), END.format(slice_urn=slice_urn)
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        if line == begin:
            inside = True
        elif line == end and inside:
            inside = False
        elif not inside:
            kept.append(line)
    if keys:
        kept.extend([begin, *keys, end])
    return "".join(f"{line}\n" for line in kept)


class UnixAccounts:
    """Creates accounts (``useradd -m``) and keeps each slice's block of their authorized_keys."""

    def __init__(self, shell: str = "/bin/bash") -> None:
        self.shell = shell

    def ensure(self, login: str) -> pwd.struct_passwd:
        """The account, created with a home directory when it does not exist."""
        check_login(login)
        try:
            return pwd.getpwnam(login)
        except KeyError:
            pass
        # Password "*": no password can log in, yet the account is not locked ("!"), which sshd would refuse.
        done = subprocess.run(
            [
                "useradd",
                "--create-home",
                "--password",
                "*",
                "--shell",
                self.shell,
                "--comment",
                "sfa-omf federation user",
                login,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode not in (0, 9):  # 9: created meanwhile by another process
            raise GeniError(
                Reason.TESTBED,
                f"cannot create the local account {login!r}: useradd said {done.stderr.strip() or done.returncode} "
                "(sfa-omf must run as root with create_accounts = yes)",
            )
        return pwd.getpwnam(login)

    def set_slice_keys(self, accounts: Iterable[LocalAccount], slice_urn: str) -> None:
        """Each account exists and its block for the slice holds exactly the account's keys."""
        for account in accounts:
            keys = [key.strip() for key in account.ssh_keys if is_ssh_public_key(key.strip())]
            self._rewrite(self.ensure(account.login), slice_urn, keys)

    def remove_slice_keys(self, logins: Iterable[str], slice_urn: str) -> None:
        """Take the slice's keys out of these accounts (accounts that do not exist are left alone)."""
        for login in logins:
            try:
                entry = pwd.getpwnam(login)
            except KeyError:
                continue
            self._rewrite(entry, slice_urn, [])

    def slice_keys(self, login: str, slice_urn: str) -> list[str]:
        """The keys in the account's block for the slice (for tests and ``sfa-omf account list``)."""
        path = os.path.join(pwd.getpwnam(login).pw_dir, ".ssh", "authorized_keys")
        if not os.path.exists(path):
            return []
        begin, end = BEGIN.format(slice_urn=slice_urn), END.format(slice_urn=slice_urn)
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        if begin not in lines:
            return []
        start = lines.index(begin) + 1
        return lines[start : lines.index(end, start)]

    def _rewrite(self, entry: pwd.struct_passwd, slice_urn: str, keys: Sequence[str]) -> None:
        ssh_dir = os.path.join(entry.pw_dir, ".ssh")
        if not os.path.isdir(ssh_dir):
            if not keys:
                return
            os.makedirs(ssh_dir, mode=0o700)
            os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
        path = os.path.join(ssh_dir, "authorized_keys")
        # One writer at a time per file (several slices may share an account); the file is replaced atomically.
        directory = os.open(ssh_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            current = Path(path).read_text(encoding="utf-8") if os.path.exists(path) else ""
            updated = replace_block(current, slice_urn, keys)
            if updated == current:
                return
            temporary = f"{path}.sfa-omf.tmp"
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
                out.write(updated)
            os.chown(temporary, entry.pw_uid, entry.pw_gid)
            os.replace(temporary, path)
        finally:
            os.close(directory)  # also releases the lock
