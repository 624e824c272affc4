"""Is this RSpec valid? Every problem, located, for `sfa-omf rspec validate` and for tests of what we emit.

A request is checked as the aggregate would read it (schema, then the dialect readers: times, lease references,
duplicates). Advertisements and manifests are checked against the schema, and their lease references against
their leases.
"""

from __future__ import annotations

from lxml import etree

from rspec.document import Document, RSpecLimits, load
from rspec.namespaces import av, geni, ol
from rspec.parse_request import RequestPolicy, parse_request
from rspec.problems import Problem, RSpecError
from rspec.reading import Reader
from rspec.schemas import FOR_TYPE, Schema, schema_problems
from sfa_omf.times import utcnow

KINDS = tuple(FOR_TYPE)


def validate(
    data: bytes | str,
    kind: str | None = None,
    *,
    limits: RSpecLimits | None = None,
    geni_base: bool = False,
) -> list[Problem]:
    """The problems of an RSpec of type ``kind`` (default: its type attribute), in document order; [] if valid.

    With ``geni_base`` the document is checked against the GENI v3 base schema alone (no ol or SFA leases, no
    availability), which is what other GENI tools expect of it.
    """
    limits = limits or RSpecLimits()
    try:
        document = load(data, limits)
    except RSpecError as exc:
        return list(exc.problems)
    root = document.root
    declared = root.get("type") if root.tag == geni("rspec") else None
    kind = kind or declared
    if kind not in FOR_TYPE:
        expected = ", ".join(KINDS)
        return [
            document.problem(root, f"cannot tell the RSpec type ({kind or 'no type attribute'}); expected {expected}")
        ]
    if geni_base:
        base = {"request": Schema.GENI_V3_REQUEST, "advertisement": Schema.GENI_V3_AD}
        return schema_problems(document, base.get(kind, Schema.GENI_V3_MANIFEST), limits.max_problems)
    if kind == "request":
        try:
            parse_request(data, now=utcnow(), policy=RequestPolicy(limits=limits))
        except RSpecError as exc:
            return list(exc.problems)
        return []
    problems = schema_problems(document, FOR_TYPE[kind], limits.max_problems)
    return sorted(problems + _reference_problems(document))[: limits.max_problems]


def _reference_problems(document: Document) -> list[Problem]:
    """What a schema cannot say: lease references name a lease of the document, and spans end after they start."""
    reader = Reader(document)
    lease_ids = set()
    for lease in document.root.iterchildren(ol("lease")):
        lease_id = lease.get("id")
        if lease_id is not None:
            lease_ids.add(lease_id)
        _check_span(reader, lease, "valid_from", "valid_until")
    for ref in document.root.iter(ol("lease_ref")):
        id_ref = ref.get("id_ref")
        if id_ref is not None and id_ref not in lease_ids:
            reader.report(ref, f"no ol:lease in this RSpec has id {id_ref!r}")
    for free in document.root.iter(av("free")):
        _check_span(reader, free, "start", "end")
    return reader.problems


def _check_span(reader: Reader, element: etree._Element, start_name: str, end_name: str) -> None:
    start = reader.rfc3339(element, start_name)
    end = reader.rfc3339(element, end_name)
    if start is not None and end is not None and end <= start:
        reader.report(element, f"{end_name} must be after {start_name}")
