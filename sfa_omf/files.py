"""Files and directories the site makes for itself (keys, GIDs, trusted roots, the log): with their modes exactly,
whatever the umask of the process that makes them, and written whole or not at all.

A umask of 000 (a service manager's, a container's) would otherwise leave directories 0777, where any local user
could drop a root certificate or swap a key; and a key written in place, then cut short by a crash, would be left
empty or half written. A directory or file that exists already keeps its mode: an operator may have set it on
purpose.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

#: Private keys, and directories that hold them: the owner only.
PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
#: Certificates (GIDs, trusted roots): anyone may read them.
PUBLIC_FILE = 0o644
PUBLIC_DIRECTORY = 0o755


def make_directories(path: str, mode: int, parents_mode: int = PUBLIC_DIRECTORY) -> bool:
    """Make directory ``path`` with ``mode`` exactly, and any missing directory above it with ``parents_mode``; True
    when ``path`` was made, False when it existed already (its mode then left as it is). Each directory made is
    recorded in its parent on disk (fsync), so that a key written into it next survives a crash with it."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    made = False
    for directory in reversed(missing):
        leaf = directory == missing[0]
        wanted = mode if leaf else parents_mode
        try:
            os.mkdir(directory, wanted)
        except FileExistsError:  # made meanwhile by another process (or a file there: the caller's open says so)
            continue
        os.chmod(directory, wanted)  # mkdir's mode went through the umask
        sync_directory(os.path.dirname(directory))
        made = leaf
    return made


def create_file(path: str, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path``, which must not exist, whole or not at all: into a temporary file beside it (mode
    ``mode`` exactly, ``owner`` (uid, gid) if given), on disk (fsync), then linked to ``path`` and the directory synced.
    A crash leaves either no file or the whole one, never an empty or half-written key. FileExistsError when ``path``
    exists (made meanwhile by another process too): nothing is overwritten. The directory must exist."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = _write_temporary(directory, os.path.basename(path), data, mode, owner)
    try:
        os.link(temporary, path)  # unlike a rename, fails when path exists
    finally:
        os.unlink(temporary)
    sync_directory(directory)


def replace_file(path: str, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path`` at once, replacing what is there: a reader sees the old file or the new one, never
    half of one (a temporary file, synced, renamed over it). The new file's mode is ``mode`` exactly, its owner
    ``owner`` (uid, gid) when given."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = _write_temporary(directory, os.path.basename(path), data, mode, owner)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    sync_directory(directory)


def open_append(path: str, mode: int) -> int:
    """A descriptor appending to ``path``; a file made here gets ``mode`` exactly (an existing one keeps its own)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags | os.O_EXCL, mode)
    except FileExistsError:
        # There (or a link to a file not made yet, or removed meanwhile: made now with at most ``mode``, the umask
        # only taking bits away).
        return os.open(path, flags, mode)
    os.fchmod(descriptor, mode)
    return descriptor


def sync_directory(directory: str) -> None:
    """Put the directory's entries on disk (a file linked, renamed or made in it)."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_temporary(directory: str, name: str, data: bytes, mode: int, owner: tuple[int, int] | None) -> str:
    """A new file in ``directory`` holding ``data``, synced to disk, of ``mode`` (and ``owner``); its path. Its name
    starts with a dot and ends in .tmp, so that nothing reading the directory (the trusted roots' watcher) takes it."""
    # (The name's start only: the whole name may be as long as a file name can be.)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name[:40]}.", suffix=".tmp")  # made 0600
    try:
        with os.fdopen(descriptor, "wb") as out:
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            os.fchmod(out.fileno(), mode)  # after fchown, which may clear set-id bits; not reduced by the umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary
