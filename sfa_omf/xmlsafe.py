"""Parsing XML from strangers: no entities, no DTDs, no network, bounded size and depth.

Everything sfa-omf reads from the network (credentials, RSpecs) goes through ``parse_untrusted``. It refuses fast,
before libxml2 builds anything large, and says what was wrong so the sender can fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64

# A DOCTYPE can declare entities (billion laughs, quadratic blowup) or point outside (XXE). We have no use for one.
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_ENTITY = re.compile(rb"<!ENTITY", re.IGNORECASE)
_DECLARATION = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)  # one scan for the usual document, that has none


# libxml2's own guards (nesting depth, entity amplification) speak of limits, not of syntax: report them as hostile.
_LIBXML_LIMIT_MARKERS = ("Excessive depth", "amplification", "entity reference loop", "Maximum entity")


def _declarations_text(raw: bytes) -> bytes:
    """The bytes to scan for DOCTYPE/ENTITY: UTF-16/32 documents are decoded first so the scan sees them too."""
    head = raw[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
            try:
                return raw.decode(encoding).encode("utf-8", "replace")
            except UnicodeDecodeError:
                continue
    return raw


class UnsafeXml(ValueError):
    """The document was refused before or while parsing; the message says why."""


@dataclass(frozen=True)
class XmlLimits:
    """What an untrusted document may cost us. ``max_attributes`` and ``max_namespace_declarations`` (None: no
    limit) bound documents that are canonicalized (signed ones): libxml2's C14N sorts an element's attributes and
    namespaces in quadratic time, so a megabyte of them on one element costs a minute of CPU."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_attributes: int | None = None
    max_namespace_declarations: int | None = None


_ALL_ATTRIBUTES_COUNT = etree.XPath("count(//@*)")
#: Encodings in which every namespace declaration is the bytes "xmlns" (a name has no escaped form): counted in the
#: document as received. Any other document is counted in its UTF-8 serialization.
_ASCII_NAMED_ENCODINGS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        # Comments and PIs are not content. Dropping them merges the text around them, so a comment inside a signed
        # field cannot make us read less than the signature covered (C14N without comments ignores them too).
        remove_comments=True,
        remove_pis=True,
    )


def refuse_declarations(raw: bytes, limits: XmlLimits, what: str) -> None:
    """Refuse, before any parser sees it, a document over the size limit or with a DOCTYPE or entity declaration."""
    if len(raw) > limits.max_bytes:
        raise UnsafeXml(f"{what} is {len(raw)} bytes, more than the limit of {limits.max_bytes} bytes")
    scanned = _declarations_text(raw)
    if not _DECLARATION.search(scanned):
        return
    if _ENTITY.search(scanned):
        raise UnsafeXml(f"{what} declares entities (<!ENTITY>): entity declarations are refused")
    if _DOCTYPE.search(scanned):
        raise UnsafeXml(f"{what} has a DOCTYPE: DTDs are refused")


def parse_untrusted(data: bytes | str, limits: XmlLimits | None = None, what: str = "document") -> etree._Element:
    """Parse untrusted XML and return its root element, or raise UnsafeXml / etree.XMLSyntaxError."""
    limits = limits or XmlLimits()
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else data
    except UnicodeEncodeError as exc:
        raise UnsafeXml(f"{what} is not valid Unicode text ({exc.reason})") from exc
    refuse_declarations(raw, limits, what)
    try:
        # lxml refuses str input that carries an encoding declaration, so always hand it the bytes.
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        if any(marker in str(exc) for marker in _LIBXML_LIMIT_MARKERS):
            raise UnsafeXml(f"{what} exceeds the parser's safety limits: {exc}") from exc
        raise
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.system_url or tree.docinfo.public_id:
        # A DOCTYPE in an encoding our byte scan could not see (UTF-16, say).
        raise UnsafeXml(f"{what} has a DOCTYPE: DTDs are refused")
    _check_depth_and_entities(root, limits.max_depth, what)
    if limits.max_namespace_declarations is not None:
        # An upper bound (the word may also appear in text): every declaration spells "xmlns".
        plain = (tree.docinfo.encoding or "").lower() in _ASCII_NAMED_ENCODINGS
        declarations = (raw if plain else etree.tostring(root)).count(b"xmlns")
        if declarations > limits.max_namespace_declarations:
            raise UnsafeXml(
                f"{what} declares {declarations} namespaces (or says xmlns that often), more than the limit of "
                f"{limits.max_namespace_declarations}"
            )
    if limits.max_attributes is not None:
        attributes = int(_ALL_ATTRIBUTES_COUNT(root))  # type: ignore[arg-type]
        if attributes > limits.max_attributes:
            raise UnsafeXml(f"{what} has {attributes} attributes, more than the limit of {limits.max_attributes}")
    return root


def _check_depth_and_entities(root: etree._Element, max_depth: int, what: str) -> None:
    # Level by level: each level's nodes are a list built in one comprehension (a node at a time cost about three
    # times more, and this runs on every credential); entity references are found by lxml's own iteration.
    level = [root]
    depth = 1
    while level:
        if depth > max_depth:
            raise UnsafeXml(f"{what} nests elements deeper than {max_depth} levels")
        level = [child for element in level for child in element]
        depth += 1
    for entity in root.iter(etree.Entity):
        raise UnsafeXml(f"{what} uses an entity reference ({entity.text}): entities are refused")
