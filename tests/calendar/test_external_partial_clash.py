"""A reservation made outside sfa-omf that clashes with one of our bookings on some of its nodes is mirrored on its
other nodes (the source holds them: the calendar must not give them away) and reported as clashing; on the clashing
nodes our booking stands. In the calendar on SQLite and PostgreSQL, and end to end against the real OAR."""

from __future__ import annotations

import pytest

from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.oar.client import OarClient
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn
from tests.conftest import pki  # noqa: F401 (site)
from tests.testbed.oar.conftest import OarJobs, oar_client, oar_jobs, oar_url, oar_users  # noqa: F401 (site)
from tests.testbed.oar.test_backend import Site, site  # noqa: F401 (the aggregate on OAR)


def hold(key: str, start_h: float, end_h: float, *names: str) -> ExternalHold:
    return ExternalHold(key, tuple(node_urn(name) for name in names), at(start_h), at(end_h), f"OAR job {key}")


def test_the_nodes_that_do_not_clash_are_mirrored(calendar: Calendar) -> None:
    ours = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    external = ExternalHolds(calendar.database, "testbed")
    report = external.sync("oar", [hold("oar:5", 1, 3, "n1", "n2")])
    assert report.clashing == ["oar:5"] and report.added == ["oar:5"]
    assert [(h.key, h.nodes) for h in external.holds("oar")] == [("oar:5", (node_urn("n2"),))]
    with pytest.raises(BookingConflict) as refused:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(1), at(2))])
    assert "is reserved outside sfa-omf (OAR job oar:5)" in refused.value.conflicts[0].describe()
    assert len(calendar.bookings.leases(node=node_urn("n1"))) == 1, "our booking on n1 stands"

    # The next rounds keep the mirror as it is (nothing replaced) and still report the clash.
    again = external.sync("oar", [hold("oar:5", 1, 3, "n1", "n2")])
    assert (again.kept, again.added, again.removed, again.clashing) == (1, [], [], ["oar:5"])

    # Once our booking is gone, the reservation is mirrored on all its nodes.
    (lease,) = ours.leases
    calendar.bookings.cancel(lease.id)
    freed = external.sync("oar", [hold("oar:5", 1, 3, "n1", "n2")])
    assert (freed.added, freed.clashing) == (["oar:5"], [])
    assert [h.nodes for h in external.holds("oar")] == [(node_urn("n1"), node_urn("n2"))]


def test_a_reservation_clashing_on_every_node_is_not_mirrored(calendar: Calendar) -> None:
    calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))],
    )
    report = ExternalHolds(calendar.database, "testbed").sync("oar", [hold("oar:6", 1, 3, "n1", "n2")])
    assert (report.clashing, report.added) == (["oar:6"], [])
    assert ExternalHolds(calendar.database, "testbed").holds("oar") == []


def test_an_oar_reservation_clashing_on_one_node_holds_its_other_nodes(
    site: Site,  # noqa: F811
    oar_client: OarClient,  # noqa: F811
    oar_jobs: OarJobs,  # noqa: F811
) -> None:
    site.allocate(["node7"], site.start)  # allocated only: nothing in OAR yet
    bob = oar_jobs.submit(user="bob", nodes=["node7", "node8"], start=site.start, walltime_s=3599, name="bobs-pair")
    report = site.backend.refresh_external()
    assert report.clashing == [f"oar:{bob}"]
    with pytest.raises(GeniError) as refused:
        site.allocate(["node8"], site.start)
    assert refused.value.reason == Reason.BOOKING_CONFLICT
    assert f"reserved outside sfa-omf (OAR job {bob} of bob)" in refused.value.message
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"], "node7's booking stands"
