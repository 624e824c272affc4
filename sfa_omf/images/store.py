"""The image repository: image files in the data directory's image store, one row each in the calendar's database.

- ``add`` copies the file into the store under a fresh name while computing its SHA-256 (one read of the source),
  syncs it, then records the row; a label that exists already, a source that cannot be read or a full disk leave
  neither file nor row behind. A tar archive is checked as a container's image (archives.check_archive: what
  extraction refuses is refused when it is added, not at a lease's start); another file (a disk image a site's deploy
  command installs) is kept as it is.
- A save (``add`` with a ``SaveQuota``: a private image, sfa_omf/images/instances.py) is bounded per user: the images
  a user saved that are still private, their number and their bytes, and the free space left on the store's
  filesystem. ``room_for_save`` refuses before anything is written; ``add`` checks again with the size and, in the
  unit of work that records the row (one save of a user at a time), the count.
- ``remove`` checks, in the same unit of work that deletes the row, that no current or future lease (allocated or
  provisioned, ending after now) names the image; if one does it refuses, naming those leases, and changes nothing.
  The file goes after the row: a crash in between leaves an unused file, never a row without its file.
- Reads (``images``, ``get``, ``labels``, ``uses``) are column queries into ImageRecord.
- Modes are set, never left to the umask: a public image is 0644 and the store's folder 0755 when the store makes
  it (OAR nodes read public images from a read-only export, their root squashed to "other"); a private image (a
  user's saved container) is 0600, readable by the aggregate's account alone, until ``publish`` makes it 0644. A
  lease on an OAR node using one gets its own copy in that node's directory (node_plans.LeasePlans.hand_image).
  ``secure_modes`` brings the files of a store made before to these modes, once at start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import NOT_IN_NAMES, NOT_IN_TEXT
from sfa_omf.calendar.models import Lease, LeaseInstance, Node, RepositoryImage, Slice, Sliver
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.images.archives import ArchiveError, check_archive
from sfa_omf.images.records import ImageRecord, ImageUse
from sfa_omf.times import format_time

if TYPE_CHECKING:
    from sfa_omf.config import Settings

log = logging.getLogger(__name__)

#: A label is a request's <disk_image name>, a file-name part and an argument of the site's deploy command: keep it
#: to characters no shell or URL treats specially.
VALID_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # fullmatch: "$" would let a trailing newline in
MAX_FIELD_CHARS = 100  # the os and version columns, and each hardware type
STORE_DIR_NAME = "images"
CHUNK = 4 * 1024 * 1024  # copy buffer: large enough that the copy runs at disk speed
PUBLIC_MODE = 0o644  # every OAR node reads public images from the store's read-only export (as "other")
PRIVATE_MODE = 0o600  # a user's saved container: the aggregate's account only, never a node's squashed root
DIRECTORY_MODE = 0o755
_ACTIVE = ("allocated", "provisioned")
_COLUMNS = (
    RepositoryImage.label,
    RepositoryImage.file_name,
    RepositoryImage.sha256,
    RepositoryImage.size,
    RepositoryImage.os,
    RepositoryImage.version,
    RepositoryImage.description,
    RepositoryImage.hardware_types,
    RepositoryImage.added_by,
    RepositoryImage.added_s,
    RepositoryImage.private,
)
_ALL_IMAGES = select(*_COLUMNS).order_by(RepositoryImage.label)
#: Defaults of [sfa_omf] max_saved_images, max_saved_image_bytes and image_min_free_bytes (sfa_omf/config.py).
DEFAULT_MAX_SAVED_IMAGES = 10
DEFAULT_MAX_SAVED_IMAGE_BYTES = 10 * 1024**3
DEFAULT_IMAGE_MIN_FREE_BYTES = 1024**3
#: PostgreSQL advisory lock class of one user's saves (the other number is the user's hash): two saves of one user
#: at once check the quota one after the other (SQLite's write lock does so already).
SAVER_LOCK_CLASS = 0x5F0D
#: What a user refused for their quota can do. The AM API has no call deleting one's own image: an operator does.
MAKING_ROOM = (
    "To make room, ask the aggregate's operator to remove one of your saved images (sfa-omf image remove LABEL) or to "
    "publish it (sfa-omf image publish LABEL: a published image no longer counts against you)"
)
LABELS_LISTED = 10  # a refusal names at most this many of the user's images


@dataclass(frozen=True)
class SaveQuota:
    """What one user may keep of the images they saved that are still private (a published one no longer counts),
    and the free space no save may go under on the image store's filesystem (the calendar's SQLite database and the
    other users' images live there): ``[sfa_omf] max_saved_images``, ``max_saved_image_bytes``,
    ``image_min_free_bytes``."""

    max_images: int = DEFAULT_MAX_SAVED_IMAGES
    max_bytes: int = DEFAULT_MAX_SAVED_IMAGE_BYTES
    min_free_bytes: int = DEFAULT_IMAGE_MIN_FREE_BYTES

    @staticmethod
    def of(settings: Settings) -> SaveQuota:
        """The quota the configuration sets."""
        return SaveQuota(settings.max_saved_images, settings.max_saved_image_bytes, settings.image_min_free_bytes)


def store_directory(data_dir: str) -> Path:
    """The image store of a data directory."""
    return Path(data_dir) / STORE_DIR_NAME


def check_image_text(os_name: str, version: str, description: str, hardware_types: Sequence[str]) -> None:
    """BADARGS naming the field and the character when an image's text cannot be advertised or stored: a control
    character, or more than its column holds."""
    # The inventory's rules for what an advertisement can carry: no control character in names, none but tabs and
    # line ends in free text. One such character made every ListResources fail.
    fields = [("os", os_name, NOT_IN_NAMES), ("version", version, NOT_IN_NAMES)]
    fields += [("hardware type", name, NOT_IN_NAMES) for name in hardware_types]
    for what, value, refused in [*fields, ("description", description, NOT_IN_TEXT)]:
        found = refused.search(value)
        if found is not None:
            raise BadArgs(
                f"the image's {what} {value[:60]!r} holds the control character U+{ord(found.group()):04X} at "
                f"position {found.start() + 1}: remove it"
            )
        if what != "description" and len(value) > MAX_FIELD_CHARS:
            raise BadArgs(f"the image's {what} is {len(value)} characters long, over the {MAX_FIELD_CHARS} allowed")


def check_label(label: str) -> str:
    """The label if it is usable, else BADARGS saying which characters are."""
    if not VALID_LABEL.fullmatch(label or ""):
        raise BadArgs(
            f"image label {label!r} is not valid: 1 to 100 characters, letters, digits, '.', '_' or '-', starting with "
            "a letter or a digit"
        )
    return label


class ImageStore:
    """The repository of one aggregate: files under ``directory``, rows in ``database``."""

    def __init__(self, database: Database, directory: str | os.PathLike[str]) -> None:
        self.database = database
        self.directory = Path(directory)

    # -- changing the store (operators; the CLI checks the group first) -----------------------------------------
    def add(
        self,
        source: str | os.PathLike[str],
        label: str,
        added_by: str,
        now: datetime,
        os_name: str = "",
        version: str = "",
        description: str = "",
        hardware_types: Sequence[str] = (),
        private: bool = False,
        quota: SaveQuota | None = None,
    ) -> ImageRecord:
        """Copy ``source`` into the store as ``label``; ALREADY_EXISTS if the label is taken, BADARGS if the source is
        no readable regular file or a tar archive a container could not use (check_archive). With ``quota`` (a save:
        private to ``added_by``): TOO_BIG over the user's quota, UNAVAILABLE when the copy would go under the
        filesystem's reserve. Refused, it leaves neither file nor row."""
        check_label(label)
        check_image_text(os_name, version, description, hardware_types)
        source_path = Path(source)
        if not source_path.is_file():
            raise BadArgs(f"{source}: no such regular file to add as image {label!r}")
        if self.get(label) is not None:  # early, to spare a long copy; the insert below is what decides
            raise GeniError(Reason.ALREADY_EXISTS, _taken(label))
        if quota is not None:  # before the copy: a save over quota writes nothing
            self._check_save(added_by, label, quota, source_path.stat().st_size)
        self._make_directory()
        file_name = f"{label}-{uuid.uuid4().hex}.img"
        target = self.directory / file_name
        try:
            digest, size = _copy_hashing(source_path, target)  # PRIVATE_MODE until it is whole and checked
            if not private:
                os.chmod(target, PUBLIC_MODE)
            _check_container_image(target, source, label)  # the copy: what is kept is what was checked
            with self.database.write() as session:
                if quota is not None:  # again, one save of the user at a time: two at once cannot both fit
                    _one_save_at_a_time(session, added_by)
                    _check_quota(session, added_by, label, size, quota)
                session.add(
                    RepositoryImage(
                        label=label,
                        file_name=file_name,
                        sha256=digest,
                        size=size,
                        os=os_name,
                        version=version,
                        description=description,
                        hardware_types=sorted(set(hardware_types)),
                        added_by=added_by,
                        added_s=to_s(now),
                        private=private,
                    )
                )
        except IntegrityError as exc:  # another operator added the same label meanwhile
            target.unlink(missing_ok=True)
            raise GeniError(Reason.ALREADY_EXISTS, _taken(label)) from exc
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise GeniError(Reason.BAD_ARGS, f"could not copy {source} into the image store: {exc}") from exc
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        record = self.get(label)
        assert record is not None  # just committed
        return record

    def remove(self, label: str, now: datetime) -> ImageRecord:
        """Remove an image no current or future lease uses; otherwise POLICY (geni 7) naming the leases."""
        with self.database.write() as session:
            row = session.scalar(
                select(RepositoryImage).where(RepositoryImage.label == label).with_for_update()
            )  # FOR UPDATE: two removals of one label queue (SQLite's write lock does the same)
            if row is None:
                raise GeniError(Reason.NOT_FOUND, _unknown(label, self.labels()))
            uses = _uses(session, label, now)
            if uses:
                named = "; ".join(
                    f"lease {use.lease_id} of {use.slice_urn} ({use.state}, {format_time(use.start)} to "
                    f"{format_time(use.end)}, {', '.join(use.nodes)})"
                    for use in uses
                )
                raise GeniError(
                    Reason.POLICY,
                    f"image {label!r} is used by {len(uses)} current or future lease(s): {named}. Remove it once they "
                    "have ended or been deleted (policy rule image_in_use)",
                )
            record = _record_of(self.directory, row)
            session.delete(row)
        Path(record.path).unlink(missing_ok=True)
        return record

    def publish(self, label: str) -> ImageRecord:
        """Make a private image (one saved from a container) usable by everybody and advertised, its file readable
        by all (PUBLIC_MODE: OAR nodes read it from the store's export); NOT_FOUND naming the known labels for an
        unknown one, INSUFFICIENT_PRIVILEGES (FORBIDDEN) when this account may not set its file's mode (only the
        file's owner or root may), nothing changed.
        Publishing a public image changes nothing."""
        opened: Path | None = None
        try:
            with self.database.write() as session:
                row = session.scalar(select(RepositoryImage).where(RepositoryImage.label == label))
                if row is None:
                    raise GeniError(Reason.NOT_FOUND, _unknown(label, self.labels()))
                if row.private:
                    row.private = False
                    # Before the commit: a file that cannot be opened to all publishes nothing.
                    opened = self.directory / row.file_name
                    if stat.S_IMODE(opened.stat().st_mode) != PUBLIC_MODE:  # as a store made before modes left it
                        os.chmod(opened, PUBLIC_MODE)
        except BaseException as exc:
            if opened is not None:  # the row stays private: so does its file
                with contextlib.suppress(OSError):
                    os.chmod(opened, PRIVATE_MODE)
            if isinstance(exc, OSError):
                raise GeniError(
                    Reason.INSUFFICIENT_PRIVILEGES if isinstance(exc, PermissionError) else Reason.SERVER_ERROR,
                    f"image {label!r} was not published: its file could not be made readable by all ({exc}). Only "
                    "its owner (the aggregate's account, which saved it) or root may: run the command as one of "
                    "them (in [sfa_omf] image_group). Nothing was changed",
                ) from exc
            raise
        return self.show(label)

    def secure_modes(self) -> int:
        """Give every stored image file the mode its row says (private PRIVATE_MODE, public PUBLIC_MODE): a store
        written before modes were set kept what the umask gave (a private image readable by any local user, and by
        every OAR node's root through the store's export). Run once at start-up: one query and a stat per image.
        Returns how many files changed; a file that cannot be changed is logged, the others still are."""
        if not self.directory.is_dir():
            return 0
        changed = 0
        with self.database.read() as session:
            rows = session.execute(select(RepositoryImage.file_name, RepositoryImage.private)).all()
        for file_name, private in rows:
            path = self.directory / file_name
            wanted = PRIVATE_MODE if private else PUBLIC_MODE
            try:
                found = path.lstat()
                if not stat.S_ISREG(found.st_mode) or stat.S_IMODE(found.st_mode) == wanted:
                    continue
                if found.st_uid != os.geteuid() != 0:  # a command run by another account: the service does it
                    continue
                os.chmod(path, wanted)
                changed += 1
            except OSError as exc:
                log.warning("image file %s: its mode could not be set to %o: %s", path, wanted, exc)
        if changed:
            log.info(
                "image store %s: %d image file(s) given their mode (private 600, public 644)", self.directory, changed
            )
        return changed

    def _make_directory(self) -> None:
        """The store's folder, made DIRECTORY_MODE whatever the umask (an existing one is left as the operator set
        it)."""
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, DIRECTORY_MODE)

    # -- saves (sfa_omf/images/instances.py): bounded per user ---------------------------------------------------
    def saved_by(self, user: str) -> list[ImageRecord]:
        """The images ``user`` saved that are still private, by label: what counts against their quota."""
        with self.database.read() as session:
            rows = session.execute(_ALL_IMAGES.where(*_saved_by(user))).all()
        return [_record_of(self.directory, row) for row in rows]

    def room_for_save(self, user: str, label: str, quota: SaveQuota) -> int:
        """The bytes a save of ``label`` by ``user`` may still write: the least of what their quota leaves and what
        the store's filesystem has above its reserve. Refused before anything is written: TOO_BIG when the user keeps
        ``max_images`` private images or ``max_bytes`` of them already, UNAVAILABLE when the filesystem is at its
        reserve (the message says the use, the limit and how to make room)."""
        self._check_save(user, label, quota, 0)
        with self.database.read() as session:
            _, used, _ = _usage(session, user)
        return min(quota.max_bytes - used, free_bytes(self.directory) - quota.min_free_bytes)

    def refuse_save(self, user: str, label: str, quota: SaveQuota, size: int, at_least: bool = True) -> NoReturn:
        """Raise the refusal of a save of (``at_least``) ``size`` bytes, past the room room_for_save gave it: TOO_BIG
        saying the user's use and limit, or UNAVAILABLE naming the reserve."""
        self._check_save(user, label, quota, size, at_least)
        # It fits now: room was made while it was written (another image removed or published). Still refused: what
        # was written stopped at the bound.
        raise GeniError(
            Reason.UNAVAILABLE,
            f"image {label!r} was not saved: it grew past the {size - 1} bytes there was room for when the save began "
            "(in your quota or above the image store's reserve), and room was made since: save again",
        )

    def _check_save(self, user: str, label: str, quota: SaveQuota, size: int, at_least: bool = False) -> None:
        """TOO_BIG or UNAVAILABLE when a save of ``size`` bytes (0: not known yet) does not fit."""
        with self.database.read() as session:
            _check_quota(session, user, label, size, quota, at_least)
        free = free_bytes(self.directory)
        if free - max(size, 1) < quota.min_free_bytes:
            raise GeniError(Reason.UNAVAILABLE, _reserve_refusal(label, free, size, quota, at_least))

    # -- reading -------------------------------------------------------------------------------------------------
    def images(self) -> list[ImageRecord]:
        """Every image, by label. One statement built once, one round trip: Allocate reads them on every call."""
        return [_record_of(self.directory, row) for row in self.database.fetch_all(_ALL_IMAGES)]

    def get(self, label: str) -> ImageRecord | None:
        with self.database.read() as session:
            row = session.execute(select(*_COLUMNS).where(RepositoryImage.label == label)).first()
        return _record_of(self.directory, row) if row is not None else None

    def show(self, label: str) -> ImageRecord:
        """The image, or NOT_FOUND listing the known labels."""
        record = self.get(label)
        if record is None:
            raise GeniError(Reason.NOT_FOUND, _unknown(label, self.labels()))
        return record

    def labels(self) -> list[str]:
        with self.database.read() as session:
            return list(session.scalars(select(RepositoryImage.label).order_by(RepositoryImage.label)))

    def uses(self, label: str, now: datetime) -> list[ImageUse]:
        """The current and future leases naming the image."""
        with self.database.read() as session:
            return _uses(session, label, now)


def _uses(session: Session, label: str, now: datetime) -> list[ImageUse]:
    rows = session.execute(
        select(Lease.id, Slice.urn, Lease.start_s, Lease.end_s, Lease.state, Node.component_id)
        .join(Sliver, Sliver.lease_id == Lease.id)
        .join(Node, Node.id == Sliver.node_id)
        .join(Slice, Slice.id == Lease.slice_id)
        .where(
            # the node's own image, or the image of containers on it
            or_(
                Sliver.disk_image == label,
                Sliver.urn.in_(select(LeaseInstance.sliver_urn).where(LeaseInstance.image == label)),
            ),
            Lease.state.in_(_ACTIVE),
            Lease.end_s > to_s(now),
        )
        .order_by(Lease.start_s, Lease.id, Node.component_id)
    ).all()
    found: dict[str, ImageUse] = {}
    for lease_id, slice_urn, start_s, end_s, state, node in rows:
        use = found.get(lease_id)
        nodes = (*use.nodes, node) if use else (node,)
        found[lease_id] = ImageUse(lease_id, slice_urn, from_s(start_s), from_s(end_s), state, nodes)
    return list(found.values())


def _saved_by(user: str) -> tuple[Any, ...]:
    """The conditions of the images ``user`` saved that are still private."""
    return (RepositoryImage.added_by == user, RepositoryImage.private.is_(True))


def _usage(session: Session, user: str) -> tuple[int, int, list[str]]:
    """How many private images ``user`` saved, their bytes together, and their labels."""
    rows = session.execute(select(RepositoryImage.label, RepositoryImage.size).where(*_saved_by(user))).all()
    return len(rows), sum(int(size) for _, size in rows), sorted(label for label, _ in rows)


def _one_save_at_a_time(session: Session, user: str) -> None:
    """PostgreSQL: until the end of the transaction, the lock of ``user``'s saves (SQLite's BEGIN IMMEDIATE
    serializes the writers already)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:4], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(SAVER_LOCK_CLASS, key)))


def _check_quota(session: Session, user: str, label: str, size: int, quota: SaveQuota, at_least: bool = False) -> None:
    """TOO_BIG when one more private image of ``size`` bytes (0: not known yet, ``at_least``: or more) goes over
    ``user``'s quota, saying what they keep, the limit, and how to make room."""
    count, used, labels = _usage(session, user)
    listed = ", ".join(labels[:LABELS_LISTED])
    if len(labels) > LABELS_LISTED:
        listed += f" and {len(labels) - LABELS_LISTED} more"
    if count + 1 > quota.max_images:
        raise GeniError(
            Reason.TOO_BIG,
            f"image {label!r} was not saved: {user} keeps {count} saved private image(s) ({listed}; {used} bytes "
            f"together), the most one user may keep ([sfa_omf] max_saved_images {quota.max_images}). Nothing was "
            f"saved. {MAKING_ROOM}",
        )
    if used + max(size, 1) > quota.max_bytes:
        if not size:
            more = "no byte is left"
        elif at_least:
            more = f"this one, of at least {size} bytes, would make at least {used + size}"
        else:
            more = f"this one, of {size} bytes, would make {used + size}"
        raise GeniError(
            Reason.TOO_BIG,
            f"image {label!r} was not saved: the saved private images of {user} ({listed or 'none'}) hold {used} "
            f"bytes and {more}, over the {quota.max_bytes} one user may keep ([sfa_omf] max_saved_image_bytes). "
            f"Nothing was saved. {MAKING_ROOM}",
        )


def _reserve_refusal(label: str, free: int, size: int, quota: SaveQuota, at_least: bool = False) -> str:
    kept = f"keeping {'at least ' if at_least else ''}{size} bytes more" if size else "a save"
    return (
        f"image {label!r} was not saved: the image store's filesystem has {free} bytes free, and {kept} would leave "
        f"less than its reserve of {quota.min_free_bytes} bytes ([sfa_omf] image_min_free_bytes). Nothing was saved; "
        "try again later (the aggregate's operator must free space)"
    )


def free_bytes(directory: Path) -> int:
    """The bytes an unprivileged writer may still use on the filesystem of ``directory`` (or of its nearest existing
    parent: the store is made at its first image)."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    status = os.statvfs(directory)
    return status.f_bavail * status.f_frsize


def _check_container_image(path: Path, source: str | os.PathLike[str], label: str) -> None:
    """BADARGS when ``path`` is a tar archive a container could not use: what check_archive refuses (extraction
    refuses it too, at a lease's start). Any size, and compressed as extraction reads it: the operator's own disk.
    A file that is no tar archive at all (a disk image for a site's deploy command) is not a container's image."""
    if not tarfile.is_tarfile(path):
        return
    try:
        check_archive(path, max_bytes=None, compressed=True)
    except ArchiveError as exc:
        raise BadArgs(
            f"{source} was not added as image {label!r}: it is a tar archive no container could start from: {exc}. A "
            "container's image is a tar of a root file system whose members stay inside it (relative names without "
            "'..', no device file, no link leading out, each name once): fix the archive and add it again. Nothing "
            "was added"
        ) from exc


def _record_of(directory: Path, row: Any) -> ImageRecord:
    """An ImageRecord from a column-query row or a RepositoryImage (both have the columns as attributes)."""
    return ImageRecord(
        label=row.label,
        path=str(directory / row.file_name),
        sha256=row.sha256,
        size=int(row.size),
        os=row.os,
        version=row.version,
        description=row.description,
        hardware_types=tuple(row.hardware_types or ()),
        added_by=row.added_by,
        added=from_s(int(row.added_s)),
        private=bool(row.private),
    )


def _copy_hashing(source: Path, target: Path) -> tuple[str, int]:
    """Copy with one read of the source, hashing as it goes, into a new file of PRIVATE_MODE whatever the umask (the
    caller opens a public image to all once it is whole); the copy is on disk (fsync) before it is recorded."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(source, "rb", buffering=0) as reader:
        created = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_MODE)
        with open(created, "wb", buffering=0) as writer:
            os.fchmod(writer.fileno(), PRIVATE_MODE)
            while True:
                count = reader.readinto(buffer)
                if not count:
                    break
                chunk = view[:count]
                digest.update(chunk)
                written = 0
                while written < count:
                    written += writer.write(chunk[written:]) or 0
                size += count
            os.fsync(writer.fileno())
    return digest.hexdigest(), size


def _taken(label: str) -> str:
    return f"an image labelled {label!r} exists already: remove it first or choose another label"


def _unknown(label: str, labels: Sequence[str]) -> str:
    known = ", ".join(labels) if labels else "none yet (sfa-omf image add FILE --label L)"
    return f"no image labelled {label!r} in the repository; known labels: {known}"
