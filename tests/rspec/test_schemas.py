"""Our RELAX NG schemas: in step with their sources, true to the dialects tools send, and GENI's extension rule."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

import rspec.schemas
from rspec.document import RSpecLimits, load
from rspec.schemas import SCHEMA_DIR, Schema, grammar, path_namespaces, relaxng, schema_problems
from rspec.validate import validate
from tests.rspec.conftest import DATA, read

GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
AV = "http://sfa-omf.org/rspec/ext/availability/1"


def _regenerate_module() -> object:
    spec = importlib.util.spec_from_file_location("regenerate", SCHEMA_DIR / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _canonical(path: Path) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    return etree.tostring(etree.parse(str(path), parser), method="c14n")


def test_rng_files_are_generated_from_the_rnc_sources(tmp_path: Path) -> None:
    """Fails (never skips) without trang: CI must install the Debian package trang."""
    assert shutil.which("trang"), "trang is missing: install the Debian package trang (apt-get install trang)"
    regenerate = _regenerate_module()
    try:
        written = regenerate.regenerate(tmp_path)  # type: ignore[attr-defined]
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"trang failed: {exc.stderr}")
    fresh = {path.name for path in written}
    committed = {path.name for path in SCHEMA_DIR.glob("*.rng")}
    assert fresh == committed, "run: python schemas/regenerate.py"
    stale = [name for name in sorted(fresh) if _canonical(tmp_path / name) != _canonical(SCHEMA_DIR / name)]
    assert not stale, f"{stale} differ from their .rnc sources: run python schemas/regenerate.py"
    sources = {path.stem for path in SCHEMA_DIR.glob("*.rnc")}
    assert sources == {name.removesuffix(".rng") for name in committed}, "every .rnc is reached from a top schema"


#: The RSpec type each top-level schema is for.
_KIND = {
    Schema.REQUEST: "request",
    Schema.ADVERTISEMENT: "advertisement",
    Schema.MANIFEST: "manifest",
    Schema.GENI_V3_REQUEST: "request",
    Schema.GENI_V3_AD: "advertisement",
    Schema.GENI_V3_MANIFEST: "manifest",
}


@pytest.mark.parametrize("schema", list(Schema))
def test_every_schema_compiles(schema: Schema) -> None:
    """Compiles, and validates: an empty RSpec of its type passes; an element GENI's namespace has not, or a node
    whose exclusive is no boolean, does not (a schema that accepts anything would compile too)."""
    validator = relaxng(schema)
    kind = _KIND[schema]
    assert validator.validate(etree.fromstring(f'<rspec xmlns="{GENI}" type="{kind}"/>')), validator.error_log
    for invalid in (
        f'<rspec xmlns="{GENI}" type="{kind}"><no_such_element/></rspec>',
        f'<rspec xmlns="{GENI}" type="{kind}"><node client_id="a" component_id="x" exclusive="maybe"/></rspec>',
    ):
        assert not validator.validate(etree.fromstring(invalid)), invalid


@pytest.mark.parametrize(
    "name", sorted(p.name for p in DATA.glob("*.xml") if not p.name.startswith("invalid")), ids=str
)
def test_every_sample_request_is_valid(name: str) -> None:
    assert validate(read(name)) == []


@pytest.mark.parametrize(
    ("name", "geni_valid"),
    [
        ("one-slot-omni.xml", True),
        ("two-slots-ol-jfed.xml", True),  # ol elements are another namespace: GENI's rule lets them pass
        ("asap-ol.xml", True),
        ("two-slots-sfa-sfi.xml", False),  # SFA's <lease> and <granularity> are in GENI's namespace
        ("sfi-component-ids-only.xml", False),  # and its nodes have no client_id
    ],
)
def test_which_sample_requests_the_geni_base_schema_accepts(name: str, geni_valid: bool) -> None:
    assert (validate(read(name), geni_base=True) == []) is geni_valid


def ad(body: str, root_attributes: str = "") -> str:
    return (
        f'<rspec xmlns="{GENI}" xmlns:ol="{OL}" xmlns:av="{AV}" xmlns:x="urn:x" type="advertisement"'
        f"{root_attributes}>{body}</rspec>"
    )


NODE = '<node component_id="urn:n" component_manager_id="urn:cm" exclusive="true"{}>{}</node>'


@pytest.mark.parametrize(
    "body",
    [
        NODE.format(' x:colour="blue"', '<x:anything a="1"><x:b/>text<c/></x:anything>'),
        NODE.format(
            "", '<sliver_type name="s" x:y="1"><x:image/><disk_image name="d" x:z="2"><x:q/></disk_image></sliver_type>'
        ),
        '<x:top-level a="1"/>' + NODE.format("", '<available now="true"><x:why/></available>'),
        NODE.format("", '<av:free start="2026-12-01T10:00:00Z" end="2026-12-01T11:00:00Z" x:note="n"/>'),
    ],
)
def test_extensions_of_other_namespaces_pass(body: str) -> None:
    assert validate(ad(body)) == []
    assert validate(ad(body), geni_base=True) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (NODE.format(' colour="blue"', ""), "Invalid attribute colour for element node"),
        (NODE.format("", "<colour/>"), "<colour>: not allowed here, in <node>"),
        (
            NODE.format("", '<ol:lease id="l" valid_from="2026-12-01T10:00:00Z" valid_until="2026-12-01T11:00:00Z"/>'),
            "<ol:lease>: not allowed here, in <node>",
        ),
        (
            '<av:free start="2026-12-01T10:00:00Z" end="2026-12-01T11:00:00Z"/>',
            "<av:free>: not allowed here, in <rspec>",
        ),
        (
            '<ol:lease valid_from="2026-12-01T10:00:00Z" valid_until="2026-12-01T11:00:00Z"/>',
            "<ol:lease>: attributes (valid_from, valid_until) do not match; expected attributes: id, valid_from (an "
            "RFC 3339 time), valid_until (an RFC 3339 time)",
        ),
        (NODE.format("", '<av:free start="tomorrow" end="2026-12-01T11:00:00Z"/>'), "<av:free>: Type dateTime"),
        (NODE.format("", '<ol:lease_ref id_ref="nowhere"/>'), "no ol:lease in this RSpec has id 'nowhere'"),
        (
            NODE.format("", '<av:free start="2026-12-01T11:00:00Z" end="2026-12-01T10:00:00Z"/>'),
            "end must be after start",
        ),
    ],
)
def test_our_extensions_and_geni_elements_are_checked(body: str, expected: str) -> None:
    messages = [str(p) for p in validate(ad(body))]
    assert any(expected in m for m in messages), messages


def test_the_sfa_lease_view_is_ours_not_genis() -> None:
    sfa = ad('<lease slice_id="urn:s" start_time="1796119200" duration="2"><node component_id="urn:n"/></lease>')
    assert validate(sfa) == []
    assert [p.element for p in validate(sfa, geni_base=True)] == ["lease"]


def test_the_type_is_read_from_the_document_or_given() -> None:
    assert validate(ad("")) == []
    assert "not allowed here" not in str(validate(ad(""), "manifest"))
    assert 'expected attributes: type="manifest"' in validate(ad(""), "manifest")[0].message
    problem = validate(f'<rspec xmlns="{GENI}"/>')[0]
    assert (
        problem.message == "cannot tell the RSpec type (no type attribute); expected request, advertisement, manifest"
    )


def test_explanations_come_from_the_schema_itself() -> None:
    rules = grammar(Schema.REQUEST)
    lease = rules.element_pattern([f"{{{GENI}}}rspec", f"{{{OL}}}lease"])
    assert lease is not None
    assert rules.expected_attributes(lease) == (
        "((client_id, id?) | id), ((valid_from (an RFC 3339 time), (valid_until (an RFC 3339 time) | duration (a "
        "whole number > 0))) | duration (a whole number > 0)), sliver_id?, and attributes of other namespaces"
    )
    node = rules.element_pattern([f"{{{GENI}}}rspec", f"{{{GENI}}}node"])
    assert node is not None and "ol:lease_ref" in rules.expected_children(node)
    sfa_node = rules.element_pattern([f"{{{GENI}}}rspec", f"{{{GENI}}}lease", f"{{{GENI}}}node"])
    assert sfa_node is not None
    assert rules.expected_attributes(sfa_node) == "component_id, component_name?, and attributes of other namespaces"
    assert rules.element_pattern([f"{{{GENI}}}rspec", "{urn:x}unknown", f"{{{GENI}}}node"]) is not None  # wildcard


def many_nodes(count: int, bad: set[int]) -> str:
    colour = ' colour="red"'
    nodes = "\n".join(
        f'<node client_id="n{i}"{colour if i in bad else ""}><sliver_type name="raw-pc"/></node>' for i in range(count)
    )
    return f'<rspec xmlns="{GENI}" type="request">\n{nodes}\n</rspec>'


def test_large_documents_are_validated_in_batches_with_the_same_verdict() -> None:
    document = load(many_nodes(1600, {3, 1234}))
    before = [(e.tag, e.get("client_id"), e.tail) for e in document.root]
    problems = schema_problems(document, Schema.REQUEST)
    assert [(p.line, p.element) for p in problems] == [(5, "node"), (1236, "node")]
    assert [(e.tag, e.get("client_id"), e.tail) for e in document.root] == before  # order and text kept
    valid = load(many_nodes(1600, set()))
    assert schema_problems(valid, Schema.REQUEST) == []
    assert [e.get("client_id") for e in valid.root] == [f"n{i}" for i in range(1600)]


def test_text_inside_an_element_is_said_to_be_the_text() -> None:
    """libxml2 says "Element node has extra content: text" at the node; it was read as a misplaced element:
    "<node>: not allowed here, in <rspec>; expected: node, ...", which sends the reader looking in the wrong place."""
    head = f'<rspec xmlns="{GENI}" xmlns:ol="{OL}" type="request">'
    problems = validate(
        f'{head}<node client_id="n">hello</node><ol:lease client_id="a" duration="60">x</ol:lease></rspec>'
    )
    assert [str(p) for p in problems] == [
        "1:124: <node>: text inside <node> is not allowed: remove it; expected content: relation, location, services, "
        "interface, hardware_type, sliver_type, host, ol:lease_ref, available, granularity, and elements of other "
        "namespaces",
        "1:156: <ol:lease>: text inside <ol:lease> is not allowed: remove it; expected content: no elements",
    ]


def test_a_large_document_is_judged_as_a_small_one() -> None:
    """Past 500 top-level elements the root's children are validated in batches under copies of the root: a
    problem of the root was listed once per batch, and text before the first child was never seen."""
    nodes = "".join(f'<node client_id="n{i}"/>' for i in range(1200))
    head = f'<rspec xmlns="{GENI}" type="request"'
    expires = [str(p) for p in validate(f'{head} expires="soon">{nodes}</rspec>')]
    assert len(expires) == 1 and expires[0].startswith("1:1: <rspec>: Invalid attribute expires for element rspec")
    assert [str(p) for p in validate(f"{head}>x{nodes}</rspec>")] == [
        "1:1: <rspec>: text inside <rspec> is not allowed: remove it; expected content: node, link, ol:lease, lease, "
        "and elements of other namespaces"
    ]


def test_error_paths_are_resolved_with_the_prefixes_they_name_only() -> None:
    """A hostile request declaring tens of thousands of prefixes made each refusal take half a minute of CPU: every
    element's inherited declarations were collected, and all of them registered again for each XPath of an error.
    (The times are measured by scripts, never asserted; what is asserted is the work that made them.)"""
    declarations = " ".join(f'xmlns:p{i}="urn:p:{i}"' for i in range(2000))
    foreign = "".join(f'<q{i}:x xmlns:q{i}="urn:q:{i}"/>' for i in range(50))
    document = load(
        f'<rspec xmlns="{GENI}" xmlns:ol="{OL}" {declarations} type="request">{foreign}'
        '<node client_id="n"><ol:lease_ref id_ref="a"/></node></rspec>',
        RSpecLimits(max_namespaces_on_root=3000),  # 256 by default
    )
    # Only the prefixes elements are written with, not every declaration in scope.
    assert document.prefixes() == {"ol": OL} | {f"q{i}": f"urn:q:{i}" for i in range(50)}
    assert path_namespaces("/*/*[51]/ol:lease_ref", document.prefixes()) == {"ol": OL}
    assert path_namespaces("/*/q7:x", document.prefixes()) == {"q7": "urn:q:7"}
    assert path_namespaces("/*/*[2]", document.prefixes()) == {}


def test_batches_are_validated_under_a_copy_of_the_root_without_its_other_declarations() -> None:
    """Each batch's copy of the root declared every namespace the root did: lxml declares them one at a time, each
    checked against those before it, so a request whose root declared 50 000 prefixes, with 1 200 nodes, took 90 s
    to read (RSpecLimits.max_namespaces_on_root now refuses that many; an operator may raise it). (The time is
    measured by scripts, never asserted; what is asserted is the work that made it.)"""
    declarations = " ".join(f'xmlns:p{i}="urn:p:{i}"' for i in range(2000))
    xsi = "http://www.w3.org/2001/XMLSchema-instance"
    nodes = "".join(f'<node client_id="n{i}"><ol:lease_ref id_ref="a"/><p7:x/></node>' for i in range(1200))
    text = (
        f'<rspec xmlns="{GENI}" xmlns:ol="{OL}" xmlns:xsi="{xsi}" {declarations} xsi:schemaLocation="{GENI} x" '
        f'type="request">{nodes}<node client_id="bad" colour="red"/></rspec>'
    )
    raised = RSpecLimits(max_namespaces_on_root=3000)  # 256 by default
    document = load(text, raised)
    assert rspec.schemas._namespaces_of_its_own(document.root) == {None: GENI, "xsi": xsi}
    before = etree.tostring(document.root)
    problems = schema_problems(document, Schema.REQUEST)
    assert [(p.element, p.message.split(";")[0]) for p in problems] == [
        ("node", "Invalid attribute colour for element node")
    ]
    # The children lent to the copies come back as they were (no declarations of their own left on them).
    assert etree.tostring(document.root) == before
    assert schema_problems(load(text.replace(' colour="red"', ""), raised), Schema.REQUEST) == []
