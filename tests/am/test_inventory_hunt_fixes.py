"""Defects an inventory hunt found, each fixed: a private pool's nodes booked by users of other authorities; a node
whose agent went silent during maintenance never lost again once usable; geni_extend_alap refusing a whole Renew for
a lease with a node out of use; ``lease list --node NAME`` listing nothing. On SQLite and PostgreSQL (the CLI's
cases on the SQLite site that ``sfa-omf init`` makes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.agents import Agents, Enrolment
from sfa_omf.calendar.booking import BookingConflict, Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Node
from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import GidChain, load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import aggregate_on
from tests.am.test_unit_of_work import FaultInjectingTestbed
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki
from tests.test_cli_calendar import config, run  # noqa: F401 (the fixture: an init site)

OL_NS = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
SECRET = node_urn("secret")  # a node of the private pool
GHOST = node_urn("ghost")  # no node at all


@dataclass
class Foreigner:
    """dave, a user of another authority ("other") the aggregate trusts, with his slice other.demo's credential."""

    chain: GidChain
    slice_cred: str
    slice_urn: str
    roots_dir: Path


@pytest.fixture(scope="module")
def foreigner(tmp_path_factory: pytest.TempPathFactory, pki: DemoPki) -> Foreigner:
    base = tmp_path_factory.mktemp("other")
    init_directory(str(base / "authority"), "other", ("dave",))
    roots = base / "roots"
    roots.mkdir()
    shutil.copy(pki.directory / "trusted_roots" / "testbed.gid", roots)
    shutil.copy(base / "authority" / "trusted_roots" / "other.gid", roots)
    sfi = base / "authority" / "users" / "dave" / "sfi"
    return Foreigner(
        chain=load_gid_chain_file(str(sfi / "other.dave.user.gid")),
        slice_cred=(sfi / "other.dave-other.demo.slice.cred").read_text(),
        slice_urn="urn:publicid:IDN+other+slice+demo",
        roots_dir=roots,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(
    request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki, foreigner: Foreigner
) -> Iterator[Aggregate]:
    """The demo aggregate with n1, n2 (federated) and a private pool "staff" holding ``secret``; it trusts both
    authorities."""
    with aggregate_on(
        request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1"), NodeSpec(node_urn("n2"), "n2")
    ) as made:
        made.backend = FaultInjectingTestbed()
        made.verifier = CredentialVerifier(load_trusted_roots(str(foreigner.roots_dir)), VerdictCache())
        made.inventory.create_pool("staff", federated=False, description="for local users")
        made.inventory.add_node(NodeSpec(SECRET, "secret", pool="staff"))
        yield made


def v3(aggregate: Aggregate, chain: GidChain, method: str, *params: Any) -> dict[str, Any]:
    return ApiV3(aggregate)(CallContext(chain, "127.0.0.1", "/"), method, params)  # type: ignore[no-any-return]


def v2(aggregate: Aggregate, chain: GidChain, method: str, *params: Any) -> dict[str, Any]:
    return ApiV2(aggregate)(CallContext(chain, "127.0.0.1", "/am2"), method, params)  # type: ignore[no-any-return]


def code(answer: dict[str, Any]) -> int:
    return int(answer["code"]["geni_code"])


def slot(minutes: int) -> datetime:
    now = utcnow()
    return now.replace(minute=now.minute // 30 * 30, second=0, microsecond=0) + timedelta(minutes=minutes)


def request_for(*nodes: str, timed: bool = True, image: str = "") -> str:
    """A request of one lease on these nodes: the next whole hour but one, or (not ``timed``) an hour as soon as
    possible; with ``image``, each node asks for that disk image."""
    lease = (
        f'<ol:lease client_id="l" valid_from="{format_time(slot(60))}" valid_until="{format_time(slot(120))}"/>'
        if timed
        else '<ol:lease client_id="l" duration="3600"/>'
    )
    sliver = f'<sliver_type name="raw-pc"><disk_image name="{image}"/></sliver_type>' if image else ""
    body = "".join(
        f'<node client_id="c{i}" component_id="{node}">{sliver}<ol:lease_ref id_ref="l"/></node>'
        for i, node in enumerate(nodes)
    )
    return (
        f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL_NS}">{lease}{body}</rspec>'
    )


def as_if_unknown(answer: dict[str, Any]) -> tuple[int, str, list[str]]:
    """What a caller learns of a call: its code, its words and each refused sliver's error, with the private node's
    and the missing node's names made the same."""
    said = str(answer.get("output", "")).replace(SECRET, "NODE").replace(GHOST, "NODE")
    errors = (
        [
            str(s.get("geni_error", "")).replace(SECRET, "NODE").replace(GHOST, "NODE")
            for s in answer["value"]["geni_slivers"]
        ]
        if code(answer) == 0
        else []
    )
    return code(answer), said, errors


# -- 1. a private pool's nodes are not another authority's to book ----------------------------------------------
@pytest.mark.parametrize("timed", [True, False], ids=["window", "as-soon-as-possible"])
@pytest.mark.parametrize("best_effort", [False, True], ids=["whole", "best-effort"])
@pytest.mark.parametrize("image", ["", "nosuch"], ids=["no-image", "unknown-image"])
def test_another_authority_cannot_allocate_a_private_pools_node(
    aggregate: Aggregate, foreigner: Foreigner, timed: bool, best_effort: bool, image: str
) -> None:
    """Refused exactly as a node the aggregate does not have is (same code, same words): nothing is booked, and
    nothing tells the caller the node exists (nor which images it runs)."""
    answers = {}
    for node in (GHOST, SECRET):
        answer = v3(
            aggregate,
            foreigner.chain,
            "Allocate",
            foreigner.slice_urn,
            [foreigner.slice_cred],
            request_for(node, timed=timed, image=image),
            {"geni_best_effort": best_effort},
        )
        answers[node] = as_if_unknown(answer)
    assert answers[SECRET][0] != 0, "the private node was booked by a user of another authority"
    assert answers[SECRET] == answers[GHOST]
    assert aggregate.bookings.leases() == []


def test_best_effort_of_another_authority_books_the_federated_nodes_only(
    aggregate: Aggregate, foreigner: Foreigner
) -> None:
    answer = v3(
        aggregate,
        foreigner.chain,
        "Allocate",
        foreigner.slice_urn,
        [foreigner.slice_cred],
        request_for(node_urn("n1"), SECRET),
        {"geni_best_effort": True},
    )
    assert code(answer) == 0, answer.get("output")
    refused = [s for s in answer["value"]["geni_slivers"] if not s["geni_sliver_urn"]]
    assert [s["geni_error"] for s in refused] == [f"{SECRET} is not a node of ours"]
    assert [lease.nodes for lease in aggregate.bookings.leases()] == [(node_urn("n1"),)]


def test_another_authority_cannot_create_a_sliver_on_a_private_pools_node(
    aggregate: Aggregate, foreigner: Foreigner
) -> None:
    said = {}
    for node in (GHOST, SECRET):
        answer = v2(
            aggregate,
            foreigner.chain,
            "CreateSliver",
            foreigner.slice_urn,
            [foreigner.slice_cred],
            request_for(node),
            [],
            {},
        )
        said[node] = as_if_unknown(answer)
    assert said[SECRET][0] != 0 and said[SECRET] == said[GHOST]
    assert aggregate.bookings.leases() == []


def test_local_users_still_book_renew_and_provision_a_private_pools_node(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    allocated = v3(aggregate, alice.chain, "Allocate", pki.slice_urn, [alice.slice_cred], request_for(SECRET), {})
    assert code(allocated) == 0, allocated.get("output")
    slivers = [s["geni_sliver_urn"] for s in allocated["value"]["geni_slivers"]]
    renewed = v3(aggregate, alice.chain, "Renew", slivers, [alice.slice_cred], format_time(slot(150)), {})
    assert code(renewed) == 0, renewed.get("output")
    provisioned = v3(aggregate, alice.chain, "Provision", slivers, [alice.slice_cred], {})
    assert code(provisioned) == 0, provisioned.get("output")
    (lease,) = aggregate.bookings.leases()
    assert (lease.nodes, lease.state, lease.end) == ((SECRET,), "provisioned", slot(150))
    untimed = v3(
        aggregate,
        alice.chain,
        "Allocate",
        pki.slice_urn,
        [alice.slice_cred],
        request_for(node_urn("n2"), SECRET, timed=False),
        {},
    )
    assert code(untimed) == 0, untimed.get("output")


# -- 3. geni_extend_alap keeps a lease whose node is out of use and extends the others --------------------------
def book(aggregate: Aggregate, pki: DemoPki, node: str) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    (lease,) = aggregate.bookings.book(pki.slice_urn, expires, [BookingRequest(node, slot(60), slot(120))]).leases
    return lease


def put_in_state(database: Database, component_id: str, state: str) -> None:
    """A node's state written as the calendar writes it (``lost``: as agents.sweep_lost does)."""
    with database.write() as session:
        session.execute(update(Node).where(Node.component_id == component_id).values(state=state))


@pytest.mark.parametrize("state", ["maintenance", "lost"])
@pytest.mark.parametrize("named", ["slivers", "slice"])
def test_alap_keeps_the_lease_of_a_node_out_of_use_and_extends_the_others(
    aggregate: Aggregate, pki: DemoPki, state: str, named: str
) -> None:
    alice = pki.users["alice"]
    down, up = book(aggregate, pki, node_urn("n1")), book(aggregate, pki, node_urn("n2"))
    put_in_state(aggregate.database, node_urn("n1"), state)
    urns = [s.urn for lease in (down, up) for s in lease.slivers] if named == "slivers" else [pki.slice_urn]

    answer = v3(
        aggregate, alice.chain, "Renew", urns, [alice.slice_cred], format_time(slot(180)), {"geni_extend_alap": True}
    )

    assert code(answer) == 0, answer.get("output")
    by_sliver = {s["geni_sliver_urn"]: s for s in answer["value"]}
    why = "is in maintenance" if state == "maintenance" else "has lost contact"
    note = by_sliver[down.slivers[0].urn]["sfa_omf_renewal"]
    assert note.startswith(f"unchanged: lease {down.id} keeps its end {format_time(down.end)}"), note
    assert f"geni_extend_alap cannot extend it: {node_urn('n1')} {why}" in note
    ends = {lease.id: lease.end for lease in aggregate.bookings.leases()}
    assert ends == {down.id: down.end, up.id: slot(180)}
    events = NotifyEvents(aggregate.database).since(utcnow() - timedelta(hours=1))
    assert [event for event in events if event.event == "renewal_refused"] == []


# -- 2. a node whose agent went silent during maintenance is lost when made usable -------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = fresh_database(request.param, tmp_path)
    yield made
    made.dispose()


def enrolled(database: Database, clock: Clock, name: str = "a1") -> Agents:
    agents = Agents(database, clock=clock)
    token, _ = agents.create_token("default", 600)
    agents.register(Enrolment(token, name, node_urn(name), "00" * 32), lambda _urn: ("", ""))
    return agents


def test_a_node_silent_during_maintenance_is_lost_when_made_usable_until_heard(database: Database) -> None:
    clock = Clock()
    agents = enrolled(database, clock)
    inventory = Inventory(database)
    node = node_urn("a1")
    inventory.set_state(node, "maintenance")
    clock.now += timedelta(seconds=300)
    assert agents.sweep_lost(120) == [node]  # its agent is lost; the operator's maintenance stands
    assert inventory.get_node(node).state == "maintenance"

    assert inventory.set_state(node, "usable").state == "lost"
    assert inventory.get_node(node).state == "lost"
    start = clock.now.replace(minute=0, second=0) + timedelta(hours=2)
    with pytest.raises(BookingConflict, match="has lost contact"):
        Bookings(database, clock=clock).book(
            "urn:publicid:IDN+testbed+slice+exp",
            clock.now + timedelta(days=1),
            [BookingRequest(node, start, start + timedelta(hours=1))],
        )

    agents.heartbeat(node)
    assert inventory.get_node(node).state == "usable"


def test_a_node_whose_agent_is_heard_or_absent_is_made_usable(database: Database) -> None:
    clock = Clock()
    enrolled(database, clock)
    inventory = Inventory(database)
    inventory.add_node(NodeSpec(node_urn("plain"), "plain"))
    for node in (node_urn("a1"), node_urn("plain")):
        inventory.set_state(node, "maintenance")
        assert inventory.set_state(node, "usable").state == "usable"


# -- 2 and 4 on the command line ----------------------------------------------------------------------------------
def test_set_state_says_a_silent_agents_node_is_lost(
    config: str,  # noqa: F811 (the fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = Database(read_config(config).calendar_url)
    clock = Clock()
    agents = enrolled(database, clock)
    Inventory(database).set_state(node_urn("a1"), "maintenance")
    clock.now += timedelta(seconds=300)
    agents.sweep_lost(120)
    database.dispose()

    answer, out, err = run(capsys, "node", "set-state", "a1", "usable", "--config", config)

    assert answer == 0, err
    assert out.startswith(f"{node_urn('a1')} is lost: its agent has not been heard"), out
    assert "usable at the agent's next heartbeat" in out


def test_lease_list_takes_a_bare_node_name(
    config: str,  # noqa: F811 (the fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, "node", "add", "n1", "--config", config)[0] == 0
    database = Database(read_config(config).calendar_url)
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    (lease,) = (
        Bookings(database)
        .book(
            "urn:publicid:IDN+testbed+slice+demo",
            start + timedelta(days=1),
            [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))],
        )
        .leases
    )
    database.dispose()

    answer, out, err = run(capsys, "lease", "list", "--node", "n1", "--json", "--config", config)

    assert answer == 0, err
    assert [found["id"] for found in json.loads(out)] == [lease.id]
