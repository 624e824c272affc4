"""Reading requests in every dialect tools send, into the same plain data."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from rspec.dialects import sfa
from rspec.document import load
from rspec.model import Request, RequestLease, RequestNode
from rspec.namespaces import OL
from rspec.parse_request import RequestPolicy, parse_request
from rspec.problems import RSpecError
from rspec.reading import Reader
from sfa_omf.errors import GeniCode, GeniError
from tests.rspec.conftest import CM, IMAGE, NOW, POLICY, node_urn, read

H = timedelta(hours=1)
DAY = datetime(2026, 12, 1, tzinfo=NOW.tzinfo)


def raw_pc(name: str) -> RequestNode:
    return RequestNode(
        client_id=name,
        component_id=node_urn(name),
        component_manager_id=CM,
        exclusive=True,
        sliver_type="raw-pc",
        disk_image=IMAGE,
    )


TWO_SLOTS = Request(
    nodes=(raw_pc("node1"), raw_pc("node2"), raw_pc("node3")),
    leases=(
        RequestLease(DAY + 10 * H, H, ("node1", "node2")),
        RequestLease(DAY + 14 * H, 2 * H, ("node2", "node3")),
    ),
)
ONE_SLOT = Request(
    nodes=(raw_pc("node1"), raw_pc("node2")),
    leases=(RequestLease(DAY + 10 * H, H, ("node1", "node2")),),
)
OMNI_OPTIONS = {"geni_start_time": "2026-12-01T10:00:00+00:00", "geni_end_time": "2026-12-01T11:00:00+00:00"}


def parse(name: str, **options: object) -> Request:
    return parse_request(read(name), now=NOW, policy=POLICY, allocate_options=options or None)


@pytest.mark.parametrize(
    "name",
    [
        "two-slots-ol-jfed.xml",
        "two-slots-ol-myslice.xml",
        "two-slots-sfa-sfi.xml",
        "two-slots-sfa-no-namespace.xml",
    ],
)
def test_two_slots_read_the_same_in_every_dialect(name: str) -> None:
    assert parse(name) == TWO_SLOTS


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("one-slot-ol.xml", {}),
        ("one-slot-sfa-xmlns-empty.xml", {}),
        ("one-slot-omni.xml", OMNI_OPTIONS),
        ("one-slot-omni.xml", {"geni_start_time": "2026-12-01T10:00:00Z", "geni_end_time": "2026-12-01T11:00"}),
        ("one-slot-omni.xml", {"geni_start_time": "1796119200", "geni_end_time": 1796122800}),
        ("one-slot-omni.xml", {"geni_start_time": "2026-12-01T12:00:00+02:00", "geni_end_time": DAY + 11 * H}),
    ],
)
def test_one_slot_read_the_same_from_rspec_or_allocate_options(name: str, options: dict[str, object]) -> None:
    assert parse(name, **options) == ONE_SLOT


def test_ol_lease_names_are_kept_for_the_manifest_but_do_not_change_equality() -> None:
    request = parse("two-slots-ol-jfed.xml")
    assert [lease.client_id for lease in request.leases] == ["morning", "afternoon"]
    assert [lease.client_id for lease in parse("two-slots-sfa-sfi.xml").leases] == [None, None]
    assert [lease.client_id for lease in parse("two-slots-ol-myslice.xml").leases] == ["morning", "afternoon"]


def test_mapping_between_nodes_and_leases() -> None:
    request = parse("two-slots-ol-jfed.xml")
    assert request.leases_of("node2") == request.leases
    assert request.leases_of("node3") == (request.leases[1],)
    assert request.node("node3").component_id == node_urn("node3")
    with pytest.raises(KeyError):
        request.node("node9")


def test_as_soon_as_possible_reads_the_same_in_ol_and_sfa() -> None:
    expected = Request(
        nodes=(
            RequestNode("node1", node_urn("node1"), exclusive=True),
            RequestNode("node2", node_urn("node2"), exclusive=True),
        ),
        leases=(RequestLease(None, 2 * H, ("node1", "node2")),),
    )
    assert parse("asap-ol.xml") == expected
    assert parse("asap-sfa.xml") == expected
    assert expected.leases[0].asap and expected.leases[0].end is None


def test_no_time_means_from_now_for_the_default_duration() -> None:
    request = parse("no-time.xml")
    assert request.nodes == (RequestNode("node1", node_urn("node1"), exclusive=True), RequestNode("any"))
    # No start: the aggregate books from now when the nodes are free (a first partial slot), else the earliest slot.
    assert request.leases == (RequestLease(None, POLICY.default_duration, ("node1", "any"), from_now=True),)


def test_allocate_options_with_one_end_only() -> None:
    only_start = parse("one-slot-omni.xml", geni_start_time="2026-12-01T10:00:00Z")
    assert only_start.leases[0].start == DAY + 10 * H
    assert only_start.leases[0].duration == POLICY.default_duration
    assert not only_start.leases[0].from_now  # an explicit start keeps to the grain
    only_end = parse("one-slot-omni.xml", geni_end_time="2026-12-01T10:00:00Z")
    assert only_end.leases[0].start == NOW
    assert only_end.leases[0].end == DAY + 10 * H
    assert only_end.leases[0].from_now  # no start given: it may begin inside a slot


def test_allocate_options_apply_to_the_nodes_the_rspec_gives_no_time() -> None:
    request = parse("two-slots-ol-jfed.xml", **OMNI_OPTIONS)
    assert request == TWO_SLOTS  # every node has a lease in the RSpec: the options add nothing
    request = parse("no-time.xml", **OMNI_OPTIONS)
    assert request.leases == (RequestLease(DAY + 10 * H, H, ("node1", "any")),)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"geni_start_time": "tomorrow"}, "option geni_start_time: cannot read 'tomorrow' as a time"),
        ({"geni_start_time": "2026-12-01T11:00:00Z", "geni_end_time": "2026-12-01T10:00:00Z"}, "must be after"),
        ({"geni_end_time": ["2026"]}, "option geni_end_time must be a time, not list"),
    ],
)
def test_bad_allocate_options(options: dict[str, object], expected: str) -> None:
    with pytest.raises(RSpecError) as raised:
        parse("one-slot-omni.xml", **options)
    (problem,) = raised.value.problems
    assert (problem.line, problem.column) == (0, 0)
    assert expected in problem.message


def test_sfi_nodes_named_by_component_id() -> None:
    request = parse("sfi-component-ids-only.xml")
    node1, node7 = request.nodes
    assert node1.client_id == node1.component_id == node_urn("node1")
    assert node1.component_name == "node1" and node1.component_manager_id == CM
    # A node only the lease names is booked too.
    assert node7 == RequestNode(node_urn("node7"), node_urn("node7"), exclusive=True)
    assert request.leases == (RequestLease(DAY + 10 * H, H, (node_urn("node1"), node_urn("node7"))),)


def test_reusing_an_existing_lease() -> None:
    (lease,) = parse("reuse-existing-lease.xml").leases
    assert lease.existing_id == "4d6f2b9e-3c1a-4e5b-9f00-2a7c1d3e5b61"
    assert lease.client_id is None
    assert lease.nodes == ("node1",)


def test_sfa_leases_with_the_same_start_and_duration_are_one_lease() -> None:
    node1 = b'<node component_id="urn:publicid:IDN+omf:testbed+node+node1"/>'
    slot = b'slice_id="urn:publicid:IDN+onelab:inria+slice+myslice" start_time="1796119200" duration="2"'
    split = b"</lease><lease " + slot + b">"
    text = read("two-slots-sfa-sfi.xml").replace(node1, split + node1, 1)
    assert text.count(b"<lease ") == 3
    assert parse_request(text, now=NOW, policy=POLICY) == parse("two-slots-sfa-sfi.xml")


def test_sfa_leases_without_a_start_are_each_one_slot_of_their_own() -> None:
    """Merged, as leases with the same slot are, n1 free now waited with n2 for the end of n2's booking. One
    <lease> listing both nodes still asks for one slot for both."""
    first = b'<lease duration="4"><node component_id="urn:publicid:IDN+omf:testbed+node+node1"/>'
    text = read("asap-sfa.xml").replace(first, first + b'</lease><lease duration="4">')
    assert text.count(b"<lease ") == 2
    assert [(lease.start, lease.duration, lease.nodes) for lease in parse_request(text, now=NOW).leases] == [
        (None, 2 * H, ("node1",)),
        (None, 2 * H, ("node2",)),
    ]
    ((_, _, together),) = [(lease.start, lease.duration, lease.nodes) for lease in parse("asap-sfa.xml").leases]
    assert together == ("node1", "node2")


def test_sfa_duration_counts_the_operators_grain() -> None:
    policy = RequestPolicy(grain=timedelta(minutes=15))
    request = parse_request(read("two-slots-sfa-sfi.xml"), now=NOW, policy=policy)
    assert [lease.duration for lease in request.leases] == [timedelta(minutes=30), H]


def test_every_problem_is_reported_with_line_column_and_what_was_expected() -> None:
    with pytest.raises(RSpecError) as raised:
        parse("invalid-request.xml")
    got = [(p.line, p.column, p.element, p.message) for p in raised.value.problems]
    expected = [
        (3, 3, "ol:lease", "valid_from='2026-13-01T10:00:00Z' is not an RFC 3339 time"),
        (4, 3, "ol:lease", "valid_until must be after valid_from"),
        (5, 3, "ol:lease", "a lease needs a client_id (its name in this request) or the id of an existing lease"),
        (6, 3, "node", "exclusive='yes' is not a boolean; expected true or false"),
        (6, 95, "ol:lease_ref", "no ol:lease in this request has client_id or id 'nowhere'"),
        (7, 3, "node", "client_id 'n1' is already used by the node on line 6"),
        (8, 24, "sliver-type", "not allowed here, in <node>; expected: relation, location, services, interface"),
        (9, 3, "lease", "start_time='soon' is neither epoch seconds nor an RFC 3339 time"),
    ]
    assert len(got) == len(expected), got
    for (line, column, element, message), (e_line, e_column, e_element, e_message) in zip(got, expected, strict=True):
        assert (line, column, element) == (e_line, e_column, e_element), message
        assert message.startswith(e_message), message
    error = raised.value
    assert isinstance(error, GeniError) and error.code == GeniCode.BADARGS
    assert "invalid request RSpec: 3:3: <ol:lease>: valid_from=" in error.message
    assert "(and 7 more)" in error.message


REQUEST_HEAD = (
    '<rspec xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1"'
    ' type="request">'
)


def problems_of(body: str, head: str = REQUEST_HEAD) -> list[str]:
    with pytest.raises(RSpecError) as raised:
        parse_request(f"{head}\n{body}\n</rspec>", now=NOW, policy=POLICY)
    return [str(p) for p in raised.value.problems]


def test_not_a_request() -> None:
    assert problems_of("", REQUEST_HEAD.replace("request", "manifest")) == [
        '1:1: <rspec>: type="manifest": expected type="request"'
    ]
    with pytest.raises(RSpecError, match=r"1:1: <RSpec>: SFA v1 RSpecs"):
        parse_request('<RSpec type="SFA"><network name="x"/></RSpec>', now=NOW)
    assert "expected <rspec" in problems_of("", '<rspec xmlns="urn:other" type="request">')[0]


def test_one_sliver_type_and_image_per_node() -> None:
    problems = problems_of(
        '<node client_id="a"><sliver_type name="x"><disk_image name="i"/><disk_image name="j"/></sliver_type>'
        '<sliver_type name="y"/></node>'
    )
    assert problems == [
        "2:65: <disk_image>: a request gives at most one <disk_image> per <sliver_type>",
        "2:101: <sliver_type>: a request gives at most one <sliver_type> per <node>",
    ]


def test_links_are_refused() -> None:
    assert problems_of('<node client_id="a"/><link client_id="l"/>') == [
        "2:22: <link>: this aggregate has no links: remove the <link> elements"
    ]


def test_a_node_needs_a_name() -> None:
    assert problems_of("<node/>") == ["2:1: <node>: a node needs a client_id (GENI) or a component_id (SFA)"]


def test_overlapping_leases_of_one_node() -> None:
    problems = problems_of(
        '<ol:lease client_id="a" valid_from="2026-12-01T10:00:00Z" valid_until="2026-12-01T11:00:00Z"/>'
        '<ol:lease client_id="b" valid_from="2026-12-01T10:30:00Z" duration="3600"/>'
        '<ol:lease client_id="c" valid_from="2026-12-01T11:30:00Z" duration="3600"/>'
        '<ol:lease client_id="d" valid_from="2026-12-01T09:00:00Z" duration="14400"/>'
        '<node client_id="n" component_id="urn:x"><ol:lease_ref id_ref="a"/><ol:lease_ref id_ref="b"/>'
        '<ol:lease_ref id_ref="c"/></node>'
        '<node client_id="m" component_id="urn:y"><ol:lease_ref id_ref="d"/><ol:lease_ref id_ref="c"/></node>'
        '<node client_id="urn:y"><ol:lease_ref id_ref="a"/><ol:lease_ref id_ref="d"/></node>'
    )
    # b starts before a ends; c starts as b ends (back to back: fine); on urn:y, d holds 09:00-13:00 and c 11:30-...
    # The node named urn:y has no component_id: it is not the component urn:y, but its own leases a and d overlap.
    assert problems == [
        "2:1: <ol:lease>: this lease overlaps another lease of client node urn:y",
        "2:95: <ol:lease>: this lease overlaps another lease of node urn:x",
        "2:170: <ol:lease>: this lease overlaps another lease of node urn:y",
    ]


def test_back_to_back_leases_do_not_overlap() -> None:
    request = parse_request(
        f"{REQUEST_HEAD}"
        '<ol:lease client_id="a" valid_from="2026-12-01T10:00:00Z" valid_until="2026-12-01T11:00:00Z"/>'
        '<ol:lease client_id="b" valid_from="2026-12-01T11:00:00Z" duration="3600"/>'
        '<node client_id="n"><ol:lease_ref id_ref="b"/><ol:lease_ref id_ref="a"/></node></rspec>',
        now=NOW,
    )
    assert [(lease.start, lease.end) for lease in request.leases] == [
        (DAY + 10 * H, DAY + 11 * H),
        (DAY + 11 * H, DAY + 12 * H),
    ]


def test_lease_time_forms() -> None:
    problems = problems_of(
        '<ol:lease client_id="a" valid_from="2026-12-01T10:00:00Z"/>'
        '<ol:lease client_id="b" valid_until="2026-12-01T10:00:00Z" duration="60"/>'
        '<ol:lease client_id="c" duration="0"/>'
        '<ol:lease client_id="d" valid_from="2026-12-01" duration="60"/>'
    )
    assert len(problems) == 4
    assert "expected valid_from with valid_until (or with duration in seconds), or duration alone" in problems[0]
    assert "expected valid_from with valid_until (or with duration in seconds), or duration alone" in problems[1]
    assert "duration='0' is not a whole number of seconds greater than zero" in problems[2]
    assert "valid_from='2026-12-01' is not an RFC 3339 time" in problems[3]


def test_a_lease_no_node_refers_to_books_nothing() -> None:
    request = parse_request(
        f'{REQUEST_HEAD}<ol:lease client_id="a" duration="60"/><node client_id="n"/></rspec>', now=NOW, policy=POLICY
    )
    assert request.leases == (RequestLease(None, POLICY.default_duration, ("n",), from_now=True),)


def test_extensions_of_other_namespaces_pass_and_ours_are_checked_where_they_belong() -> None:
    assert parse("one-slot-omni.xml", **OMNI_OPTIONS) == ONE_SLOT  # has <emulab:routable_control_ip/>
    assert problems_of('<node client_id="n"><ol:lease client_id="x" duration="60"/></node>') == [
        "2:21: <ol:lease>: ol:lease belongs at the top level; nodes refer to it with ol:lease_ref"
    ]
    unknown = '<node client_id="n" xmlns:x="urn:x" x:colour="blue"><x:anything a="1"><b/></x:anything></node>'
    assert parse_request(f"{REQUEST_HEAD}{unknown}</rspec>", now=NOW).nodes == (RequestNode("n"),)
    assert problems_of('<node client_id="n" colour="blue"/>') == [
        "2:1: <node>: Invalid attribute colour for element node; expected attributes: client_id?, component_id?, "
        "component_manager_id?, component_name?, exclusive (true or false)?, colocate?, sliver_id?, and attributes "
        "of other namespaces"
    ]


def test_a_node_booked_with_no_start_is_booked_once() -> None:
    """The aggregate finds the slot of a lease with no start without knowing of the request's other leases: a node
    in it and in another lease was refused by the calendar as busy (code 7) during a slot that only this very
    request held. Said here instead, where the client can fix it."""
    fixed = '<ol:lease client_id="f" valid_from="2026-12-01T10:00:00Z" duration="3600"/>'
    asap = '<ol:lease client_id="a" duration="3600"/><ol:lease client_id="b" duration="3600"/>'
    message = "is booked here with no start time and booked again by this request"
    assert problems_of(
        f'{asap}<node client_id="n" component_id="urn:x"><ol:lease_ref id_ref="a"/><ol:lease_ref id_ref="b"/></node>'
    ) == [
        f"2:1: <ol:lease>: node urn:x {message}: give each of its slots a start time, or ask for it once",
        f"2:42: <ol:lease>: node urn:x {message}: give each of its slots a start time, or ask for it once",
    ]
    # Beside a timed booking of the node too: the aggregate places the one with no start from the calendar alone,
    # and answered the request's own timed booking as another's ("booked during ...").
    assert problems_of(
        f'{fixed}{asap}<node client_id="n" component_id="urn:x"><ol:lease_ref id_ref="f"/>'
        '<ol:lease_ref id_ref="a"/></node>'
    ) == [f"2:76: <ol:lease>: node urn:x {message}: give each of its slots a start time, or ask for it once"]
    # Two nodes of the request on one component, no time given (both in the default slot), or in one ASAP lease.
    assert [
        p.split(": ")[0]
        for p in problems_of('<node client_id="n" component_id="urn:x"/><node client_id="m" component_id="urn:x"/>')
    ] == ["2:1", "2:43"]
    assert problems_of(
        '<ol:lease client_id="a" duration="3600"/><node client_id="n" component_id="urn:x"><ol:lease_ref id_ref="a"/>'
        '</node><node client_id="m" component_id="urn:x"><ol:lease_ref id_ref="a"/></node>'
    ) == [f"2:1: <ol:lease>: node urn:x {message}: give each of its slots a start time, or ask for it once"]
    # Each node asked for once, in a lease with no start or not: accepted.
    request = parse_request(
        f'{REQUEST_HEAD}{asap}<node client_id="n"><ol:lease_ref id_ref="a"/></node><node client_id="m">'
        '<ol:lease_ref id_ref="b"/></node><lease duration="2"><node component_id="urn:y"/></lease></rspec>',
        now=NOW,
        policy=POLICY,
    )
    assert [lease.nodes for lease in request.leases] == [("n",), ("m",), ("urn:y",)]


@pytest.mark.parametrize(
    "namespace",
    [
        "http://nitlab.inf.uth.gr/schema/sfa/rspec/1/",
        "https://nitlab.inf.uth.gr/schema/sfa/rspec/1",
        "http://schema.mytestbed.net/rspec/0.1",
    ],
)
def test_leases_of_a_mistyped_ol_namespace_are_refused_not_ignored(namespace: str) -> None:
    """As elements of another namespace they passed unread, and the node was booked from now for the default
    duration instead of in the slot asked for, without a word."""
    declared = f'xmlns:o="{namespace}"'
    expected = f'not read, so its time slot would be ignored: ol leases are in namespace "{OL}"'
    assert problems_of(
        f'<o:lease {declared} client_id="a" valid_from="2026-12-01T10:00:00Z" duration="3600"/>'
        f'<node client_id="n"><o:lease_ref {declared} id_ref="a"/></node>'
    ) == [
        f"2:1: <{{{namespace}}}lease>: {expected}",
        f"2:{106 + len(namespace)}: <{{{namespace}}}lease_ref>: {expected}",
    ]


@pytest.mark.parametrize(
    "namespace", ["http://www.protogeni.net/resources/rspec/ext/emulab/1", "urn:other:ext", "http://example.org/x"]
)
def test_extensions_named_lease_in_other_namespaces_pass(namespace: str) -> None:
    """Only a mistyped ol namespace (or omf_sfa's) is taken for a lease meant for us: other extensions of that name
    are GENI extensions, read by whom they are for."""
    request = parse_request(
        f'{REQUEST_HEAD}<node client_id="n" xmlns:x="{namespace}"><x:lease_ref id_ref="a"/><x:lease/></node>'
        f'<x:lease xmlns:x="{namespace}" client_id="a"/></rspec>',
        now=NOW,
        policy=POLICY,
    )
    assert [node.client_id for node in request.nodes] == ["n"]


def test_an_sfa_lease_cannot_add_a_node_under_another_nodes_client_id() -> None:
    """A node only an SFA lease names is added under its component_id as client_id. When that already named another
    node, the request held two nodes of one client_id, and the first one (its sliver type, its image) was lost."""
    assert problems_of(
        '<node client_id="urn:x"><sliver_type name="raw-pc"><disk_image name="ubuntu"/></sliver_type></node>'
        '<lease start_time="1796119200" duration="2"><node component_id="urn:x"/></lease>'
    ) == [
        "2:100: <lease>: this lease books component urn:x, which is the client_id of a node of this request without "
        'that component_id: give that node component_id="urn:x", or another client_id'
    ]


def test_sfa_leases_of_one_slot_merge_their_nodes_once_each_in_order() -> None:
    """Merging searched and copied a tuple for each lease: quadratic, about 9 s for 20 000 one-node leases of one
    slot and most of a minute for a 4 MB request (measured by a script; no time is asserted here). Merged in a dict,
    each component is also listed once, even when one lease names it twice."""
    leases = "".join(
        f'<lease start_time="1796119200" duration="2"><node component_id="urn:x{i}"/><node component_id="urn:x{i}"/>'
        f'<node component_id="urn:x{i - 1}"/></lease>'
        for i in range(1, 2001)
    )
    document = load(f"{REQUEST_HEAD}{leases}</rspec>")
    reader = Reader(document)
    (lease,) = sfa.read_leases(reader, document.root, POLICY.grain)
    assert reader.problems == []
    assert lease.component_ids == tuple(f"urn:x{i}" for i in [1, 0, *range(2, 2001)])
    assert lease.element is document.root[0]


def test_nodes_of_other_aggregates_are_left_to_them() -> None:
    """omni and jFed send a slice's whole request to each of its aggregates. Every node was read as ours, and a
    request that also held a node of another testbed was refused ("no such node(s)", code 12) by the aggregate."""
    wall = "urn:publicid:IDN+wall2.ilabt.iminds.be+authority+cm"
    text = (
        f"{REQUEST_HEAD}"
        '<ol:lease client_id="a" valid_from="2026-12-01T10:00:00Z" duration="3600"/>'
        f'<node client_id="here" component_id="{node_urn("node1")}" component_manager_id="{CM.upper()}">'
        '<ol:lease_ref id_ref="a"/></node>'
        f'<node client_id="there" component_id="urn:publicid:IDN+wall2.ilabt.iminds.be+node+n097-01" '
        f'component_manager_id="{wall}"><ol:lease_ref id_ref="a"/></node>'
        f'<node client_id="anywhere" component_manager_id="{wall}"/>'
        '<lease start_time="1796133600" duration="2"><node component_id="urn:publicid:IDN+wall2.ilabt.iminds.be+node+'
        'n097-01"/></lease>'
        f'<lease start_time="1796140800" duration="2"><node component_id="{node_urn("node2")}"/></lease>'
        "</rspec>"
    )
    ours = parse_request(text, now=NOW, policy=dataclasses.replace(POLICY, component_manager_id=CM))
    assert [node.client_id for node in ours.nodes] == ["here", node_urn("node2")]
    assert [(lease.start, lease.nodes) for lease in ours.leases] == [
        (DAY + 10 * H, ("here",)),
        (DAY + 16 * H, (node_urn("node2"),)),
    ]
    # Without the aggregate's URN every node is read (what `sfa-omf rspec validate` checks).
    everyone = parse_request(text, now=NOW, policy=POLICY)
    assert [node.client_id for node in everyone.nodes] == ["here", "there", "anywhere", node_urn("node2")]


def test_a_node_of_ours_said_to_be_anothers_is_refused_not_left_out() -> None:
    """A stale or mistyped component_manager_id on one of this aggregate's nodes: left out as another aggregate's,
    the node went unbooked while the call answered success."""
    wall = "urn:publicid:IDN+wall2.ilabt.iminds.be+authority+cm"
    text = (
        f'{REQUEST_HEAD}<node client_id="a" component_id="{node_urn("node1")}" component_manager_id="{wall}"/>'
        f'<node client_id="b" component_id="{node_urn("node2")}" component_manager_id="{CM}"/></rspec>'
    )
    with pytest.raises(RSpecError) as refused:
        parse_request(text, now=NOW, policy=dataclasses.replace(POLICY, component_manager_id=CM))
    assert [str(problem) for problem in refused.value.problems] == [
        f"1:124: <node>: node {node_urn('node1')} is this aggregate's, but its component_manager_id names {wall}: "
        f"write {CM}"
    ]
