"""The XML namespaces RSpecs use, and Clark-notation tag names for the elements this package reads and writes."""

from __future__ import annotations

from typing import Final

GENI_V3: Final = "http://www.geni.net/resources/rspec/3"
# The OneLab/NITOS lease extension (prefix ol), as omf_sfa, jFed and MySlice use it.
OL: Final = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
# sfa-omf's availability extension (prefix av): each node's next free windows. Stable: change the /1 only with an
# incompatible change of the extension.
AVAILABILITY: Final = "http://sfa-omf.org/rspec/ext/availability/1"
# sfa-omf's instances extension (prefix inst): inst:count on a <sliver_type name="lxc"> asks for that many
# containers on the node. An attribute of another namespace is allowed on sliver_type by GENI v3 itself.
INSTANCES: Final = "http://sfa-omf.org/rspec/ext/instances/1"
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"

#: Prefixes we write, and use in messages about elements of these namespaces.
PREFIXES: Final[dict[str, str]] = {"ol": OL, "av": AVAILABILITY, "inst": INSTANCES}

#: Where the GENI v3 XSDs are published, for xsi:schemaLocation in what we write.
GENI_SCHEMA_LOCATIONS: Final[dict[str, str]] = {
    "advertisement": f"{GENI_V3} {GENI_V3}/ad.xsd",
    "request": f"{GENI_V3} {GENI_V3}/request.xsd",
    "manifest": f"{GENI_V3} {GENI_V3}/manifest.xsd",
}


def geni(local: str) -> str:
    """A GENI v3 tag in Clark notation: geni("node") == "{http://www.geni.net/resources/rspec/3}node"."""
    return f"{{{GENI_V3}}}{local}"


def ol(local: str) -> str:
    """An ol extension tag in Clark notation."""
    return f"{{{OL}}}{local}"


def av(local: str) -> str:
    """An availability extension tag in Clark notation."""
    return f"{{{AVAILABILITY}}}{local}"


def display_name(tag: str) -> str:
    """How a message names an element: "node" for GENI's, "ol:lease" for known extensions, {ns}name otherwise."""
    if not tag.startswith("{"):
        return tag
    namespace, local = tag[1:].split("}", 1)
    if namespace == GENI_V3:
        return local
    for prefix, uri in PREFIXES.items():
        if uri == namespace:
            return f"{prefix}:{local}"
    return tag


def inst(local: str) -> str:
    """An instances extension name in Clark notation."""
    return f"{{{INSTANCES}}}{local}"
