"""The ol lease dialect (omf_sfa, jFed, MySlice) in requests.

    <ol:lease client_id="l1" valid_from="2026-12-01T10:00:00Z" valid_until="2026-12-01T11:00:00Z"/>
    <node client_id="n1" ...><ol:lease_ref id_ref="l1"/></node>

A lease is named by client_id, or by id in older requests. An id that is a UUID names a lease the aggregate issued
(shown in an advertisement or manifest) that the client re-uses. sfa-omf also reads ``duration`` (seconds) in place
of valid_until, and a lease with a duration and no valid_from asks for the earliest common free slot.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from lxml import etree

from rspec.model import MAX_DURATION
from rspec.namespaces import GENI_V3, OL, geni, ol
from rspec.reading import Reader

LEASE = ol("lease")
LEASE_REF = ol("lease_ref")
NODE = geni("node")


@dataclass(frozen=True)
class OlLease:
    """An ol:lease as read: the names lease_refs may use for it, and its slot (start None: as soon as possible)."""

    element: etree._Element
    names: tuple[str, ...]
    client_id: str | None
    existing_id: str | None
    start: datetime | None
    duration: timedelta


def read_leases(reader: Reader, root: etree._Element) -> list[OlLease]:
    """Every top-level ol:lease of a request; leases with problems are reported and left out."""
    leases = []
    for element in root.iterchildren(LEASE):
        lease = _read_lease(reader, element)
        if lease is not None:
            leases.append(lease)
    for element in root.iterdescendants(LEASE):
        if element.getparent() is not root:
            reader.report(element, "ol:lease belongs at the top level; nodes refer to it with ol:lease_ref")
    return leases


def report_foreign_leases(reader: Reader, root: etree._Element) -> None:
    """Report lease and lease_ref elements in a mistyped ol namespace (a trailing slash, https, another case, or
    omf_sfa's): left to GENI's extension rule they would pass unread, and their nodes be booked in the default slot
    from now instead of the one asked for. Other namespaces' elements of those names are extensions, left alone."""
    for parent in (root, *root.iterchildren(NODE)):
        for element in parent.iterchildren("{*}lease", "{*}lease_ref"):
            if reader.full:
                return
            namespace = etree.QName(element).namespace or ""
            if namespace not in (OL, GENI_V3) and _looks_like_ol(namespace):
                reader.report(
                    element,
                    f'not read, so its time slot would be ignored: ol leases are in namespace "{OL}"',
                )


def _looks_like_ol(namespace: str) -> bool:
    """Whether a namespace is the ol one mistyped, or another testbed software's name for it (omf_sfa's)."""
    bare = namespace.lower().split("://", 1)[-1].rstrip("/")
    return bare == OL.split("://", 1)[1] or "nitlab" in bare or "mytestbed" in bare


def read_refs(reader: Reader, node: etree._Element) -> list[tuple[etree._Element, str]]:
    """The (element, id_ref) of each ol:lease_ref in a node."""
    refs = []
    for element in node.iterchildren(LEASE_REF):
        id_ref = reader.text(element, "id_ref", required=True)
        if id_ref is not None:
            refs.append((element, id_ref))
    return refs


def _read_lease(reader: Reader, element: etree._Element) -> OlLease | None:
    client_id = reader.text(element, "client_id")
    lease_id = reader.text(element, "id")
    if client_id is None and lease_id is None:
        reader.report(element, "a lease needs a client_id (its name in this request) or the id of an existing lease")
        return None
    existing_id = lease_id if lease_id is not None and (client_id is not None or _is_uuid(lease_id)) else None
    names = tuple(name for name in (client_id, lease_id) if name is not None)
    label = client_id if client_id is not None else (None if existing_id else lease_id)

    before = len(reader.problems)
    start = reader.rfc3339(element, "valid_from")
    until = reader.rfc3339(element, "valid_until")
    seconds = reader.positive_int(element, "duration", "seconds", maximum=int(MAX_DURATION.total_seconds()))
    if len(reader.problems) > before:
        return None  # an unreadable time or duration, reported
    fixed = start is not None and (until is None) != (seconds is None)
    asap = start is None and until is None and seconds is not None
    if not (fixed or asap):
        reader.report(
            element,
            "expected valid_from with valid_until (or with duration in seconds), or duration alone for "
            "'as soon as possible'",
        )
        return None
    if until is not None:
        assert start is not None
        if until <= start:
            reader.report(element, "valid_until must be after valid_from")
            return None
        duration = until - start
    else:
        assert seconds is not None
        duration = timedelta(seconds=seconds)
    return OlLease(element, names, label, existing_id, start, duration)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
