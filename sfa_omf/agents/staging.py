"""Files staged in to a lease's node and out of it, kept by the aggregate in its data directory.

    DATA_DIR/agent_files/<lease id>/<hostname>/in/<name>    put by the operator (sfa-omf lease stage-in),
                                                             fetched by the node's agent at the lease's start
    DATA_DIR/agent_files/<lease id>/<hostname>/out/<name>   put by the agent (PUT, at the lease's end),
                                                             collected by the operator (sfa-omf lease stage-out)

Every file has a SHA-256 beside it (``<name>.sha256``) that the sender declared and the receiver checked; a body
whose digest differs, a name that is not a plain file name, or a file over the size limit is refused and nothing is
written. Files are written to a temporary name and renamed, so a reader sees the old file or the new one, never a
part; files are 0600 and folders 0700 (made by root, the data directory's owner's); putting the same content again
changes nothing (PUT is idempotent). A staged-out file is never replaced by another content (ALREADY_EXISTS): two
accounts of a lease may send files of the same name (an agent sends them as ``<login>.<name>`` when the lease has
several accounts, an older one does not), and neither may be lost unseen. The operator's stage-in may replace an
input with a newer one.

What agents stage out is bounded (nodes are volunteers' machines, whose keys an experimenter may hold): per lease and
node at most ``max_out_files`` files of ``max_out_bytes`` together (a file replaced counts the difference), and never
when it would leave less than ``min_free_bytes`` free on the data directory's filesystem (the database and the logs
live there). The service (agents/service.py) takes them only from the lease's start until a grace after its end.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.errors import GeniError, Reason
from sfa_omf.files import replace_file

DIRECTIONS = ("in", "out")
#: Defaults of [sfa_agents] max_stage_out_files, max_stage_out_bytes and min_free_bytes (sfa_omf/config.py).
DEFAULT_MAX_OUT_FILES = 1000
DEFAULT_MAX_OUT_BYTES = 1024**3
DEFAULT_MIN_FREE_BYTES = 1024**3
#: The longest file name kept.
MAX_NAME_LENGTH = 100
# Checked with fullmatch: with match, '$' also matches before a final newline ("evil.sha256\n" would pass).
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LEASE_ID = re.compile(r"[0-9a-f-]{36}")
_HOSTNAME = re.compile(r"[a-z0-9-]+")


@dataclass(frozen=True)
class StagedFile:
    name: str
    size: int
    sha256: str


def check_name(name: str) -> None:
    """A plain file name: letters, digits, '.', '_', '-', not starting with a dot, at most 100 characters."""
    if not _NAME.fullmatch(name) or name.endswith(".sha256") or name.endswith(".tmp"):
        raise GeniError(
            Reason.BAD_ARGS,
            f"{name!r} is not a file name we keep: letters, digits, '.', '_', '-', not starting with '.', "
            f"not ending in .sha256 or .tmp, at most {MAX_NAME_LENGTH} characters",
        )


class FileStore:
    """The staged files of every lease, under one directory."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        max_out_files: int = DEFAULT_MAX_OUT_FILES,
        max_out_bytes: int = DEFAULT_MAX_OUT_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_out_files = max_out_files
        self.max_out_bytes = max_out_bytes
        self.min_free_bytes = min_free_bytes

    def _folder(self, lease_id: str, hostname: str, direction: str) -> Path:
        if direction not in DIRECTIONS or not _LEASE_ID.fullmatch(lease_id) or not _HOSTNAME.fullmatch(hostname):
            raise GeniError(
                Reason.BAD_ARGS, f"no staging area for lease {lease_id!r}, node {hostname!r}, {direction!r}"
            )
        return self.directory / lease_id / hostname / direction

    def kept_already(self, lease_id: str, hostname: str, direction: str, name: str, sha256: str) -> bool:
        """Whether exactly this file (``name`` with this SHA-256) is kept already: a PUT sent again, its first answer
        lost, changes nothing and is answered so whatever the lease's window (False for a name or digest that is not
        valid: put refuses them)."""
        if not _SHA256.fullmatch(sha256 or ""):
            return False
        try:
            check_name(name)
        except GeniError:
            return False
        folder = self._folder(lease_id, hostname, direction)
        digest = folder / f"{name}.sha256"
        return digest.is_file() and (folder / name).is_file() and digest.read_text().strip() == sha256

    def put(self, lease_id: str, hostname: str, direction: str, name: str, data: bytes, sha256: str) -> bool:
        """Keep ``data`` as ``name``; True when it changed anything. Refused (nothing written) when the declared
        SHA-256 is not the data's, the name is not plain, the data is over the limit, or (staged out) another
        content is already kept under the name."""
        check_name(name)
        if not _SHA256.fullmatch(sha256 or ""):
            raise GeniError(Reason.BAD_ARGS, "declare the file's SHA-256 (64 lower-case hex digits)")
        if len(data) > self.max_bytes:
            raise GeniError(Reason.TOO_BIG, f"{name} is {len(data)} bytes, over the limit of {self.max_bytes}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise GeniError(
                Reason.BAD_ARGS, f"{name}: the data's SHA-256 is {actual}, not the declared {sha256}: send it again"
            )
        folder = self._folder(lease_id, hostname, direction)
        path = folder / name
        digest = folder / f"{name}.sha256"
        if digest.exists() and digest.read_text().strip() == sha256 and path.exists():
            return False
        # The kept file's own bytes, not its .sha256 (which a crash may have left unwritten), say what it holds.
        if direction == "out" and path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            raise GeniError(
                Reason.ALREADY_EXISTS,
                f"{name}: a file of this name with other content is already staged out for lease {lease_id} from "
                f"{hostname}; it is kept and this one is not (nothing staged out is replaced). An up-to-date agent "
                "sends the files of a lease's several accounts as <login>.<name>: update the node's agent, or give "
                "the accounts' files different names",
            )
        owner = self._owner()
        if direction == "in":  # the operator's: bounded by the operator's own disk
            self._make_folders(folder, owner)
            self._write(path, digest, data, sha256, owner)
            return True
        # Staged out by an agent (a volunteer's machine, whose key an experimenter may hold): bounded per lease and
        # node, and never into the data directory's last free bytes (the database and the logs need them).
        self._check_free(lease_id, hostname, name, len(data))
        self._check_quota(lease_id, hostname, name, len(data), 0, 0)  # before making folders: a refusal writes none
        self._make_folders(folder, owner)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # One stage-out of this lease and node at a time (threads and processes alike): two concurrent PUTs
            # cannot both fit under the quota that only one of them fits under.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            files, used = _usage(folder)
            replaced = path.stat().st_size if path.exists() else None
            self._check_quota(
                lease_id, hostname, name, len(data), files - (replaced is not None), used - (replaced or 0)
            )
            self._write(path, digest, data, sha256, owner)
        finally:
            os.close(descriptor)  # releases the lock
        return True

    def _write(self, path: Path, digest: Path, data: bytes, sha256: str, owner: tuple[int, int] | None) -> None:
        for target, content in ((path, data), (digest, f"{sha256}\n".encode("ascii"))):
            # Whole, 0600 whatever the umask, through a new temporary name (nothing there is followed or shared).
            replace_file(str(target), content, 0o600, owner)

    def _check_quota(self, lease_id: str, hostname: str, name: str, size: int, files: int, used: int) -> None:
        """TOO_BIG when ``name`` (``size`` bytes) added to ``files`` files of ``used`` bytes (what is kept for the
        lease and node, less a file it replaces) goes over max_out_files or max_out_bytes."""
        where = f"lease {lease_id} from {hostname}"
        if files + 1 > self.max_out_files:
            raise GeniError(
                Reason.TOO_BIG,
                f"{name}: {files} files are staged out for {where}, the most kept ([sfa_agents] max_stage_out_files "
                f"{self.max_out_files}): not kept; bundle the files of ~/stage-out into fewer (an archive)",
            )
        if used + size > self.max_out_bytes:
            raise GeniError(
                Reason.TOO_BIG,
                f"{name}: {used} bytes are staged out for {where}; its {size} bytes would make {used + size}, over "
                f"the limit of {self.max_out_bytes} ([sfa_agents] max_stage_out_bytes): not kept",
            )

    def _check_free(self, lease_id: str, hostname: str, name: str, size: int) -> None:
        """UNAVAILABLE (the agent sends the file again later) when keeping ``size`` bytes would leave less than
        min_free_bytes free on the data directory's filesystem."""
        status = os.statvfs(self.directory.parent)  # the data directory: made at init, always there
        free = status.f_bavail * status.f_frsize
        if free - size < self.min_free_bytes:
            raise GeniError(
                Reason.UNAVAILABLE,
                f"{name} (lease {lease_id} from {hostname}): the aggregate's data directory has {free} bytes free, "
                f"and keeping {size} more would leave less than its reserve of {self.min_free_bytes} bytes "
                "([sfa_agents] min_free_bytes): not kept; send it again later (the operator must free space)",
            )

    def _owner(self) -> tuple[int, int] | None:
        """Whom files made by root belong to: the data directory's owner (the aggregate's service user serves them,
        and a root's stage-in must stay readable to it). None when not root: the files are the caller's."""
        if os.geteuid() != 0:
            return None
        status = self.directory.parent.stat()
        return status.st_uid, status.st_gid

    def _make_folders(self, folder: Path, owner: tuple[int, int] | None) -> None:
        """Make ``folder`` and the folders between it and the data directory that are missing, 0700 (the files of
        one lease are its experimenters' and operator's, not every local user's)."""
        missing = []
        level = folder
        while level != self.directory.parent and not level.is_dir():
            missing.append(level)
            level = level.parent
        for level in reversed(missing):
            try:
                os.mkdir(level, 0o700)
            except FileExistsError:
                continue  # made by a concurrent put: as this one would
            os.chmod(level, 0o700, follow_symlinks=False)  # whatever the umask
            if owner is not None:
                os.chown(level, *owner, follow_symlinks=False)

    def get(self, lease_id: str, hostname: str, direction: str, name: str) -> tuple[bytes, str]:
        """(data, SHA-256) of a staged file, or NOT_FOUND."""
        check_name(name)
        folder = self._folder(lease_id, hostname, direction)
        path, digest = folder / name, folder / f"{name}.sha256"
        if not (path.exists() and digest.exists()):
            raise GeniError(Reason.NOT_FOUND, f"no file {name} staged {direction} for lease {lease_id} on {hostname}")
        return path.read_bytes(), digest.read_text().strip()

    def list(self, lease_id: str, hostname: str, direction: str) -> list[StagedFile]:
        folder = self._folder(lease_id, hostname, direction)
        if not folder.is_dir():
            return []
        files = []
        for digest in sorted(folder.glob("*.sha256")):
            path = folder / digest.name[: -len(".sha256")]
            if path.exists():
                files.append(StagedFile(path.name, path.stat().st_size, digest.read_text().strip()))
        return files


def _usage(folder: Path) -> tuple[int, int]:
    """(files, bytes) kept in a staging folder: its files, not their .sha256 nor a put's temporary file."""
    files = used = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith((".sha256", ".tmp")) or not entry.is_file(follow_symlinks=False):
                continue
            files += 1
            used += entry.stat(follow_symlinks=False).st_size
    return files, used
