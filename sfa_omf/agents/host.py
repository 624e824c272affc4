"""What a node agent does to its host for a lease: accounts for the slice's logins, their SSH keys, and back.

Each lease owns one block of an account's ``authorized_keys`` (the same marker lines as the aggregate's own
testbed/unix_accounts.py), so keys put there by others are never touched. ``UnixHost`` makes real accounts
(``useradd``, root needed); ``DirectoryHost`` does the same inside a directory standing for the host's root
(``sfa-omf agent run --root DIR``; the tests use a throwaway one): ``DIR/etc/passwd`` lines and
``DIR/home/LOGIN/.ssh/authorized_keys``. An account is removed when the agent made it and no lease uses it any more
(its processes killed first; an account userdel could not remove stays in the ledger, and is tried again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.accounts import check_login
from sfa_omf.sshkeys import is_ssh_public_key
from sfa_omf.testbed.unix_accounts import LocalAccount, UnixAccounts, replace_block

log = logging.getLogger("sfa_omf.agent")
#: How long the end of a lease waits for a login's processes to be gone (SIGKILL) before trying userdel all the same.
STOP_PROCESSES_S = 5.0
#: ioctls on a namespace's file (linux/nsfs.h): the user namespace a namespace belongs to; the uid that made a user
#: namespace.
NS_GET_USERNS = 0xB701
NS_GET_OWNER_UID = 0xB704
#: authorized_keys is read and written with this: bytes that are not UTF-8 (a Latin-1 comment) are kept as they were.
ENCODING_ERRORS = "surrogateescape"


class Host(Protocol):
    def apply(self, lease_id: str, accounts: Mapping[str, Sequence[str]]) -> None:
        """Each login exists and its block for the lease holds exactly its keys (idempotent)."""

    def remove(self, lease_id: str, logins: Sequence[str]) -> None:
        """The lease's keys are gone from these accounts; accounts the agent made and nothing uses are gone."""

    def write_file(self, login: str, folder: str, name: str, data: bytes) -> None:
        """Put a file in the account's ``~/folder`` (stage-in)."""

    def free_space(self, login: str) -> tuple[Path, int] | None:
        """The account's home and the bytes free on its file system (a stage-in file larger cannot go there), or
        None when not known (no such account yet)."""

    def read_files(self, login: str, folder: str, max_bytes: int) -> list[tuple[str, bytes]]:
        """The plain files in the account's ``~/folder`` (stage-out), by name; those over ``max_bytes`` are left
        unread (logged)."""


def _valid_keys(keys: Sequence[str]) -> list[str]:
    return [key.strip() for key in keys if is_ssh_public_key(key.strip())]


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` (see ENCODING_ERRORS) in place of ``path``, as write_replacing does."""
    write_replacing(path, text.encode("utf-8", ENCODING_ERRORS), mode)


def write_replacing(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place. On failure (a full disk) the
    temporary file goes, and the OSError names it: a write() that fails says no file name of its own (the agent
    tells a full disk of the node from a silent server by it)."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if exc.filename is None:
            exc.filename = str(temporary)
        raise


def _read_text(path: Path) -> str:
    """The file's text as it is (no newline translation; bytes that are not UTF-8 kept, see ENCODING_ERRORS)."""
    return path.read_bytes().decode("utf-8", ENCODING_ERRORS)


class _Ledger:
    """Which accounts the agent made, and which leases use each (a JSON file in the agent's state directory), so
    that the end of a lease removes only what the agent made and no other lease still uses."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))  # (``--state .``: the agent tells the state's files by their names)
        self.uses: dict[str, list[str]] = json.loads(path.read_text()) if path.exists() else {}

    def use(self, login: str, lease_id: str) -> None:
        leases = self.uses.setdefault(login, [])
        if lease_id not in leases:
            leases.append(lease_id)

    def last_use(self, login: str, lease_id: str) -> bool:
        """True when the agent made the account and no lease but ``lease_id`` uses it (the ledger is unchanged)."""
        return login in self.uses and all(lease == lease_id for lease in self.uses[login])

    def release(self, login: str, lease_id: str) -> bool:
        """Drop the lease's use; True when the agent made the account and nothing uses it any more."""
        if login not in self.uses:
            return False
        self.uses[login] = [lease for lease in self.uses[login] if lease != lease_id]
        if self.uses[login]:
            return False
        del self.uses[login]
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(self.path, json.dumps(self.uses, sort_keys=True))


class DirectoryHost:
    """Accounts inside ``root`` (a directory standing for the host's /)."""

    def __init__(self, root: str, state_dir: str) -> None:
        self.root = Path(root)
        self.ledger = _Ledger(Path(state_dir) / "accounts.json")

    def _passwd(self) -> Path:
        return self.root / "etc" / "passwd"

    def logins(self) -> list[str]:
        """The accounts of this root (for tests and the operator)."""
        path = self._passwd()
        return [line.split(":", 1)[0] for line in path.read_text().splitlines()] if path.exists() else []

    def authorized_keys(self, login: str) -> str:
        path = self.root / "home" / login / ".ssh" / "authorized_keys"
        return _read_text(path) if path.exists() else ""

    def apply(self, lease_id: str, accounts: Mapping[str, Sequence[str]]) -> None:
        for login, keys in accounts.items():
            check_login(login)
            if login not in self.logins():
                self._passwd().parent.mkdir(parents=True, exist_ok=True)
                with open(self._passwd(), "a", encoding="utf-8") as out:
                    out.write(f"{login}:x:::sfa-omf federation user:/home/{login}:/bin/bash\n")
                self.ledger.use(login, lease_id)
            elif login in self.ledger.uses:
                self.ledger.use(login, lease_id)
            ssh = self.root / "home" / login / ".ssh"
            ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = ssh / "authorized_keys"
            current = _read_text(path) if path.exists() else ""
            _write_atomic(path, replace_block(current, lease_id, _valid_keys(keys)))
        self.ledger.save()

    def remove(self, lease_id: str, logins: Sequence[str]) -> None:
        for login in logins:
            path = self.root / "home" / login / ".ssh" / "authorized_keys"
            if path.exists():
                _write_atomic(path, replace_block(_read_text(path), lease_id, []))
            if self.ledger.release(login, lease_id):
                kept = [line for line in self._passwd().read_text().splitlines() if line.split(":", 1)[0] != login]
                _write_atomic(self._passwd(), "".join(f"{line}\n" for line in kept), 0o644)
                shutil.rmtree(self.root / "home" / login, ignore_errors=True)
        self.ledger.save()

    def write_file(self, login: str, folder: str, name: str, data: bytes) -> None:
        _write_into(self.root / "home" / login, folder, name, data)

    def free_space(self, login: str) -> tuple[Path, int] | None:
        return _free_space(self.root / "home" / login)

    def read_files(self, login: str, folder: str, max_bytes: int) -> list[tuple[str, bytes]]:
        return _read_from(self.root / "home" / login, folder, max_bytes)


def _free_space(home: Path) -> tuple[Path, int] | None:
    """``home`` and the bytes an unprivileged writer may still use on its file system (a user's file must not take
    the reserve kept for root's own: the agent's state among them); None when it cannot be told (no such home).
    The home, named by the system: not ``~/stage-in``, which its user may have made a link to elsewhere."""
    try:
        status = os.statvfs(home)
    except OSError:
        return None
    return home, status.f_bavail * status.f_frsize


def _open_home(home: Path) -> int:
    """A descriptor of the account's home (named by the system, not by its user: its parent is not theirs)."""
    return os.open(home, os.O_RDONLY | os.O_DIRECTORY)


def _open_folder(home_fd: int, folder: str) -> int:
    """A descriptor of ``~/folder``, a real directory: a symbolic link put there by the user is refused (ELOOP or
    ENOTDIR), never followed, so the root agent works only inside the user's own home."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home_fd)


def _check_plain_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise OSError(errno.EINVAL, f"{name!r} is not a plain file name")


def _write_into(home: Path, folder: str, name: str, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Put ``data`` as ``~/folder/name`` (a new file, renamed into place), owned by ``owner``. Nothing the user can
    plant there (a linked folder, a linked or pre-made temporary file) makes root write or chown outside it."""
    _check_plain_name(name)
    home_fd = _open_home(home)
    try:
        made = _make_folder(home_fd, folder)
        folder_fd = _open_folder(home_fd, folder)
    finally:
        os.close(home_fd)
    try:
        if made and owner is not None:
            os.fchown(folder_fd, *owner)
        temporary = f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):  # a leftover, or a link planted there: the name only goes
            os.unlink(temporary, dir_fd=folder_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            with open(os.open(temporary, flags, 0o600, dir_fd=folder_fd), "wb") as out:
                if owner is not None:
                    os.fchown(out.fileno(), *owner)
                out.write(data)
            # rename() replaces a link at the target by the file, it does not write through it.
            os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except OSError as exc:  # (a full disk): no half-written file left, and the error names where
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder_fd)
            exc.filename = str(home / folder / temporary)
            raise
    finally:
        os.close(folder_fd)


def _make_folder(home_fd: int, folder: str) -> bool:
    """Make ``~/folder``; True when made now (an existing name, even a link, is left to _open_folder to judge)."""
    try:
        os.mkdir(folder, 0o755, dir_fd=home_fd)
    except FileExistsError:
        return False
    return True


def _read_from(home: Path, folder: str, max_bytes: int, owner_uid: int | None = None) -> list[tuple[str, bytes]]:
    """The regular files of ``~/folder`` by name, of at most ``max_bytes`` (a bigger one is logged and left). Links
    are not followed (the folder itself included), and with ``owner_uid`` only the user's own files are read: a hard
    link to a file of root's is not sent away."""
    try:
        home_fd = _open_home(home)
    except FileNotFoundError:
        return []
    try:
        folder_fd = _open_folder(home_fd, folder)
    except FileNotFoundError:
        return []
    except OSError as exc:  # ELOOP, ENOTDIR: a link or a file where the folder should be
        log.warning("%s/%s is a link or not a directory (%s): not read", home, folder, exc.strerror)
        return []
    finally:
        os.close(home_fd)
    try:
        names = sorted(os.listdir(folder_fd))
        return [file for name in names if (file := _read_one(folder_fd, name, max_bytes, owner_uid))]
    finally:
        os.close(folder_fd)


def _read_one(folder_fd: int, name: str, max_bytes: int, owner_uid: int | None) -> tuple[str, bytes] | None:
    """(name, data) of a regular file of the folder, or None (a link, a directory, a device, someone else's, one
    over ``max_bytes``: read, it could fill the agent's memory, and the server would refuse it anyway)."""
    try:
        # O_NONBLOCK: a FIFO put there does not hang the agent at open.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError:
        return None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or (owner_uid is not None and status.st_uid != owner_uid):
        os.close(fd)
        return None
    with open(fd, "rb") as source:
        data = source.read(max_bytes + 1) if status.st_size <= max_bytes else b""
    if status.st_size > max_bytes or len(data) > max_bytes:  # (it may have grown since fstat)
        log.warning("%s is over the %d bytes the server takes: not staged out", name, max_bytes)
        return None
    return name, data


class UnixHost:
    """Real accounts on this host (root needed): ``useradd`` through testbed/unix_accounts.py, ``userdel`` at the
    end for accounts the agent made (their processes killed first: userdel refuses a user who still runs one)."""

    def __init__(self, state_dir: str) -> None:
        self.accounts = UnixAccounts()
        self.ledger = _Ledger(Path(state_dir) / "accounts.json")

    def apply(self, lease_id: str, accounts: Mapping[str, Sequence[str]]) -> None:
        try:
            for login, keys in accounts.items():
                check_login(login)
                try:
                    pwd.getpwnam(login)
                    if login in self.ledger.uses:
                        self.ledger.use(login, lease_id)
                except KeyError:
                    self.ledger.use(login, lease_id)
                self.accounts.set_slice_keys([LocalAccount(login, (), tuple(keys))], lease_id)
        finally:  # an account made before a later one failed is ours too: userdel at the end, even after a restart
            self.ledger.save()

    def remove(self, lease_id: str, logins: Sequence[str]) -> None:
        """The lease's keys go; an account the agent made that no other lease uses goes too, its processes killed
        first. An account that could not be removed stays in the ledger with the lease (saved), and GeniError is
        raised once every login was tried: the agent keeps the lease and calls this again at its next round."""
        self.accounts.remove_slice_keys(logins, lease_id)
        failures: list[str] = []
        for login in logins:
            if self.ledger.last_use(login, lease_id):
                failure = _delete_account(login)
                if failure is not None:
                    log.error("lease %s: %s; the agent tries again at its next round", lease_id, failure)
                    failures.append(failure)
                    continue  # the ledger keeps the lease's use of the account
            self.ledger.release(login, lease_id)
        self.ledger.save()
        if failures:
            raise GeniError(Reason.TESTBED, "; ".join(failures) + " (the agent tries again at its next round)")

    def write_file(self, login: str, folder: str, name: str, data: bytes) -> None:
        entry = pwd.getpwnam(login)
        _write_into(Path(entry.pw_dir), folder, name, data, (entry.pw_uid, entry.pw_gid))

    def free_space(self, login: str) -> tuple[Path, int] | None:
        try:
            return _free_space(Path(pwd.getpwnam(login).pw_dir))
        except KeyError:
            return None

    def read_files(self, login: str, folder: str, max_bytes: int) -> list[tuple[str, bytes]]:
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            return []
        return _read_from(Path(entry.pw_dir), folder, max_bytes, entry.pw_uid)


def _delete_account(login: str) -> str | None:
    """Kill the login's processes, then ``userdel --remove`` it; None when the account is gone (or was), else why
    not. A home on a file system other hosts may share (``shared_file_system``) is kept: ``userdel`` alone."""
    _stop_processes(login)
    command = ["userdel", "--remove", login]
    with contextlib.suppress(KeyError):
        home = pwd.getpwnam(login).pw_dir
        shared = shared_file_system(home)
        if shared is not None:
            # Another node's lease of the slice may still use it (its /home mounted there too): removing it would
            # delete their files; the account goes, the directory stays for the operator.
            log.info("%s's home %s is on a %s file system other hosts may share: kept", login, home, shared)
            command = ["userdel", login]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode in (0, 6):  # 6: no such user
        return None
    if done.returncode == 12:  # the account is gone, its home directory could not be removed
        log.warning("userdel %s: the account is removed, not all of its home: %s", login, done.stderr.strip())
        return None
    return f"userdel {login} failed (exit {done.returncode}): {done.stderr.strip()}"


#: File system types whose files other hosts may see too: network and cluster file systems, FUSE ones (sshfs, s3fs
#: and the like; "fuseblk" is a local disk's), and autofs, the trigger where a home is mounted from a file server when
#: first used (not mounted yet when the table is read).
SHARED_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "9p",
        "afs",
        "ocfs2",
        "gfs2",
        "orangefs",
        "pvfs2",
        "virtiofs",
        "fuse",
        "autofs",
    }
)
MOUNTINFO = "/proc/self/mountinfo"


def shared_file_system(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system ``path`` is on when other hosts may share it (SHARED_FILE_SYSTEMS, or any
    ``fuse.*``), else None (a local one, or ``path`` or the mount table unreadable: nothing tells it is shared)."""
    try:
        target = os.path.realpath(path, strict=True)
        with open(mountinfo, encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    found, found_type = "", ""
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) < 5 or not rest:
            continue
        # The mount point, with its blanks and backslashes written as octal escapes (\040).
        point = re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), parts[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(found):  # the last of equally long ones: the mount on top
            found, found_type = point, rest.split(" ", 1)[0]
    if found_type in SHARED_FILE_SYSTEMS or found_type.startswith("fuse."):
        return found_type
    return None


def _stop_processes(login: str) -> None:
    """SIGKILL every process of the login (its real, effective or saved user), again until none is left or
    STOP_PROCESSES_S have passed (userdel then says what is left). Root's processes are never touched."""
    try:
        uid = pwd.getpwnam(login).pw_uid
    except KeyError:
        return
    if uid == 0 or uid == os.getuid():
        log.warning("%s is uid %d: its processes are not killed", login, uid)
        return
    deadline = time.monotonic() + STOP_PROCESSES_S
    while _kill_processes_of(uid):
        if time.monotonic() > deadline:
            log.warning("%s still has processes after %.0f s", login, STOP_PROCESSES_S)
            return
        time.sleep(0.05)


def _kill_processes_of(uid: int) -> int:
    """SIGKILL the live processes (not zombies: those are dead already) whose real, effective or saved user is
    ``uid``; returns how many there were. Each is held by a pidfd before its owner is read, so a number reused by
    another process meanwhile is never signalled. Only processes in the agent's own PID and user namespaces are this
    host's login's: one in another (a container without user namespaces, whose image user has the same uid number,
    maybe the next lease's) is left alone, and so is one whose namespaces cannot be read; but one in namespaces the
    login made itself (``unshare --user --pid``) is the login's, and killed (``_in_reach``)."""
    own = _namespaces("self")
    if own is None:
        log.warning("the agent's own namespaces cannot be read: no process of uid %d is killed", uid)
        return 0
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            pidfd = os.pidfd_open(int(name))
        except OSError:  # gone meanwhile
            continue
        try:
            if uid not in _process_uids(int(name))[:3] or not _in_reach(name, own, uid):
                continue
            found += 1
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:  # gone meanwhile
            continue
        finally:
            os.close(pidfd)
    return found


def _in_reach(pid: str, own: tuple[str, str], uid: int) -> bool:
    """Process ``pid`` is one the login's removal kills: its PID namespace is the agent's or one made in a user
    namespace ``uid`` made, and its user namespace is the agent's or one ``uid`` made (``unshare --user --pid`` by
    the login itself). A container's namespaces, made by root, are not; nor are namespaces that cannot be read."""
    spaces = _namespaces(pid)
    if spaces is None:
        return False
    pid_ours = spaces[0] == own[0] or _made_by(pid, "pid") == uid
    return pid_ours and (spaces[1] == own[1] or _made_by(pid, "user") == uid)


def _made_by(pid: str, kind: str) -> int | None:
    """The uid that made the user namespace process ``pid``'s ``kind`` namespace ("pid" or "user") belongs to (for
    "user": is), by the ioctls NS_GET_USERNS and NS_GET_OWNER_UID; None when unknown."""
    try:
        descriptor = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if kind == "pid":
            owning = fcntl.ioctl(descriptor, NS_GET_USERNS)
            os.close(descriptor)
            descriptor = owning
        owner: int = struct.unpack("=I", fcntl.ioctl(descriptor, NS_GET_OWNER_UID, bytes(4)))[0]
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return owner


def _namespaces(pid: str) -> tuple[str, str] | None:
    """The PID and user namespaces of process ``pid`` ("self": the agent's), as /proc names them ("pid:[4026531836]");
    None when they cannot be read (gone, or not ours to read)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid"), os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _process_uids(pid: int) -> list[int]:
    """The real, effective, saved and filesystem uids of a live process; none for a zombie."""
    uids: list[int] = []
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
        for line in status:
            if line.startswith("State:") and line.split()[1] == "Z":
                return []
            if line.startswith("Uid:"):
                uids = [int(field) for field in line.split()[1:]]
    return uids
