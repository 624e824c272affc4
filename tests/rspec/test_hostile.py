"""Hostile requests are refused fast, with a clear message, before anything is read; nothing reaches the network."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from rspec.document import RSpecLimits
from rspec.parse_request import RequestPolicy, parse_request
from rspec.problems import RSpecError
from rspec.validate import validate
from sfa_omf.errors import GeniCode
from tests.rspec.conftest import NOW, read

GENI = '<rspec xmlns="http://www.geni.net/resources/rspec/3" type="request">{}</rspec>'


def refused(data: bytes | str, policy: RequestPolicy | None = None) -> str:
    """The refusal's first problem, as text; fails if the request is accepted. (How fast refusals are is measured
    by benchmarks/rspec_parse_emit.py, never asserted here.)"""
    with pytest.raises(RSpecError) as raised:
        parse_request(data, now=NOW, policy=policy)
    return str(raised.value.problems[0])


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'<!ENTITY leak "fetched">')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """A web server on loopback that records every request: the parser must never call it."""
    _Recorder.paths = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    assert _Recorder.paths == [], "the parser fetched something"


def test_billion_laughs() -> None:
    entities = "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">\n' for i in range(1, 10))
    data = f'<?xml version="1.0"?>\n<!DOCTYPE rspec [\n<!ENTITY a0 "lol">\n{entities}]>\n' + GENI.format(
        '<node client_id="&a9;"/>'
    )
    assert refused(data) == "2:1: request RSpec declares entities (<!ENTITY>): entity declarations are refused"


def test_quadratic_blowup() -> None:
    data = f'<!DOCTYPE rspec [<!ENTITY big "{"x" * 100_000}">]>' + GENI.format(
        f'<node client_id="{"&big;" * 30_000}"/>'
    )
    assert "declares entities" in refused(data)


def test_external_entity(server: str) -> None:
    data = f'<!DOCTYPE rspec [<!ENTITY leak SYSTEM "{server}/secret">]>' + GENI.format('<node client_id="&leak;"/>')
    assert "declares entities" in refused(data)
    data = '<!DOCTYPE rspec [<!ENTITY leak SYSTEM "file:///etc/passwd">]>' + GENI.format('<node client_id="&leak;"/>')
    assert "declares entities" in refused(data)


def test_external_dtd(server: str) -> None:
    data = f'<?xml version="1.0"?>\n<!DOCTYPE rspec SYSTEM "{server}/evil.dtd">\n' + GENI.format("")
    assert refused(data) == "2:1: request RSpec has a DOCTYPE: DTDs are refused"


def test_doctype_in_utf16_which_a_byte_scan_cannot_see(server: str) -> None:
    text = f'<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE rspec SYSTEM "{server}/evil.dtd">\n' + GENI.format("")
    assert "has a DOCTYPE: DTDs are refused" in refused(text.encode("utf-16"))


def test_xinclude_is_not_processed(server: str) -> None:
    data = GENI.format(
        f'<node client_id="n"><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{server}/x"/></node>'
    )
    # An element of another namespace, as GENI's extension rule allows: accepted, and never followed.
    assert parse_request(data, now=NOW).nodes[0].client_id == "n"


def test_undefined_entity_reference() -> None:
    assert refused(GENI.format('<node client_id="&foo;"/>')) == ("1:91: not well-formed XML: Entity 'foo' not defined")


def test_huge_attribute() -> None:
    data = GENI.format(f'<node client_id="n" component_id="{"x" * 1_000_000}"/>')
    assert refused(data) == (
        "1:69: <node>: attribute component_id is 1000000 characters long, more than the limit of 65536"
    )
    small = RequestPolicy(limits=RSpecLimits(max_attribute_chars=10))
    assert "more than the limit of 10" in refused(GENI.format('<node client_id="a-long-client-id"/>'), small)


def test_deep_nesting() -> None:
    shallow_enough = GENI.format("<x:a xmlns:x='urn:x'>" * 60 + "</x:a>" * 60)
    assert parse_request(shallow_enough, now=NOW).nodes == ()
    assert refused(GENI.format("<x:a xmlns:x='urn:x'>" * 100 + "</x:a>" * 100)) == (
        "1:1: request RSpec nests elements deeper than 64 levels"
    )
    assert "exceeds the parser's safety limits: Excessive depth" in refused(
        GENI.format("<a>" * 100_000 + "</a>" * 100_000)
    )


def test_oversized_document() -> None:
    data = GENI.format("<!-- padding -->" * 300_000)
    assert len(data) > RSpecLimits().max_bytes
    assert refused(data) == f"1:1: the request RSpec is {len(data)} bytes, more than the limit of {4 * 1024 * 1024}"
    with pytest.raises(RSpecError) as raised:
        parse_request(data, now=NOW)
    assert raised.value.code == GeniCode.TOOBIG


def test_the_size_limit_is_configurable() -> None:
    request = read("two-slots-ol-jfed.xml")
    assert parse_request(request, now=NOW).nodes
    small = RequestPolicy(limits=RSpecLimits(max_bytes=1000))
    assert "more than the limit of 1000" in refused(request, small)
    problems = validate(request, limits=RSpecLimits(max_bytes=1000))
    assert "more than the limit of 1000" in problems[0].message


def test_many_problems_are_capped() -> None:
    nodes = '<node client_id="n" exclusive="maybe"/>' * 500
    with pytest.raises(RSpecError) as raised:
        parse_request(GENI.format(nodes), now=NOW)
    assert len(raised.value.problems) == RSpecLimits().max_problems


@pytest.mark.parametrize("count", ["²", "٣", "３", "+3", "3.0"])
def test_container_counts_in_other_digits_are_refused_plainly(count: str) -> None:
    """str.isdigit() takes "²" (which int() refuses, an internal error) and other scripts' digits."""
    data = (
        '<rspec xmlns="http://www.geni.net/resources/rspec/3" xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1"'
        f' type="request"><node client_id="n"><sliver_type name="lxc" inst:count="{count}"/></node></rspec>'
    )
    assert refused(data) == f"1:143: <sliver_type>: inst:count={count!r}: a number of containers from 1 to 1000"
    assert [p.message for p in validate(data)] == [f"inst:count={count!r}: a number of containers from 1 to 1000"]


@pytest.mark.parametrize("encoding", ["ISO-8859-1", "UTF-16", "ascii", "windows-1252"])
def test_text_keeps_its_characters_whatever_encoding_its_declaration_names(encoding: str) -> None:
    """XML-RPC hands the aggregate the RSpec as text: the encoding its declaration names was that of the client's
    file, whose bytes are gone. Read as that encoding, the text's UTF-8 bytes gave garbled names (Latin-1) or an
    unreadable document (UTF-16: "Blank needed here")."""
    text = f"<?xml version='1.0' encoding='{encoding}' standalone='yes'?>\n" + GENI.format('<node client_id="nœud-é"/>')
    assert [node.client_id for node in parse_request(text, now=NOW).nodes] == ["nœud-é"]
    # Positions are those of the text as written.
    assert (
        refused(text.replace("nœud-é", "")) == "2:69: <node>: a node needs a client_id (GENI) or a component_id (SFA)"
    )
    # Bytes are read in the encoding they declare, as before.
    if encoding in ("ISO-8859-1", "UTF-16"):
        data = text.replace("nœud-é", "né").encode(encoding)
        assert [node.client_id for node in parse_request(data, now=NOW).nodes] == ["né"]


def test_text_with_a_lone_surrogate_is_refused_plainly() -> None:
    assert refused(GENI.format('<node client_id="n\ud800"/>')) == (
        "1:87: the request RSpec is not valid Unicode text: it holds U+D800, a lone surrogate"
    )
    assert "not valid Unicode text" in validate(GENI.format('<node client_id="n\ud800"/>'))[0].message


@pytest.mark.parametrize("encoding", ["ISO-8859-1", "UTF-16", "utf8"])
def test_positions_on_the_declarations_line_are_those_of_the_text_as_sent(encoding: str) -> None:
    """The declaration's encoding is blanked, not rewritten: a problem on its line keeps its column in the text as
    the client wrote it (a rewrite to "UTF-8" moved it by the length difference)."""
    head = f"<?xml version='1.0' encoding='{encoding}'?>"
    text = head + '<rspec xmlns="http://www.geni.net/resources/rspec/3" type="request"><node client_id="a"></rspec>'
    with pytest.raises(RSpecError) as refused:
        parse_request(text, now=NOW)
    (problem,) = refused.value.problems
    assert (problem.line, problem.column) == (1, len(text) + 1)  # libxml2 finds the mismatch at the end


def test_many_attributes_on_one_element_are_refused_naming_it() -> None:
    """Nothing limited an element's attributes: one node with 16 000 foreign attributes (190 KB) took 18 s to read
    (lxml and libxml2's schema validation cost the square of their number), a 4 MB request hours, in an Allocate's
    thread after authorization. Refused right after parsing, naming the element and its line."""
    head = '<rspec xmlns="http://www.geni.net/resources/rspec/3" xmlns:x="urn:x" type="request">\n'

    def node(attributes: int) -> str:
        foreign = " ".join(f'x:a{i}="1"' for i in range(attributes - 1))
        return f'{head}<node client_id="n" {foreign}/></rspec>'

    assert refused(node(8000)) == "2:1: <node>: has 8000 attributes, more than the limit of 256 per element"
    with pytest.raises(RSpecError) as raised:
        parse_request(node(8000), now=NOW)
    assert raised.value.code == GeniCode.BADARGS
    assert [n.client_id for n in parse_request(node(256), now=NOW).nodes] == ["n"]  # generous: real ones have < 10
    assert "has 257 attributes, more than the limit of 256 per element" in refused(node(257))
    # `sfa-omf rspec validate` reads through the same limits.
    assert [str(p) for p in validate(node(8000))] == [
        "2:1: <node>: has 8000 attributes, more than the limit of 256 per element"
    ]
    # The limits are the operator's to change, and the whole document's attributes are counted too.
    few = RequestPolicy(limits=RSpecLimits(max_attributes_per_element=4))
    assert "has 5 attributes, more than the limit of 4 per element" in refused(node(5), few)
    total = RequestPolicy(limits=RSpecLimits(max_attributes=20))
    nodes = "".join(f'<node client_id="n{i}" exclusive="true"/>' for i in range(10))
    assert refused(f"{head}{nodes}</rspec>", total) == ("1:1: the request RSpec has more than 20 attributes, the limit")
    assert len(parse_request(f"{head}{nodes}</rspec>", now=NOW).nodes) == 10


def test_many_children_of_one_element_are_refused_naming_it() -> None:
    """libxml2 validates an element's children (GENI's extension wildcard is allowed everywhere) in the square of
    their number: a node with 40 000 children took 4 s, one with the 600 000 a 4 MB request holds would take half an
    hour. The root's children are validated in batches, and have no limit."""
    head = '<rspec xmlns="http://www.geni.net/resources/rspec/3" xmlns:x="urn:x" type="request">\n'
    assert refused(f'{head}<node client_id="n">{"<x:a/>" * 20_000}</node></rspec>') == (
        "2:1: <node>: has 20000 child elements, more than the limit of 5000 per element"
    )
    assert len(parse_request(f'{head}<node client_id="n">{"<x:a/>" * 5_000}</node></rspec>', now=NOW).nodes) == 1
    many_nodes = "".join(f'<node client_id="n{i}"/>' for i in range(10_001))
    assert len(parse_request(f"{head}{many_nodes}</rspec>", now=NOW).nodes) == 10_001


def test_many_namespaces_declared_on_the_root_are_refused() -> None:
    """The root's children are validated in batches under a copy of the root, and each one lent and put back is
    matched against the root's declarations: 20 000 declarations and as many nodes (1 MB) took 8 s, 50 000 and
    1 200 nodes 90 s."""
    declarations = " ".join(f'xmlns:p{i}="urn:p:{i}"' for i in range(20_000))
    nodes = "".join(f'<node client_id="n{i}"/>' for i in range(600))
    text = f'<rspec xmlns="http://www.geni.net/resources/rspec/3" {declarations} type="request">{nodes}</rspec>'
    assert refused(text) == "1:1: <rspec>: declares 20001 namespaces, more than the limit of 256 on the root"
    few = " ".join(f'xmlns:p{i}="urn:p:{i}"' for i in range(255))
    assert len(parse_request(text.replace(declarations, few), now=NOW).nodes) == 600
