"""PerformOperationalAction follows the one transition table (sfa_omf/am/states.py): every sliver it would switch
is checked in the state Status reports before the testbed is asked anything; an action the table does not allow
from that state is refused (BADARGS naming the state and the actions possible from it) and changes nothing.
geni_start on a running sliver is accepted and changes nothing (clients call it after every Provision)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.am.states import OPERATIONAL_TRANSITIONS, Event, Operational, next_operational
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.testbed.embedded import EmbeddedTestbed
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

GENI_V3 = {"type": "GENI", "version": "3"}


class SwitchingTestbed(EmbeddedTestbed):
    """A stand-in for a testbed that switches nodes on PerformOperationalAction (the OMF controllers, which cannot
    run here): the embedded testbed, noting every action it is asked to do."""

    def __init__(self) -> None:
        super().__init__()
        self.operated: list[tuple[tuple[str, ...], str]] = []

    def operate(self, leases: Sequence[LeaseRecord], action: str) -> None:
        self.operated.append((tuple(lease.id for lease in leases), action))


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1")) as made:
        made.backend = SwitchingTestbed()
        yield made


class Client:
    """AM API v3 through its endpoint (argument checks, envelope), as alice with her slice credential."""

    def __init__(self, aggregate: Aggregate, pki: DemoPki) -> None:
        alice = pki.users["alice"]
        self.endpoint = ApiV3(aggregate)
        self.context = CallContext(alice.chain, "127.0.0.1", "/")
        self.credentials = [alice.slice_cred]
        self.slice_urn = pki.slice_urn

    def call(self, method: str, *params: Any) -> Any:
        return self.endpoint(self.context, method, params)

    def action(self, name: str) -> Any:
        return self.call("PerformOperationalAction", [self.slice_urn], self.credentials, name, {})

    def state(self) -> str:
        answer = self.call("Status", [self.slice_urn], self.credentials, {})
        (sliver,) = answer["value"]["geni_slivers"]
        return str(sliver["geni_operational_status"])


@pytest.fixture
def client(aggregate: Aggregate, pki: DemoPki) -> Client:
    """A sliver on n1, booked from now (its slot runs) and provisioned."""
    made = Client(aggregate, pki)
    request = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="n1" component_id="{node_urn("n1")}" exclusive="true"/></rspec>'
    )
    assert made.call("Allocate", pki.slice_urn, made.credentials, request, {})["code"]["geni_code"] == 0
    provisioned = made.call("Provision", [pki.slice_urn], made.credentials, {"geni_rspec_version": GENI_V3})
    assert provisioned["code"]["geni_code"] == 0, provisioned
    assert made.state() == "geni_ready"
    return made


def recorded(aggregate: Aggregate) -> list[str]:
    return [sliver.operational_state for lease in aggregate.bookings.leases() for sliver in lease.slivers]


def test_stopping_a_stopped_sliver_is_refused_and_changes_nothing(aggregate: Aggregate, client: Client) -> None:
    stopped = client.action("geni_stop")
    assert stopped["code"]["geni_code"] == 0, stopped
    assert client.state() == "geni_notready"
    testbed = aggregate.backend
    assert isinstance(testbed, SwitchingTestbed)
    operated, before = list(testbed.operated), recorded(aggregate)

    again = client.action("geni_stop")

    assert again["code"]["geni_code"] == 1, again
    message = again["output"]
    assert "cannot geni_stop a sliver that is geni_notready" in message and "possible now: geni_start" in message
    assert "nothing was changed" in message
    assert client.state() == "geni_notready" and recorded(aggregate) == before
    assert testbed.operated == operated, "the testbed was not asked to switch anything"


def test_restarting_a_stopped_sliver_is_refused_and_starting_it_works(aggregate: Aggregate, client: Client) -> None:
    assert client.action("geni_stop")["code"]["geni_code"] == 0
    restarted = client.action("geni_restart")
    assert restarted["code"]["geni_code"] == 1 and "geni_notready" in restarted["output"], restarted
    assert client.state() == "geni_notready"

    started = client.action("geni_start")
    assert started["code"]["geni_code"] == 0, started
    assert client.state() == "geni_ready"
    # The table's geni_configuring, then its backend_ready once the testbed has acted: recorded as Status reads it.
    assert recorded(aggregate) == [Operational.READY]


def test_starting_a_running_sliver_is_accepted_and_changes_nothing(aggregate: Aggregate, client: Client) -> None:
    """omni, jFed and GENI's acceptance tests call geni_start after Provision; here the sliver already runs."""
    before = recorded(aggregate)
    started = client.action("geni_start")
    assert started["code"]["geni_code"] == 0, started
    assert client.state() == "geni_ready" and recorded(aggregate) == before == [Operational.READY]


def test_the_table_for_the_experimenter_actions() -> None:
    """Stopped: only geni_start. Running, starting or failed: start (changing nothing when it runs or starts), stop
    and restart."""
    actions = (Event.START, Event.STOP, Event.RESTART)
    assert {e for (s, e) in OPERATIONAL_TRANSITIONS if s == Operational.NOTREADY and e in actions} == {Event.START}
    for state in (Operational.READY, Operational.CONFIGURING, Operational.FAILED):
        assert {e for (s, e) in OPERATIONAL_TRANSITIONS if s == state and e in actions} == set(actions), state
        assert next_operational(state, Event.STOP) == Operational.NOTREADY
    assert next_operational(Operational.READY, Event.START) == Operational.READY
    assert next_operational(Operational.CONFIGURING, Event.START) == Operational.CONFIGURING
