"""ondemand provisioning after a lease was deleted: a provisioned lease cancelled (a Delete, possibly during its slot)
may have installed its image and its user may have used the node; the calendar does not record when it was
cancelled, so the next lease of the node reinstalls its image (the node runs an unknown image). A lease deleted before
it was provisioned installed nothing. Planned from the calendar by the embedded backend and by the OAR backend (its
client points nowhere), then end to end through the aggregate against the real OAR (scripts/oar.sh's deploy node)."""

from __future__ import annotations

import contextlib

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec, SliverRecord
from sfa_omf.errors import GeniError
from sfa_omf.images.provisioning import ONDEMAND, image_left_by_previous_lease
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import DELETED, SUBMITTED
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn
from tests.conftest import DemoPki
from tests.testbed.oar.conftest import oar_client, oar_url, oar_users  # noqa: F401 (the real OAR's fixtures)
from tests.testbed.oar.test_backend import HOUR, job_of, oar_site

N1 = node_urn("n1")
DEPLOY = "/sbin/deploy"


def book(calendar: Calendar, image: str, start: float, end: float) -> LeaseRecord:
    return calendar.bookings.book(
        SLICE, SLICE_EXPIRES, [BookingRequest(N1, at(start), at(end), disk_image=image)]
    ).leases[0]


def provisioned(calendar: Calendar, image: str, start: float, end: float) -> LeaseRecord:
    return calendar.bookings.mark_provisioned(book(calendar, image, start, end).id)


def oar_nowhere(database: Database) -> OarTestbed:
    """The OAR backend with deploy jobs; planning reads the calendar (and the job rows) only: OAR is never asked."""
    return OarTestbed(
        OarClient("http://127.0.0.1:9/oarapi"),
        database,
        "testbed",
        job_type="deploy",
        deploy_command=DEPLOY,
        provisioning_mode=ONDEMAND,
    )


def embedded_running(database: Database, lease: LeaseRecord) -> tuple[str, bool]:
    """What the embedded backend's plan says n1 runs at the lease's start, and whether it installs the image."""
    backend = EmbeddedTestbed(database, ONDEMAND)
    backend.provision(lease, "carol", [])
    (step,) = backend.deployments[lease.id]
    return step.running, step.reprovision


def test_a_lease_deleted_during_its_slot_makes_the_next_one_reinstall(calendar: Calendar, database: Database) -> None:
    """A ran deb; B installed evil and its user used the node; B is deleted during its slot. C asks deb: the node
    does not run deb (it runs evil, with B's user's data), so C reinstalls it, on both backends."""
    provisioned(calendar, "deb", 0, 1)
    b = provisioned(calendar, "evil", 1, 3)
    calendar.now = at(2)  # during B's slot
    assert calendar.bookings.cancel(b.id).state == "cancelled"
    c = provisioned(calendar, "deb", 3, 4)
    assert embedded_running(database, c) == ("", True)
    assert oar_nowhere(database)._deploy_command(c) == f"{DEPLOY} deb n1"


def test_a_lease_booked_into_the_time_a_deleted_one_freed_reinstalls(calendar: Calendar, database: Database) -> None:
    """C is booked into the rest of B's slot, which B's Delete freed: it starts on the node B's user left."""
    provisioned(calendar, "deb", 0, 1)
    b = provisioned(calendar, "evil", 1, 4)
    calendar.now = at(2)
    calendar.bookings.cancel(b.id)
    c = provisioned(calendar, "deb", 2, 4)
    assert embedded_running(database, c) == ("", True)
    assert oar_nowhere(database)._deploy_command(c) == f"{DEPLOY} deb n1"


def test_a_provisioned_lease_deleted_before_its_slot_is_still_unknown(calendar: Calendar, database: Database) -> None:
    """The calendar does not record when a lease was cancelled: a provisioned lease deleted, here before its slot,
    counts as an unknown image all the same (the safe side: C reinstalls the deb A left)."""
    provisioned(calendar, "other", 0, 1)
    b = provisioned(calendar, "deb", 2, 3)
    calendar.now = at(1)
    calendar.bookings.cancel(b.id)
    c = provisioned(calendar, "deb", 3, 4)
    assert embedded_running(database, c) == ("", True)
    assert oar_nowhere(database)._deploy_command(c) == f"{DEPLOY} deb n1"


def test_a_lease_deleted_before_it_was_provisioned_installed_nothing(calendar: Calendar, database: Database) -> None:
    """An allocation deleted (never provisioned) installed nothing: the node still runs what A left, and C, which asks
    the same image, is not reinstalled."""
    provisioned(calendar, "deb", 0, 1)
    b = book(calendar, "evil", 1, 3)
    calendar.now = at(2)
    calendar.bookings.cancel(b.id)
    c = provisioned(calendar, "deb", 3, 4)
    assert embedded_running(database, c) == ("deb", False)
    assert oar_nowhere(database)._deploy_command(c) == ""


def test_a_reservation_made_outside_sfa_omf_leaves_an_unknown_image(calendar: Calendar, database: Database) -> None:
    """A local user's reservation mirrored from OAR (external) between A and C: whatever its user installed, C does
    not count on A's deb."""
    provisioned(calendar, "deb", 0, 1)
    mirror = ExternalHolds(database, "testbed", clock=lambda: calendar.now)
    assert mirror.sync("oar", [ExternalHold("oar:7", (N1,), at(1), at(2), "OAR job 7 of bob")]).added == ["oar:7"]
    c = provisioned(calendar, "deb", 3, 4)
    assert embedded_running(database, c) == ("", True)
    assert oar_nowhere(database)._deploy_command(c) == f"{DEPLOY} deb n1"


@pytest.mark.parametrize(("job_id", "command"), [(4242, f"{DEPLOY} deb n1"), (None, "")])
def test_an_oar_job_of_a_lease_cancelled_unprovisioned(
    calendar: Calendar, database: Database, job_id: int | None, command: str
) -> None:
    """OAR side: a lease cancelled before the calendar recorded its Provision, for which OAR had made a job (a
    Provision that failed after OAR answered), may have run its deploy command: unknown. Without a job, nothing."""
    provisioned(calendar, "deb", 0, 1)
    b = book(calendar, "evil", 1, 3)
    oar = oar_nowhere(database)
    oar.jobs.set(b.id, SUBMITTED, owner="alice", job_id=job_id)
    calendar.now = at(2)
    calendar.bookings.cancel(b.id)
    oar.jobs.set(b.id, DELETED)
    c = provisioned(calendar, "deb", 3, 4)
    assert oar._deploy_command(c) == command


def record(lease_id: str, state: str, image: str, hours: tuple[float, float] = (1, 2)) -> LeaseRecord:
    """A lease of n1 as the calendar reads it, provisioned at some time (its sliver's operational state says so)."""
    start, end = at(hours[0]), at(hours[1])
    sliver = SliverRecord(
        f"urn:sliver:{lease_id}", N1, lease_id, start, end, "geni_unallocated", "geni_ready", end, disk_image=image
    )
    return LeaseRecord(lease_id, SLICE, "", start, end, state, (sliver,))


@pytest.mark.parametrize("first", ["deleted", "ran"])
def test_leases_starting_together_that_left_different_images_leave_an_unknown_one(first: str) -> None:
    """Two leases of n1 starting at the same moment (one deleted after its Provision, another booked in its place):
    whichever the calendar lists first, the node runs an unknown image."""
    deleted, ran = record("b", "cancelled", "evil"), record("b2", "ended", "deb")
    later = record("c", "provisioned", "deb", (3, 4))
    listed = [deleted, ran] if first == "deleted" else [ran, deleted]
    assert image_left_by_previous_lease(lambda node: listed, N1, later) == ""


def test_on_the_real_oar_the_deploy_job_after_a_deleted_lease_reinstalls(
    database: Database,
    oar_url: str,  # noqa: F811 (the fixture imported above)
    oar_users: tuple[str, ...],  # noqa: F811 (the fixture imported above)
    oar_client: OarClient,  # noqa: F811 (the fixture imported above)
    pki: DemoPki,
) -> None:
    """End to end on the real OAR, through the aggregate: A installs debian12 on dnode1, B ubuntu2404 after it; B is
    deleted; C asks debian12 after them: its deploy job reinstalls dnode1 (its command is not empty). Every job made
    is deleted."""
    site = oar_site(database, oar_url, oar_users, pki)
    site.backend.job_type = "deploy"
    site.backend.deploy_command = "/usr/local/sbin/sfa-omf-deploy"
    images = ({"name": "debian12"}, {"name": "ubuntu2404"})
    site.aggregate.inventory.add_node(NodeSpec(node_urn("dnode1"), "dnode1", disk_images=images))
    alice = site.pki.users["alice"]

    def book_and_provision(start_hours: int, image: str) -> LeaseRecord:
        body = (
            f'<node client_id="dnode1" component_id="{node_urn("dnode1")}" exclusive="true">'
            f'<sliver_type name="raw-pc"><disk_image name="{image}"/></sliver_type></node>'
        )
        rspec = f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{body}</rspec>'
        start = site.start + start_hours * HOUR
        site.aggregate.allocate(alice.chain, site.pki.slice_urn, [alice.slice_cred], rspec, site.window(start))
        (lease,) = [
            lease for lease in site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn) if lease.start == start
        ]
        urns = [sliver.urn for sliver in lease.slivers]
        site.aggregate.provision(alice.chain, urns, [alice.slice_cred], {})
        return lease

    try:
        a = book_and_provision(0, "debian12")
        b = book_and_provision(1, "ubuntu2404")
        commands = [oar_client.job(job_of(site, lease.id)) for lease in (a, b)]
        assert [job.command if job else None for job in commands] == [
            "/usr/local/sbin/sfa-omf-deploy debian12 dnode1",
            "/usr/local/sbin/sfa-omf-deploy ubuntu2404 dnode1",
        ]
        site.aggregate.delete(alice.chain, [sliver.urn for sliver in b.slivers], [alice.slice_cred], {})
        deleted = site.backend.jobs.get(b.id)
        assert deleted is not None and deleted.state == DELETED
        states = site.aggregate.bookings.lease_states([a.id, b.id])
        assert states == {a.id: "provisioned", b.id: "cancelled"}
        c = book_and_provision(2, "debian12")
        job = oar_client.job(job_of(site, c.id))
        assert job is not None and job.types == ("deploy",)
        assert job.command == "/usr/local/sbin/sfa-omf-deploy debian12 dnode1"
    finally:
        for lease in site.aggregate.bookings.leases():  # leave nothing in OAR
            with contextlib.suppress(GeniError):
                site.backend.release(lease)
