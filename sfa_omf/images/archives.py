"""Saved images as tar archives: what a save leaves out (secrets), and what the aggregate accepts of an archive a node
wrote (sfa_omf_save_image on the OAR backend). Stdlib only: the node command imports this.

An archive from a node is untrusted input: the node is the experimenter's for the slot, and every later lease that
names the image has it extracted as root over a container's root file system (sfa_omf/images/lxc.py). So it must be
a plain, uncompressed tar archive of bounded size whose members stay inside the root file system they are laid over.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

#: What a saved image leaves out (paths inside the root file system): anyone's SSH keys (the next lease's users get
#: theirs), password hashes, and the SSH server's host keys (each container makes its own at its first login).
SECRETS = ("root/.ssh", "etc/shadow", "etc/gshadow", "etc/dropbear", "etc/ssh")
MAX_ARCHIVE_BYTES = 4 << 30  # a saved container: a busybox one is a few MB; anything over this is refused unread


class ArchiveError(ValueError):
    """An archive the aggregate will not import, with why (said to the experimenter)."""


def without_secrets(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """A saved image carries no one's secrets: see SECRETS (a directory named there goes with all it holds)."""
    path = os.path.normpath(member.name).lstrip("/")
    secret = any(path == name or path.startswith(name + "/") for name in SECRETS)
    return None if secret else member


def for_image(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """What a node's save keeps: no secrets, and no device files (LXC's template makes a container's own /dev; the
    aggregate refuses an archive holding any)."""
    return None if member.ischr() or member.isblk() else without_secrets(member)


def save_rootfs(rootfs: Path, archive: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """Archive a container's root file system (secrets and devices left out, for_image) into ``archive``, a plain
    tar of at most ``max_bytes``: the writing stops there (ArchiveError) instead of filling the disk it is written
    to, which on OAR is the aggregate's. Raises OSError or tarfile.TarError too."""
    with archive.open("xb") as out, tarfile.open(fileobj=_Bounded(out, max_bytes), mode="w|") as tar:
        tar.add(str(rootfs), arcname=".", filter=for_image)


class _Bounded(io.RawIOBase):
    """A file written to, refusing (ArchiveError) to grow past ``max_bytes``."""

    def __init__(self, out: BinaryIO, max_bytes: int) -> None:
        super().__init__()
        self.out, self.left, self.max_bytes = out, max_bytes, max_bytes

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]  # tarfile writes bytes
        size = len(data)
        self.left -= size
        if self.left < 0:
            raise ArchiveError(f"the archive would be more than the {self.max_bytes} bytes a saved image may be")
        self.out.write(data)
        return size


def take(path: Path, copy: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> str:
    """Copy the node's file at ``path`` into ``copy`` (the aggregate's own: the node may change its file at any time,
    so only the copy is checked and imported) and return its sha256. ArchiveError unless it is a regular file, not a
    link, of at most ``max_bytes``."""
    try:
        # Looked at before it is opened: opening a device node the node made there (a watchdog, a tape) acts.
        before = path.lstat()
        if not stat.S_ISREG(before.st_mode):
            raise ArchiveError(f"{path.name} is not a regular file")
        source = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ArchiveError(f"{path.name}: {exc.strerror}") from exc
    digest = hashlib.sha256()
    with os.fdopen(source, "rb") as handle, copy.open("xb") as out:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise ArchiveError(f"{path.name} is not a regular file, or was replaced while it was opened")
        copied = 0
        for block in iter(lambda: handle.read(1 << 20), b""):
            copied += len(block)
            if copied > max_bytes:
                raise ArchiveError(f"{path.name} is more than the {max_bytes} bytes a saved image may be")
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(path: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """ArchiveError unless ``path`` is a regular file (not a link) of at most ``max_bytes`` holding a plain tar
    archive whose members are regular files, directories, symbolic links, hard links or FIFOs with relative names
    free of '..', each name once, hard links to earlier regular files only, and no member under a symbolic link of
    the archive."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise ArchiveError(f"{path.name}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ArchiveError(f"{path.name} is not a regular file")
    if info.st_size > max_bytes:
        raise ArchiveError(f"{path.name} is {info.st_size} bytes, more than the {max_bytes} a saved image may be")
    seen: set[str] = set()
    files: set[str] = set()  # regular files: the only members a hard link may name
    links: set[str] = set()
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only (no decompression bomb)
            for member in tar:
                name = _relative(member.name)
                if member.ischr() or member.isblk():
                    raise ArchiveError(f"member {member.name!r} is a device file")
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk() or member.isfifo()):
                    raise ArchiveError(f"member {member.name!r} is of an unknown kind")
                if name in seen:  # a second member of a name replaces the first: e.g. a file by a symbolic link
                    raise ArchiveError(f"member {member.name!r} appears twice")
                parents = Path(name).parents
                if any(str(parent) in links for parent in parents):
                    raise ArchiveError(f"member {member.name!r} lies under a symbolic link of the archive")
                # A hard link to a symbolic link would be a second name of that link, and unpacking then changes the
                # owner and mode of whatever it points to, outside the root file system: only regular files.
                if member.islnk() and _relative(member.linkname) not in files:
                    raise ArchiveError(f"hard link {member.name!r} names no earlier regular file of the archive")
                if member.issym():
                    links.add(name)
                if member.isfile():
                    files.add(name)
                seen.add(name)
    except tarfile.TarError as exc:
        raise ArchiveError(f"{path.name} is not a plain tar archive: {exc}") from exc


def _relative(name: str) -> str:
    """A member's name as laid over a root file system ("./etc/x" -> "etc/x"); ArchiveError for an absolute one or
    one with '..'."""
    if name.startswith("/") or "\0" in name:
        raise ArchiveError(f"member {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {name!r} climbs out with '..'")
    return "/".join(parts) or "."
