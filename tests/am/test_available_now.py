"""ListResources' <available now> in the full listing agrees with geni_available: false on a node held now by an
external reservation (a mirrored OAR job: no booking of ours) and on a booked node advertised exclusive="false" (the
calendar books every node whole), on SQLite and PostgreSQL. The expected values come from the calendar's facts, not
from another writer of the same document."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from rspec.model import LeaseView
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, at, fresh_database, node_urn

GENI = "{http://www.geni.net/resources/rspec/3}"
NODE_VIEWS = (LeaseView.GENI, LeaseView.SFA_ALL)  # the views that list nodes
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"
# The external reservation starts and ends off the grain, so that only its own ends can make the cache rebuild.
HOLD_START = at(0.25) + timedelta(seconds=13)
HOLD_END = at(1.5) + timedelta(seconds=7)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def aggregate(database: Database, tmp_path: Path) -> Aggregate:
    """Nodes: "held" (an external reservation, HOLD_START..HOLD_END), "shared" (exclusive="false", booked
    at(0)..at(2)), "free"."""
    (tmp_path / "roots").mkdir()
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed", horizon=timedelta(days=2)),
        database,
        CredentialVerifier(load_trusted_roots(str(tmp_path / "roots"))),
        clock=Clock(at(0.5)),
    )
    made.inventory.add_node(NodeSpec(node_urn("held"), "held"))
    made.inventory.add_node(NodeSpec(node_urn("shared"), "shared", exclusive=False))
    made.inventory.add_node(NodeSpec(node_urn("free"), "free"))
    made.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("shared"), at(0), at(2))])
    ExternalHolds(database, "testbed").sync("oar", [ExternalHold("7", (node_urn("held"),), HOLD_START, HOLD_END)])
    return made


def available_now(document: str) -> dict[str, str]:
    """Each listed node's name -> its <available now> value."""
    root = etree.fromstring(document.encode("utf-8"))
    answer: dict[str, str] = {}
    for node in root.iterfind(f"{GENI}node"):
        available = node.find(f"{GENI}available")
        assert available is not None
        answer[node.get("component_name", "")] = available.get("now", "")
    return answer


def listings(aggregate: Aggregate, now: datetime) -> tuple[dict[LeaseView, dict[str, str]], set[str]]:
    """<available now> per node in the full listing of each node view, and the nodes geni_available=true lists."""
    full = {view: available_now(aggregate.advertiser.document(now, view, False)) for view in NODE_VIEWS}
    only_available = available_now(aggregate.advertiser.document(now, LeaseView.GENI, True))
    assert set(only_available.values()) <= {"true"}
    return full, set(only_available)


def test_a_node_held_now_by_an_external_reservation_is_not_available_now(aggregate: Aggregate) -> None:
    full, only_available = listings(aggregate, at(0.5))
    for view in NODE_VIEWS:
        assert full[view]["held"] == "false", view
        assert full[view]["free"] == "true", view
    assert only_available == {"free"}


def test_a_booked_non_exclusive_node_is_not_available_now(aggregate: Aggregate) -> None:
    # exclusive="false" shares nothing: the calendar refuses another slice's booking of the node while it is booked.
    with pytest.raises(GeniError) as refused:
        aggregate.bookings.book(OTHER_SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("shared"), at(0.5), at(1))])
    assert refused.value.reason is Reason.BOOKING_CONFLICT
    full, only_available = listings(aggregate, at(0.5))
    for view in NODE_VIEWS:
        assert full[view]["shared"] == "false", view
    assert "shared" not in only_available
    # Once its booking ended, it is available again.
    full, only_available = listings(aggregate, at(2))
    assert full[LeaseView.GENI]["shared"] == "true"
    assert "shared" in only_available


def test_available_now_flips_at_the_held_windows_ends_with_the_cache(aggregate: Aggregate) -> None:
    """The same advertiser (its cache, built before the reservation starts) asked at the seconds either side of the
    external reservation's start and end: "now" flips exactly there, in the full listing as in geni_available."""
    second = timedelta(seconds=1)
    expected_held = {
        HOLD_START - second: "true",
        HOLD_START: "false",
        HOLD_END - second: "false",
        HOLD_END: "true",
    }
    aggregate.advertiser.document(at(0.25), LeaseView.GENI, False)  # cached before the reservation starts
    for moment, held in expected_held.items():
        full, only_available = listings(aggregate, moment)
        for view in NODE_VIEWS:
            assert full[view]["held"] == held, (view, moment)
            assert {name for name, now in full[view].items() if now == "true"} == only_available, (view, moment)
