"""Web calendar fixtures: a calendar on SQLite and on a real PostgreSQL (as tests/calendar), with a few nodes in two
pools, leases of the demo slice (alice's) and of another slice, one node in maintenance and one external hold."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.web.app import WebCalendar, WebSettings
from tests.calendar.conftest import NOW, fresh_database, node_urn
from tests.conftest import DemoPki

ALICE = "urn:publicid:IDN+testbed+user+alice"
CAROL = "urn:publicid:IDN+testbed+user+carol"  # the operator in these tests
DEMO = "urn:publicid:IDN+testbed+slice+demo"  # alice's slice (she books in it)
OTHER = "urn:publicid:IDN+elsewhere+slice+secret"
EXPIRES = NOW + timedelta(days=30)


def at(hours: float) -> datetime:
    return NOW + timedelta(hours=hours)


@dataclass
class Lab:
    database: Database
    bookings: Bookings
    inventory: Inventory
    web: WebCalendar
    clock: list[datetime]
    demo_lease: str
    other_lease: str

    @property
    def now(self) -> datetime:
        return self.clock[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def lab(database: Database, pki: DemoPki) -> Lab:
    clock = [NOW]
    inventory = Inventory(database, Policy())
    inventory.create_pool("usrp")
    for name, pool, hardware in (("n1", "default", "icarus"), ("n2", "default", "icarus"), ("u1", "usrp", "usrp2")):
        inventory.add_node(NodeSpec(node_urn(name), name, pool=pool, hardware_type=hardware, properties={"cpu": "4"}))
    inventory.create_pool("hidden", federated=False)
    inventory.add_node(NodeSpec(node_urn("m1"), "m1", pool="hidden", hardware_type="icarus"))
    inventory.set_state(node_urn("m1"), "maintenance")
    bookings = Bookings(database, Policy(), "testbed", clock=lambda: clock[0])
    demo = bookings.book(
        DEMO,
        EXPIRES,
        [BookingRequest(node_urn("n1"), at(2), at(4)), BookingRequest(node_urn("n2"), at(2), at(4))],
        owner_urn=ALICE,
        users={ALICE: ["ssh-ed25519 AAAA alice"]},
    ).leases[0]
    other = bookings.book(OTHER, EXPIRES, [BookingRequest(node_urn("n1"), at(6), at(9))], owner_urn="").leases[0]
    ExternalHolds(database, "testbed").sync("oar", [ExternalHold("oar:12", (node_urn("u1"),), at(1), at(3), "job 12")])
    web = WebCalendar(
        database,
        CredentialVerifier(pki.roots, VerdictCache()),
        WebSettings(host="am.testbed.example", admins=frozenset({CAROL}), horizon=timedelta(days=2), free_windows=3),
        clock=lambda: clock[0],
    )
    return Lab(database, bookings, inventory, web, clock, demo.id, other.id)


# The real aggregate served over TLS (tests/web/served.py), for the HTTPS and browser tests.
from tests.web.served import served  # noqa: E402, F401
