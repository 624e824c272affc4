"""What every RSpec we write shares: the root element and serialization."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from lxml import etree

from rspec.namespaces import GENI_SCHEMA_LOCATIONS, GENI_V3, XSI, geni
from sfa_omf.times import as_utc, format_time

GENERATED_BY = "sfa-omf"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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


def sfa_lease_slot(start: datetime, end: datetime, grain: timedelta) -> tuple[int, int]:
    """SFA's ``(start_time, duration)`` of the span [start, end) on nodes of this grain: ``start_time`` (epoch
    seconds) is ``start`` floored to the grain, ``duration`` the grains from there to ``end`` (at least one), so the
    SFA lease covers every grain the span touches and ends where the span ends when ``end`` is on a grain boundary,
    as the calendar's are. Why floored: a lease booked from now starts inside a grain (16:28:38 with 30-minute
    grains); counting whole grains from its own start would put its end a grain late (17:58:38 for 17:30), whereas
    a first partial grain (16:00 to 16:30) only shows the node held a little early, and the start stays on a grain
    boundary, where an SFA lease sent back must start. The one rule of advertisements and manifests."""
    grain_s = int(grain.total_seconds())
    if grain_s < 1:
        raise ValueError(f"grain={grain}: at least one second")
    start_s = math.floor((as_utc(start) - _EPOCH).total_seconds())
    end_s = math.ceil((as_utc(end) - _EPOCH).total_seconds())
    floored_s = start_s - start_s % grain_s
    return floored_s, max(1, -(-(end_s - floored_s) // grain_s))  # whole grains, rounded up
