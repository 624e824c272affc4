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


class ArchiveTooLarge(ArchiveError):
    """An archive that reached the bound it was written or copied under (``max_bytes``): the caller, who chose the
    bound (a save's room in its user's quota, say), can tell why."""

    def __init__(self, message: str, max_bytes: int) -> None:
        super().__init__(message)
        self.max_bytes = max_bytes


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
    to, which on OAR is the aggregate's. No link is followed: the walk opens each directory and file relative to its
    parent's descriptor with O_NOFOLLOW, so the container's root swapping a directory for a link to a host path
    while it runs gets that link archived as a link, never the host's files. Raises OSError (ELOOP, ENOTDIR: a name
    changed kind during the walk) or tarfile.TarError too."""
    with archive.open("xb") as out, tarfile.open(fileobj=_Bounded(out, max_bytes), mode="w|") as tar:
        root = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _add_directory(tar, root, ".", os.fstat(root), {})
        except RecursionError as exc:  # directories nested thousands deep: refused as any unfit archive
            raise ArchiveError("the root file system's directories are nested too deep to archive") from exc
        finally:
            os.close(root)


def _add_directory(
    tar: tarfile.TarFile, directory: int, arcname: str, info: os.stat_result, inodes: dict[tuple[int, int], str]
) -> None:
    """Add the open ``directory`` (its stat ``info``) and, unless for_image leaves it out, all it holds."""
    member = for_image(_member(arcname, info))
    if member is None:
        return
    tar.addfile(member)
    for name in sorted(os.listdir(directory)):
        path = f"{arcname}/{name}"
        found = os.stat(name, dir_fd=directory, follow_symlinks=False)
        kind = stat.S_IFMT(found.st_mode)
        if kind == stat.S_IFDIR:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            try:
                _add_directory(tar, child, path, _same(child, found, path), inodes)
            finally:
                os.close(child)
        elif kind == stat.S_IFREG:
            key = (found.st_dev, found.st_ino)
            if found.st_nlink > 1 and key in inodes:  # a second name of a file archived already: a hard link
                linked = for_image(_member(path, found, linkname=inodes[key]))
                if linked is not None:
                    tar.addfile(linked)
                continue
            # O_NONBLOCK: a FIFO put there meanwhile never blocks the open (and _same refuses it).
            handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
            with os.fdopen(handle, "rb") as content:
                opened = _same(handle, found, path)
                member = for_image(_member(path, opened))
                if member is not None:
                    tar.addfile(member, content)
                    inodes[key] = path
        elif kind == stat.S_IFLNK:
            linked = for_image(_member(path, found, linkname=os.readlink(name, dir_fd=directory)))
            if linked is not None:
                tar.addfile(linked)
        elif kind == stat.S_IFIFO:
            fifo = for_image(_member(path, found))
            if fifo is not None:
                tar.addfile(fifo)
        # Sockets, and device files (for_image leaves them out): not archived.


def _same(handle: int, listed: os.stat_result, path: str) -> os.stat_result:
    """The stat of what ``handle`` opened, ArchiveError unless it is what the walk listed under that name."""
    opened = os.fstat(handle)
    if (opened.st_dev, opened.st_ino) != (listed.st_dev, listed.st_ino) or stat.S_IFMT(opened.st_mode) != stat.S_IFMT(
        listed.st_mode
    ):
        raise ArchiveError(f"{path} was replaced while the root file system was archived")
    return opened


def _member(arcname: str, info: os.stat_result, linkname: str | None = None) -> tarfile.TarInfo:
    """A tar member for ``arcname`` with these attributes: a symbolic link (``linkname``, the link's target), a hard
    link (``linkname``, an earlier member) for a regular file, a directory, a regular file or a FIFO. Numeric owners
    only: the container's users are not the host's."""
    member = tarfile.TarInfo(arcname)
    member.mode = stat.S_IMODE(info.st_mode)
    member.uid, member.gid = info.st_uid, info.st_gid
    member.mtime = int(info.st_mtime)
    if stat.S_ISLNK(info.st_mode):
        member.type, member.linkname = tarfile.SYMTYPE, linkname or ""
    elif linkname is not None:
        member.type, member.linkname = tarfile.LNKTYPE, linkname
    elif stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
    elif stat.S_ISFIFO(info.st_mode):
        member.type = tarfile.FIFOTYPE
    else:
        member.type, member.size = tarfile.REGTYPE, info.st_size
    return member


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
            raise ArchiveTooLarge(
                f"the archive would be more than the {self.max_bytes} bytes a saved image may be", self.max_bytes
            )
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
                raise ArchiveTooLarge(f"{path.name} is more than the {max_bytes} bytes a saved image may be", max_bytes)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(path: Path, max_bytes: int | None = MAX_ARCHIVE_BYTES, compressed: bool = False) -> None:
    """ArchiveError unless ``path`` is a regular file (not a link) of at most ``max_bytes`` (None: any size) holding a
    plain tar archive (with ``compressed``, also one compressed as extraction reads it: gzip, bzip2, xz) whose members
    are regular files, directories, symbolic links, hard links or FIFOs with relative names free of '..', each name
    once, hard links to earlier regular files only, symbolic links whose relative target does not climb above the
    root file system (an absolute target is the container's own), and no member under a symbolic link of the
    archive."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise ArchiveError(f"{path.name}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ArchiveError(f"{path.name} is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise ArchiveError(f"{path.name} is {info.st_size} bytes, more than the {max_bytes} a saved image may be")
    seen: set[str] = set()
    files: set[str] = set()  # regular files: the only members a hard link may name
    links: set[str] = set()
    try:
        # "r:": uncompressed only, for what a node wrote (no decompression bomb); an operator's own archive is read as
        # extraction reads it ("r:*").
        with tarfile.open(path, "r:*" if compressed else "r:") as tar:
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
                    # An absolute target is normal in a root file system (the container's own root); a relative one
                    # climbing above the root with '..' names a file of the aggregate's host, where it is unpacked.
                    if link_climbs_out(str(Path(name).parent), member.linkname):
                        raise ArchiveError(f"symbolic link {member.name!r} leads out of the root file system")
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


def link_climbs_out(directory: str, target: str) -> bool:
    """A relative link target, followed from ``directory`` (relative to the root), leaves the root, read by name as
    the container reads it (no link of the tree is ever followed on the host); an absolute one never does."""
    if target.startswith("/"):
        return False
    depth = 0 if directory in ("", ".") else len(directory.split("/"))
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False
