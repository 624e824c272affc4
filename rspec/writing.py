"""What every RSpec we write shares: the root element and serialization."""

from __future__ import annotations

import re
from datetime import datetime

from lxml import etree

from rspec.namespaces import GENI_SCHEMA_LOCATIONS, GENI_V3, XSI, geni
from sfa_omf.times import format_time

GENERATED_BY = "sfa-omf"
# What XML 1.0 cannot hold: control characters but tab and newlines, surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def new_root(
    kind: str, generated: datetime, extra_namespaces: dict[str, str], expires: datetime | None = None
) -> etree._Element:
    """<rspec type=kind> in GENI's namespace, with the extension prefixes we use declared once at the top."""
    nsmap: dict[str | None, str] = {None: GENI_V3, "xsi": XSI}
    nsmap.update(extra_namespaces)
    root = etree.Element(geni("rspec"), nsmap=nsmap)  # type: ignore[arg-type]  # the stubs omit the None prefix
    root.set(f"{{{XSI}}}schemaLocation", GENI_SCHEMA_LOCATIONS[kind])
    root.set("type", kind)
    root.set("generated", format_time(generated))
    root.set("generated_by", GENERATED_BY)
    if expires is not None:
        root.set("expires", format_time(expires))
    return root


def serialize(root: etree._Element, pretty: bool) -> bytes:
    """UTF-8 bytes with an XML declaration."""
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=pretty)


def xsd_boolean(value: bool) -> str:
    """true/false as XML Schema writes them."""
    return "true" if value else "false"


def xml_text(value: str) -> str:
    """Free text (an image's description) as XML can carry it: each character XML 1.0 cannot hold becomes U+FFFD.
    lxml refuses such a character with a ValueError, which would fail the whole document for one description."""
    return _NOT_XML.sub("\ufffd", value)
