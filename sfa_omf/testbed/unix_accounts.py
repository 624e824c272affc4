"""Local Unix accounts for mapped federation users, and their SSH keys.

Each slice owns one block of an account's ``~/.ssh/authorized_keys``, between marker lines naming the slice. Writing
a slice's keys replaces its block only, so keys the user or the operator put there themselves, and other slices'
blocks, are never touched; removing the block takes exactly that slice's keys away again. Needs root (useradd,
chown); the operator turns it on with ``[sfa_omf] create_accounts = yes``. ``~/.ssh`` is the user's: no link in it
is followed.

A call that fails writes nothing: what ``set_slice_keys`` and ``remove_slice_keys`` changed (``WrittenKeys``) is put
back with ``restore_slice_keys``. A login whose ``~/.ssh`` its user made a link is that user's own doing: it fails
a call only where the call requires that login (the caller's own), else it is logged and left alone; the same holds
for a file that cannot be rewritten. The file is read and written as bytes: what is not UTF-8 in it (a Latin-1
comment) is kept as it was. Lines are split at line feeds only, as sshd splits them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.accounts import check_login
from sfa_omf.sshkeys import key_problem

BEGIN = "# >>> sfa-omf slice {slice_urn} (managed by sfa-omf; edits inside are replaced)"
END = "# <<< sfa-omf slice {slice_urn}"
AUTHORIZED_KEYS = "authorized_keys"
#: Where the accounts' key locks are (root's: see _account_lock).
LOCK_DIR = Path("/run/sfa-omf/account-keys")
#: authorized_keys is read and written with this: bytes that are not UTF-8 (a Latin-1 comment the user wrote) come
#: back exactly as they were, and never stop the sfa-omf blocks from being written or taken out.
ENCODING_ERRORS = "surrogateescape"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalAccount:
    """A local login and the SSH keys the slice's users mapped to it sent."""

    login: str
    user_urns: tuple[str, ...]
    ssh_keys: tuple[str, ...]


@dataclass(frozen=True)
class WrittenKeys:
    """One login's block for a slice as a call found it and as the call left it: what ``restore_slice_keys`` puts
    back when the call fails after writing it."""

    login: str
    before: tuple[str, ...]
    after: tuple[str, ...]


def lines_of(text: str) -> list[str]:
    """The lines of ``text`` (an authorized_keys file) as sshd reads them: split at line feeds only (str.splitlines
    would also split at U+001C, U+0085, U+2028 ..., which sshd reads as part of a line), a carriage return before
    the line feed dropped."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def block_keys(text: str, slice_urn: str) -> tuple[str, ...]:
    """The keys in the slice's block of ``text`` (an authorized_keys file); none when it has no block."""
    begin, end = BEGIN.format(slice_urn=slice_urn), END.format(slice_urn=slice_urn)
    lines = lines_of(text)
    if begin not in lines:
        return ()
    start = lines.index(begin) + 1
    stop = lines.index(end, start) if end in lines[start:] else len(lines)
    return tuple(lines[start:stop])


def replace_block(text: str, slice_urn: str, keys: Sequence[str]) -> str:
    """``text`` (an authorized_keys file) with the slice's block holding exactly ``keys`` (none: no block)."""
    begin, end = BEGIN.format(slice_urn=slice_urn), END.format(slice_urn=slice_urn)
    kept: list[str] = []
    inside = False
    for line in lines_of(text):
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

    def set_slice_keys(
        self, accounts: Iterable[LocalAccount], slice_urn: str, required_logins: Collection[str] | None = None
    ) -> list[WrittenKeys]:
        """Each account exists and its block for the slice holds exactly the account's keys; returns what changed
        (for ``restore_slice_keys``). A user who made ~/.ssh or authorized_keys a link (root would write or read
        through it) gets NotFollowed raised when their login is in ``required_logins`` (every login when None),
        after the logins written so far are put back; any other such login is logged as a warning and left alone:
        one member's link must not fail another member's call. The same holds for any other failure to write a
        login's file (an OSError): raised for a required login, else logged and left alone."""
        written: list[WrittenKeys] = []
        try:
            for account in accounts:
                keys = _usable_keys(account)
                entry = self.ensure(account.login)
                try:
                    before = self._rewrite(entry, slice_urn, keys)
                except (NotFollowed, OSError, ValueError) as exc:
                    if required_logins is None or account.login in required_logins:
                        raise
                    log.warning("%s: its block for %s is left as it was (%s)", account.login, slice_urn, _why(exc))
                    continue
                if before is not None and before != keys:
                    written.append(WrittenKeys(account.login, before, keys))
        except BaseException:
            self.restore_slice_keys(written, slice_urn)
            raise
        return written

    def remove_slice_keys(self, logins: Iterable[str], slice_urn: str) -> list[WrittenKeys]:
        """Take the slice's keys out of these accounts (accounts that do not exist are left alone, and so are
        keys files the user made links); returns what changed (for ``restore_slice_keys``). A login whose file
        cannot be rewritten (an OSError) is logged as an error and left: it must not keep the slice's keys in the
        other logins (a lease's end runs this once)."""
        written: list[WrittenKeys] = []
        try:
            for login in logins:
                try:
                    entry = pwd.getpwnam(login)
                except KeyError:
                    continue
                try:
                    before = self._rewrite(entry, slice_urn, ())
                except NotFollowed as exc:  # the user replaced the file we wrote: none of our keys are in it any more
                    log.warning("%s", exc)
                    continue
                except (OSError, ValueError) as exc:
                    log.error("%s keeps its block for %s: it could not be taken out (%s)", login, slice_urn, exc)
                    continue
                if before:
                    written.append(WrittenKeys(login, before, ()))
        except BaseException:
            self.restore_slice_keys(written, slice_urn)
            raise
        return written

    def restore_slice_keys(self, written: Iterable[WrittenKeys], slice_urn: str) -> None:
        """Put the slice's blocks back as they were before a call that failed wrote them; a block changed since (by
        another call, whose keys are now the last word) is left alone. Never raises: it runs while a call fails,
        whose own error is the one to report; what cannot be put back is logged."""
        for change in written:
            try:
                self._rewrite(pwd.getpwnam(change.login), slice_urn, change.before, only_if=change.after)
            except Exception as exc:  # (KeyError, OSError, GeniError, ...): logged, the call's error is reported
                log.warning(
                    "%s keeps the keys of a failed call in its block for %s: %s", change.login, slice_urn, _why(exc)
                )

    def slice_keys(self, login: str, slice_urn: str) -> list[str]:
        """The keys in the account's block for the slice (for tests and ``sfa-omf account list``)."""
        path = os.path.join(pwd.getpwnam(login).pw_dir, ".ssh", "authorized_keys")
        if not os.path.exists(path):
            return []
        return list(block_keys(Path(path).read_bytes().decode("utf-8", ENCODING_ERRORS), slice_urn))

    def _rewrite(
        self, entry: pwd.struct_passwd, slice_urn: str, keys: Sequence[str], only_if: Sequence[str] | None = None
    ) -> tuple[str, ...] | None:
        """Make the slice's block of the account hold ``keys``; returns the keys it held before. With ``only_if``,
        only when it holds exactly those now (else None: left as it is)."""
        # Root works below the home by descriptors and never follows a link: ~/.ssh and what is in it are the
        # user's, who could point them at /root/.ssh or /etc/shadow.
        home = os.open(entry.pw_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ssh_dir = _open_ssh_dir(home, entry, create=bool(keys))
        finally:
            os.close(home)
        if ssh_dir is None:
            return () if not only_if else None  # (no ~/.ssh: the block is empty, and ``keys`` are none)
        # One writer at a time per file (several slices may share an account); the file is replaced atomically.
        try:
            lock = _account_lock(entry.pw_name)
            try:
                current = _read_keys(ssh_dir, entry.pw_name)
                before = block_keys(current, slice_urn)
                if only_if is not None and before != tuple(only_if):
                    return None
                updated = replace_block(current, slice_urn, keys)
                if updated != current:
                    _replace_keys(ssh_dir, updated, entry)
                return before
            finally:
                os.close(lock)  # (releases it)
        finally:
            os.close(ssh_dir)


def _usable_keys(account: LocalAccount) -> tuple[str, ...]:
    """The account's keys that are SSH public keys sshd takes; another (one recorded before sfa-omf refused its kind,
    such as a DSA key) is logged and left out."""
    keys = []
    for sent in account.ssh_keys:
        key = sent.strip()
        if not key:
            continue
        problem = key_problem(key)
        if problem is None:
            keys.append(key)
        else:
            log.warning("%s: a key is left out of its authorized_keys (%s): %r", account.login, problem, key[:40])
    return tuple(keys)


def _why(exc: BaseException) -> str:
    return exc.message if isinstance(exc, GeniError) else str(exc)


class NotFollowed(GeniError):
    """A user's ~/.ssh or authorized_keys is a link (or a hard link, or not a plain file): root leaves it alone."""

    def __init__(self, login: str, what: str) -> None:
        super().__init__(
            Reason.TESTBED, f"~{login}/{what} is a link or not a plain file: sfa-omf does not follow it (remove it)"
        )


def _account_lock(login: str) -> int:
    """The account's key lock, held (a descriptor: closing it releases the lock). A file of root's in LOCK_DIR, not
    the user's ~/.ssh: a user holding a lock on their own directory would stall root, and keep keys that a lease's
    end must take away."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(LOCK_DIR / f"{login}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _open_ssh_dir(home: int, entry: pwd.struct_passwd, create: bool) -> int | None:
    """A descriptor of the real directory ~/.ssh, made (the user's, 0700) when missing and ``create``."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(".ssh", flags, dir_fd=home)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as exc:  # ELOOP, ENOTDIR: a link, or a file
        raise NotFollowed(entry.pw_name, ".ssh") from exc
    os.mkdir(".ssh", 0o700, dir_fd=home)
    made = os.open(".ssh", flags, dir_fd=home)
    os.fchown(made, entry.pw_uid, entry.pw_gid)
    return made


def _read_keys(ssh_dir: int, login: str) -> str:
    """The text of ~/.ssh/authorized_keys ("" when there is none), read without following a link; a hard link is
    refused too (it may be a file of root's: its text would be written back into the user's file)."""
    try:
        # O_NONBLOCK: a FIFO put there does not hang us at open.
        fd = os.open(AUTHORIZED_KEYS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=ssh_dir)
    except FileNotFoundError:
        return ""
    except OSError as exc:  # ELOOP: a link
        raise NotFollowed(login, f".ssh/{AUTHORIZED_KEYS}") from exc
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(fd)
        raise NotFollowed(login, f".ssh/{AUTHORIZED_KEYS}")
    with open(fd, "rb") as source:
        return source.read().decode("utf-8", ENCODING_ERRORS)


def _replace_keys(ssh_dir: int, text: str, entry: pwd.struct_passwd) -> None:
    """Write ``text`` to a new temporary file (the user's, 0600) and rename it over authorized_keys."""
    temporary = f"{AUTHORIZED_KEYS}.sfa-omf.tmp"
    with contextlib.suppress(FileNotFoundError):  # a leftover, or a link planted there: the name only goes
        os.unlink(temporary, dir_fd=ssh_dir)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with open(os.open(temporary, flags, 0o600, dir_fd=ssh_dir), "wb") as out:
        os.fchown(out.fileno(), entry.pw_uid, entry.pw_gid)
        out.write(text.encode("utf-8", ENCODING_ERRORS))
    os.replace(temporary, AUTHORIZED_KEYS, src_dir_fd=ssh_dir, dst_dir_fd=ssh_dir)
