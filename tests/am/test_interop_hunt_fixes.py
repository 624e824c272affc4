"""What an interop hunt with the real omni 2.11 and sfi.py found (session 29):

- the tutorial's omni commands failed as written: omni has no --cert/--key (they go in an omni_config), and omni
  defaults to AM API v2, so every v3 call needs -V3;
- geni_extend_alap gave a lease booked from now (its first slot partial) one slot less than a plain Renew allows: it
  counted the maximum duration from the lease's start, the calendar's renewal from its first whole slot;
- geni_start/stop/restart naming the slice were refused whole when the slice also held a lease for later: they act
  on the leases running now and leave the others as they are, saying so in each of their slivers'
  geni_resource_status (AM API v3's field for the aggregate's own word on a sliver in that answer).
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.am.states import OPERATIONAL_TRANSITIONS, Event, Operational
from sfa_omf.calendar.intervals import align_up
from sfa_omf.calendar.policy import PolicyViolation
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.errors import REASON_CODES, GeniCode, GeniError
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
GRAIN_S = 1800


def frozen_at_38_s_past_a_half_hour() -> datetime:
    """A moment 38 seconds into a slot (the hunt's 10:30:38), an hour or two ahead (credentials hold 30 days)."""
    return utcnow().replace(minute=30, second=38, microsecond=0) + timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    """Nodes n1, n2 in the aggregate's grain (30 minutes), g45 in slots of 45 minutes; the clock frozen."""
    nodes = [NodeSpec(node_urn(n), n) for n in ("n1", "n2")] + [NodeSpec(node_urn("g45"), "g45", grain_s=45 * 60)]
    with aggregate_on(request.param, tmp_path, pki, *nodes) as made:
        frozen = frozen_at_38_s_past_a_half_hour()
        made.clock = made.bookings.clock = lambda: frozen
        yield made


def no_time_request(*nodes: str) -> str:
    """What omni and jFed send: nodes, no lease, no time (booked from now)."""
    return (
        f'<rspec type="request" xmlns="{GENI}">'
        + "".join(
            f'<node client_id="{n}" component_id="{node_urn(n)}" exclusive="true"><sliver_type name="raw-pc"/></node>'
            for n in nodes
        )
        + "</rspec>"
    )


def window_request(node: str, start: datetime, end: datetime) -> str:
    return (
        f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">'
        f'<ol:lease client_id="l" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'
        f'<node client_id="{node}" component_id="{node_urn(node)}" exclusive="true"><sliver_type name="raw-pc"/>'
        '<ol:lease_ref id_ref="l"/></node></rspec>'
    )


def allocate(aggregate: Aggregate, pki: DemoPki, rspec: str) -> LeaseRecord:
    """alice's Allocate in testbed.demo: the one lease it booked."""
    alice = pki.users["alice"]
    before = {lease.id for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)}
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, {})
    (lease,) = [found for found in aggregate.bookings.leases(slice_urn=pki.slice_urn) if found.id not in before]
    return lease


def stored(aggregate: Aggregate, lease_id: str) -> LeaseRecord:
    (lease,) = [found for found in aggregate.bookings.leases() if found.id == lease_id]
    return lease


def refusal_of_plain_renew(aggregate: Aggregate, pki: DemoPki, lease: LeaseRecord, asked: datetime) -> str:
    alice = pki.users["alice"]
    with pytest.raises(PolicyViolation) as refused:
        aggregate.renew(alice.chain, [s.urn for s in lease.slivers], [alice.slice_cred], format_time(asked), {})
    assert refused.value.rule == "max_duration"
    latest = re.search(r"it may end at (\S+) at the latest", refused.value.message)
    assert latest is not None, refused.value.message
    return latest.group(1)


# geni_extend_alap reaches as far as a plain Renew may go.


def test_alap_extends_a_lease_booked_from_now_as_far_as_a_plain_renew_may(aggregate: Aggregate, pki: DemoPki) -> None:
    """The hunt's case: booked at 10:30:38, a plain Renew to nine days on was refused "it may end at <11:00 seven
    days on> at the latest", and asking for that end succeeded; geni_extend_alap ended the lease at 10:30."""
    alice = pki.users["alice"]
    now = aggregate.clock()
    first = allocate(aggregate, pki, no_time_request("n1"))
    second = allocate(aggregate, pki, no_time_request("n2"))
    assert first.start == second.start == now, "booked from now, inside a slot"
    expected = from_s(align_up(to_s(now), GRAIN_S)) + timedelta(seconds=aggregate.policy.max_duration_s)
    asked = now + timedelta(days=9)

    latest = refusal_of_plain_renew(aggregate, pki, first, asked)
    assert latest == format_time(expected)
    (plain,) = aggregate.renew(alice.chain, [first.slivers[0].urn], [alice.slice_cred], latest, {})
    assert stored(aggregate, first.id).end == expected, plain["sfa_omf_renewal"]

    (alap,) = aggregate.renew(
        alice.chain, [second.slivers[0].urn], [alice.slice_cred], format_time(asked), {"geni_extend_alap": True}
    )
    assert stored(aggregate, second.id).end == expected, alap["sfa_omf_renewal"]
    assert alap["geni_end_time"] == latest
    # Asked again, it keeps that end, and says from where the maximum is counted.
    (again,) = aggregate.renew(
        alice.chain, [second.slivers[0].urn], [alice.slice_cred], format_time(asked), {"geni_extend_alap": True}
    )
    note = again["sfa_omf_renewal"]
    assert note.startswith(f"unchanged: lease {second.id} keeps its end {latest}"), note
    assert f"from its first whole slot ({format_time(from_s(align_up(to_s(now), GRAIN_S)))}" in note, note


def test_alap_and_the_renewal_count_alike_for_nodes_of_different_slots(aggregate: Aggregate, pki: DemoPki) -> None:
    """One lease on n1 (30-minute slots) and g45 (45-minute slots) booked from now: the maximum is counted from the
    first boundary of either node's slots after its start, by geni_extend_alap as by the calendar's renewal."""
    alice = pki.users["alice"]
    now = aggregate.clock()
    lease = allocate(aggregate, pki, no_time_request("n1", "g45"))
    assert lease.start == now and len(lease.slivers) == 2
    asked = now + timedelta(days=9)
    latest = refusal_of_plain_renew(aggregate, pki, lease, asked)

    answers = aggregate.renew(
        alice.chain, [s.urn for s in lease.slivers], [alice.slice_cred], format_time(asked), {"geni_extend_alap": True}
    )
    assert {answer["geni_end_time"] for answer in answers} == {latest}
    assert format_time(stored(aggregate, lease.id).end) == latest
    counted_from = min(align_up(to_s(now), grain) for grain in (GRAIN_S, 45 * 60))
    assert to_s(stored(aggregate, lease.id).end) - counted_from <= aggregate.policy.max_duration_s


# geni_start/stop/restart naming the slice act on the leases running now.


def v3(aggregate: Aggregate, pki: DemoPki, method: str, *params: Any) -> dict[str, Any]:
    """An AM API v3 call as the server dispatches it (the answer's envelope included), as alice."""
    answer: dict[str, Any] = ApiV3(aggregate)(CallContext(pki.users["alice"].chain, "127.0.0.1", "/"), method, params)
    return answer


def act(aggregate: Aggregate, pki: DemoPki, urns: list[str], action: str) -> dict[str, Any]:
    return v3(aggregate, pki, "PerformOperationalAction", urns, [pki.users["alice"].slice_cred], action, {})


def operational_states(aggregate: Aggregate, lease_id: str) -> set[str]:
    return {sliver.operational_state for sliver in stored(aggregate, lease_id).slivers}


@pytest.fixture
def running_and_later(aggregate: Aggregate, pki: DemoPki) -> tuple[LeaseRecord, LeaseRecord]:
    """alice's slice holds a provisioned lease running now (n1, booked from now) and a provisioned lease for
    tomorrow (n2)."""
    now = aggregate.clock()
    running = allocate(aggregate, pki, no_time_request("n1"))
    tomorrow = now.replace(minute=0, second=0) + timedelta(days=1)
    later = allocate(aggregate, pki, window_request("n2", tomorrow, tomorrow + timedelta(hours=1)))
    alice = pki.users["alice"]
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    return stored(aggregate, running.id), stored(aggregate, later.id)


SLIVER_FIELDS = {"geni_sliver_urn", "geni_allocation_status", "geni_operational_status", "geni_expires", "geni_error"}


@pytest.mark.parametrize(
    ("action", "reached"),
    [("geni_stop", Operational.NOTREADY), ("geni_restart", Operational.READY), ("geni_start", Operational.READY)],
)
def test_an_action_naming_the_slice_acts_on_the_running_lease_and_leaves_the_later_one(
    aggregate: Aggregate, pki: DemoPki, running_and_later: tuple[LeaseRecord, LeaseRecord], action: str, reached: str
) -> None:
    """It was refused whole (geni_code 1, "the slot of lease ... is ..., not now"). The answer keeps AM API v3's
    shape: every sliver of the slice, the later lease's saying in geni_resource_status that the action left it as it
    is (not in geni_error: nothing failed, and omni would report the call failed at the aggregate)."""
    running, later = running_and_later
    later_states = operational_states(aggregate, later.id)

    answer = act(aggregate, pki, [pki.slice_urn], action)

    assert answer["code"]["geni_code"] == 0, answer["output"]
    slivers = {sliver["geni_sliver_urn"]: sliver for sliver in answer["value"]}
    assert set(slivers) == {s.urn for s in running.slivers + later.slivers}
    assert all(set(sliver) >= SLIVER_FIELDS for sliver in slivers.values())
    (now_running,) = [slivers[s.urn] for s in running.slivers]
    assert now_running["geni_operational_status"] == reached and now_running["geni_error"] == ""
    assert "geni_resource_status" not in now_running
    assert operational_states(aggregate, running.id) == {reached}
    (left,) = [slivers[s.urn] for s in later.slivers]
    assert left["geni_allocation_status"] == "geni_provisioned"
    assert left["geni_operational_status"] == Operational.NOTREADY
    assert left["geni_error"] == ""
    note = left["geni_resource_status"]
    assert note.startswith(f"{action} left lease {later.id} as it is: its slot is {format_time(later.start)} "), note
    assert operational_states(aggregate, later.id) == later_states, "the later lease is untouched"


def test_the_transition_table_still_decides_for_the_running_lease(
    aggregate: Aggregate, pki: DemoPki, running_and_later: tuple[LeaseRecord, LeaseRecord]
) -> None:
    """geni_stop of a stopped sliver is not in the table: naming the slice, the call is refused whole as before
    (the later lease's notready state, from which the table would allow no stop either, is not what refuses it)."""
    running, later = running_and_later
    assert (Operational.NOTREADY, Event.STOP) not in OPERATIONAL_TRANSITIONS
    assert act(aggregate, pki, [pki.slice_urn], "geni_stop")["code"]["geni_code"] == 0
    before = (operational_states(aggregate, running.id), operational_states(aggregate, later.id))

    answer = act(aggregate, pki, [pki.slice_urn], "geni_stop")

    assert answer["code"]["geni_code"] == GeniCode.BADARGS, answer
    assert "cannot geni_stop a sliver that is geni_notready" in answer["output"]
    assert running.slivers[0].urn in answer["output"] and "nothing was changed" in answer["output"]
    assert (operational_states(aggregate, running.id), operational_states(aggregate, later.id)) == before


def test_an_allocation_not_provisioned_is_left_as_it_is_too(aggregate: Aggregate, pki: DemoPki) -> None:
    """A lease allocated after the slice's running one was provisioned: naming the slice acts on the running lease and
    leaves the allocation (it refused the whole call, "Provision first"); with the allocation alone, it is refused."""
    alice = pki.users["alice"]
    running = allocate(aggregate, pki, no_time_request("n1"))
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    allocated = allocate(aggregate, pki, no_time_request("n2"))

    answer = act(aggregate, pki, [pki.slice_urn], "geni_stop")

    assert answer["code"]["geni_code"] == 0, answer["output"]
    slivers = {sliver["geni_sliver_urn"]: sliver for sliver in answer["value"]}
    assert operational_states(aggregate, running.id) == {Operational.NOTREADY}
    note = slivers[allocated.slivers[0].urn]["geni_resource_status"]
    assert note == f"geni_stop left lease {allocated.id} as it is: it is allocated: Provision it first", note
    aggregate.delete(alice.chain, [s.urn for s in running.slivers], [alice.slice_cred], {})
    refused = act(aggregate, pki, [pki.slice_urn], "geni_start")
    assert refused["code"]["geni_code"] == GeniCode.BADARGS
    assert f"lease {allocated.id} is allocated: Provision first" in refused["output"], refused


@pytest.mark.parametrize("action", ["geni_start", "geni_stop", "geni_restart"])
def test_naming_the_slivers_of_the_later_lease_is_refused_and_says_what_to_do(
    aggregate: Aggregate, pki: DemoPki, running_and_later: tuple[LeaseRecord, LeaseRecord], action: str
) -> None:
    _, later = running_and_later
    answer = act(aggregate, pki, [s.urn for s in later.slivers], action)
    assert answer["code"]["geni_code"] == GeniCode.BADARGS, answer
    output = answer["output"]
    assert f"the slot of lease {later.id} is {format_time(later.start)}" in output and "nothing was changed" in output
    if action == "geni_start":
        assert f"starts by itself when its slot begins, at {format_time(later.start)}; nothing to do now" in output
    else:
        assert f"call {action} again from {format_time(later.start)}" in output


def test_naming_a_slice_with_no_lease_running_is_refused_and_says_when_the_next_starts(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    now = aggregate.clock()
    tomorrow = now.replace(minute=0, second=0) + timedelta(days=1)
    first = allocate(aggregate, pki, window_request("n1", tomorrow, tomorrow + timedelta(hours=1)))
    allocate(aggregate, pki, window_request("n2", tomorrow + timedelta(days=1), tomorrow + timedelta(days=1, hours=1)))
    alice = pki.users["alice"]
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    for action in ("geni_start", "geni_stop", "geni_restart"):
        with pytest.raises(GeniError) as refused:
            aggregate.perform_operational_action(alice.chain, [pki.slice_urn], [alice.slice_cred], action, {})
        assert REASON_CODES[refused.value.reason] == GeniCode.BADARGS
        message = refused.value.message
        assert f"no lease of slice {pki.slice_urn} runs now; the next, lease {first.id}, runs from " in message
        assert format_time(first.start) in message and "nothing was changed" in message


# The tutorial's omni commands, as omni 2.11 takes them.

V3_ONLY = {"allocate", "provision", "status", "describe", "renew", "delete", "performoperationalaction"}


def omni_commands(text: str) -> list[str]:
    """Every omni command a page gives: the lines of its indented or fenced blocks, and its inline code, that run
    omni (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    blocks = [line.strip() for line in joined.splitlines() if line.startswith("    ") and "omni " in line]
    inline = re.findall(r"`([^`\n]*)`", joined)
    return [" ".join(found.split()) for found in blocks + inline if re.match(r"omni\s", found.strip())]


@pytest.mark.parametrize("page", ["experimenters.md", "troubleshooting.md"])
def test_the_omni_commands_of_the_docs_are_ones_omni_takes(page: str) -> None:
    """omni 2.11: "no such option: --cert" (certificate and key are in the omni_config); without -V3 the v3 calls stop
    in the client ("Allocate is only available in AM API v3+ ... specify -V3")."""
    text = (DOCS / page).read_text(encoding="utf-8")
    assert "for omni, `--cert`" not in text
    commands = omni_commands(text)
    for command in commands:
        words = command.split()
        assert not {"--cert", "--key"} & set(words), f"omni has no --cert/--key options: {command}"
        assert words[:2] == ["omni", "-c"] and words[2].endswith("omni_config"), command
        verb = next(word for word in words[3:] if not word.startswith("-") and not word.startswith("http"))
        if verb in V3_ONLY:
            assert "-V3" in words, f"omni defaults to AM API v2: {command}"
            assert "-a" in words, command
        if "-a" in words:
            assert words[words.index("-a") + 1].startswith("https://"), command
    if page == "experimenters.md":
        verbs = {word for command in commands for word in command.split() if word in V3_ONLY}
        assert verbs == V3_ONLY, "the tutorial gives each v3 call with omni"


def test_the_tutorials_omni_config_names_the_files_sfa_omf_init_writes(pki: DemoPki) -> None:
    """The omni_config the tutorial gives (omni's sfa framework: the registry gives the slice credential), read as
    omni reads it, names alice's certificate, key and SSH key by the names init writes in her sfi folder, her URN,
    and the registry's and the aggregate's https:// URLs."""
    text = (DOCS / "experimenters.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```ini\n(.*?)^```$", text, re.MULTILINE | re.DOTALL) if "[omni]" in b]
    config = configparser.ConfigParser()
    config.read_string(block)
    framework = config[config["omni"]["default_cf"]]
    assert framework["type"] == "sfa" and framework["authority"] == "testbed" and framework["user"] == "testbed.alice"
    sfi = pki.users["alice"].sfi_dir
    for field in ("cert", "key"):
        assert framework[field].startswith("SFI/") and (sfi / framework[field].removeprefix("SFI/")).is_file()
    assert re.fullmatch(r"https://HOST:12345/", framework["registry"])
    assert re.fullmatch(r"https://HOST:12346/", framework["slicemgr"])
    (user,) = config["omni"]["users"].split(",")
    assert config[user]["urn"] == pki.users["alice"].chain[0].urn
    keys = config[user]["keys"]
    assert keys.startswith("SFI/") and (sfi / keys.removeprefix("SFI/")).is_file()
