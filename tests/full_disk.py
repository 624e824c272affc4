"""A real small file system to fill, for tests of a full disk: a tmpfs mounted for one test (root needed), and a file
that fills it. Not a mock: the kernel answers ENOSPC as it does on a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.requirements import missing

FILL_BLOCK_BYTES = 4096  # a tmpfs page: written until the kernel refuses, nothing is left


@contextmanager
def small_tmpfs(where: Path, size_kib: int = 512, inodes: int = 64) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB and ``inodes`` inodes (its root directory is one) mounted on ``where`` (made),
    unmounted and removed after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing("a full file system needs root to mount a tmpfs", "not root: no tmpfs can be mounted")
    where.mkdir(parents=True)
    options = f"size={size_kib}k,nr_inodes={inodes},mode=0755"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "sfa-omf-test", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        where.rmdir()
        missing(f"cannot mount a tmpfs: {done.stderr.strip()}", f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazily if something still holds it open: a test that failed must not leave a mount behind.
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)
        where.rmdir()


def remount(where: Path, inodes: int) -> None:
    """Give the tmpfs on ``where`` ``inodes`` inodes (more: room again)."""
    subprocess.run(["mount", "-o", f"remount,nr_inodes={inodes}", str(where)], check=True)


def fill(directory: Path) -> Path:
    """A file in ``directory`` taking every free block of its file system (its inodes left as they are): the file,
    to remove for room again."""
    path = directory / "filler"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    block = bytes(FILL_BLOCK_BYTES)
    try:
        while True:
            try:
                os.write(descriptor, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(descriptor)
    assert os.statvfs(directory).f_bavail == 0, "the file system is not full"
    return path
