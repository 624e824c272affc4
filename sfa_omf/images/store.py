"""The image repository: image files in the data directory's image store, one row each in the calendar's database.

- ``add`` copies the file into the store under a fresh name while computing its SHA-256 (one read of the source),
  syncs it, then records the row; a label that exists already, a source that cannot be read or a full disk leave
  neither file nor row behind.
- ``remove`` checks, in the same unit of work that deletes the row, that no current or future lease (allocated or
  provisioned, ending after now) names the image; if one does it refuses, naming those leases, and changes nothing.
  The file goes after the row: a crash in between leaves an unused file, never a row without its file.
- Reads (``images``, ``get``, ``labels``, ``uses``) are column queries into ImageRecord.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import NOT_IN_NAMES, NOT_IN_TEXT
from sfa_omf.calendar.models import Lease, LeaseInstance, Node, RepositoryImage, Slice, Sliver
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.images.records import ImageRecord, ImageUse
from sfa_omf.times import format_time

#: A label is a request's <disk_image name>, a file-name part and an argument of the site's deploy command: keep it
#: to characters no shell or URL treats specially.
VALID_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # fullmatch: "$" would let a trailing newline in
MAX_FIELD_CHARS = 100  # the os and version columns, and each hardware type
STORE_DIR_NAME = "images"
CHUNK = 4 * 1024 * 1024  # copy buffer: large enough that the copy runs at disk speed
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
    ) -> ImageRecord:
        """Copy ``source`` into the store as ``label``; ALREADY_EXISTS if the label is taken, BADARGS if the source is
        no readable regular file."""
        check_label(label)
        check_image_text(os_name, version, description, hardware_types)
        source_path = Path(source)
        if not source_path.is_file():
            raise BadArgs(f"{source}: no such regular file to add as image {label!r}")
        if self.get(label) is not None:  # early, to spare a long copy; the insert below is what decides
            raise GeniError(Reason.ALREADY_EXISTS, _taken(label))
        self.directory.mkdir(parents=True, exist_ok=True)
        file_name = f"{label}-{uuid.uuid4().hex}.img"
        target = self.directory / file_name
        try:
            digest, size = _copy_hashing(source_path, target)
            with self.database.write() as session:
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
        """Make a private image (one saved from a container) usable by everybody and advertised; NOT_FOUND naming the
        known labels for an unknown one. Publishing a public image changes nothing."""
        with self.database.write() as session:
            row = session.scalar(select(RepositoryImage).where(RepositoryImage.label == label))
            if row is None:
                raise GeniError(Reason.NOT_FOUND, _unknown(label, self.labels()))
            row.private = False
        return self.show(label)

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
    """Copy with one read of the source, hashing as it goes; the copy is on disk (fsync) before it is recorded."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(source, "rb", buffering=0) as reader, open(target, "xb", buffering=0) as writer:
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
