"""The OAR backend against a real OAR 2.5.9 (scripts/oar.sh): bookings become OAR advance reservations with the right
nodes, start, walltime and owner; Delete removes them; a reservation a local user made directly in OAR refuses ours
with OAR's "could run at" and is mirrored into the calendar; OAR stopped -> UNAVAILABLE, then recovery; the
reconciler's cases (orphan, missing, interrupted provision before and after OAR's answer)."""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import OarJob as OarJobRow
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.registry.accounts import Accounts, derived_login
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient, OarJob, OarTimeout
from sfa_omf.testbed.oar.jobs import DELETED, FAILED, SUBMITTED, SUBMITTING, job_name
from sfa_omf.testbed.unix_accounts import UnixAccounts
from sfa_omf.times import format_time
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.testbed.oar.conftest import OarJobs, oar_script, wait_for_job

HOUR = timedelta(hours=1)
NODES = [f"node{number}" for number in range(5, 11)]  # node1-4 are the client tests'


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+testbed+node+{name}"


@dataclass
class Site:
    aggregate: Aggregate
    backend: OarTestbed
    pki: DemoPki
    start: datetime

    def allocate(self, nodes: list[str], start: datetime, hours: int = 1, user: str = "alice") -> dict[str, Any]:
        person = self.pki.users[user]
        node_xml = "".join(f'<node client_id="{n}" component_id="{node_urn(n)}" exclusive="true"/>' for n in nodes)
        rspec = f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{node_xml}</rspec>'
        window = self.window(start, hours)
        return self.aggregate.allocate(person.chain, self.pki.slice_urn, [person.slice_cred], rspec, window)

    @staticmethod
    def window(start: datetime, hours: int = 1) -> dict[str, str]:
        return {"geni_start_time": format_time(start), "geni_end_time": format_time(start + hours * HOUR)}

    def provision(self, user: str = "alice") -> dict[str, Any]:
        person = self.pki.users[user]
        return self.aggregate.provision(person.chain, [self.pki.slice_urn], [person.slice_cred], {})

    def status(self) -> list[dict[str, Any]]:
        alice = self.pki.users["alice"]
        answer: dict[str, Any] = self.aggregate.status(alice.chain, [self.pki.slice_urn], [alice.slice_cred], {})
        return list(answer["geni_slivers"])

    def delete(self) -> None:
        alice = self.pki.users["alice"]
        self.aggregate.delete(alice.chain, [self.pki.slice_urn], [alice.slice_cred], {})

    def lease_ids(self) -> list[str]:
        return [lease.id for lease in self.aggregate.bookings.leases(slice_urn=self.pki.slice_urn)]


@pytest.fixture
def site(oar_url: str, oar_users: tuple[str, ...], pki: DemoPki, tmp_path: Path) -> Iterator[Site]:
    """An aggregate on the OAR backend; alice and bob of the demo authority are the Unix users alice and bob."""
    database = Database(sqlite_url(str(tmp_path / "oar-site.sqlite")))
    database.upgrade()
    made = oar_site(database, oar_url, oar_users, pki)
    yield made
    for lease in made.aggregate.bookings.leases():  # leave nothing in OAR
        with contextlib.suppress(GeniError):
            made.backend.release(lease)


def oar_site(database: Database, oar_url: str, oar_users: tuple[str, ...], pki: DemoPki) -> Site:
    """An aggregate on the OAR backend over ``database``, alice and bob mapped to their Unix users, the test nodes
    added, and a random grain-aligned slot 2 to 20 days ahead (within the demo slice credential's 30 days): reruns
    against the same OAR do not collide."""
    backend = OarTestbed(OarClient(oar_url, timeout_s=60), database, "testbed", cache_s=1, horizon=timedelta(days=30))
    accounts = Accounts(database)
    for user in oar_users:
        accounts.pin(pki.users[user].chain[0].urn or "", user)
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots),
        Policy(max_advance_s=40 * 86400, min_duration_s=60),
        backend=backend,
        accounts=accounts,
    )
    for name in NODES:
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name))
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return Site(aggregate, backend, pki, now + timedelta(days=2, hours=random.randrange(18 * 24)))


def job_of(site: Site, lease_id: str) -> int:
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.job_id is not None, row
    return row.job_id


def settle(site: Site, lease_id: str) -> None:
    """Date the lease's job row long ago: the call that wrote it is surely over, and OAR not still working on it."""
    with site.aggregate.database.write() as session:
        session.execute(update(OarJobRow).where(OarJobRow.lease_id == lease_id).values(updated_s=0))


def provision_timing_out(site: Site, oar_url: str) -> GeniError:
    """Provision through a client whose time-out is shorter than OAR's reservation call (about a second): the
    refusal it gets (TIMEDOUT), while OAR goes on and makes the job."""
    patient = site.backend.client
    site.backend.client = OarClient(oar_url, timeout_s=0.05)
    try:
        with pytest.raises(GeniError) as slow:
            site.provision()
    finally:
        site.backend.client = patient
    return slow.value


def test_provision_makes_the_oar_reservation_and_delete_removes_it(site: Site, oar_client: OarClient) -> None:
    site.allocate(["node5", "node6"], site.start)
    assert oar_client.reservations(site.start, site.start + HOUR) == [] or all(
        job.name != job_name(lease)
        for job in oar_client.reservations(site.start, site.start + HOUR)
        for lease in site.lease_ids()
    ), "nothing reaches OAR before Provision"
    provisioned = site.provision()
    assert [s["geni_allocation_status"] for s in provisioned["geni_slivers"]] == ["geni_provisioned"] * 2
    (lease_id,) = site.lease_ids()
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None
    assert (job.owner, job.nodes, job.start_time, job.walltime_s) == ("alice", ("node5", "node6"), site.start, 3599)
    assert (job.state, job.reservation, job.types, job.name) == ("Waiting", "Scheduled", ("noop",), job_name(lease_id))
    assert [s["geni_operational_status"] for s in site.status()] == ["geni_notready"] * 2, "before its start"
    assert site.provision()["geni_slivers"], "provisioning again changes nothing"
    assert job_of(site, lease_id) == job.id
    site.delete()
    gone = wait_for_job(oar_client, job.id, {"Error", "Terminated"})
    assert gone.state in ("Error", "Terminated")
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == DELETED


def test_back_to_back_leases_both_become_reservations(site: Site, oar_client: OarClient) -> None:
    site.allocate(["node7"], site.start)
    site.allocate(["node7"], site.start + HOUR)
    site.provision()
    jobs = [oar_client.job(job_of(site, lease)) for lease in site.lease_ids()]
    assert [(job.start_time, job.walltime_s) for job in jobs if job] == [(site.start, 3599), (site.start + HOUR, 3599)]


def test_a_local_oar_reservation_refuses_ours_with_oars_hint(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    local = oar_jobs.submit(user="bob", nodes=["node8"], start=site.start, walltime_s=3599, name="bobs-own")
    site.allocate(["node8"], site.start)  # the mirror has not run yet: the calendar does not know
    with pytest.raises(GeniError) as refused:
        site.provision()
    assert refused.value.code == 7
    assert "could run at" in refused.value.message and "reserved directly in OAR" in refused.value.message
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"], "the booking stays allocated"
    assert site.backend.jobs.get(site.lease_ids()[0]) is None, "nothing half-done"
    site.delete()
    # Mirrored, the local reservation blocks Allocate and is absent from the free windows, without asking OAR.
    report = site.backend.refresh_external()
    assert f"oar:{local}" in report.added
    with pytest.raises(GeniError) as conflict:
        site.allocate(["node8"], site.start)
    # OAR holds [start, start + 3599 s] closed: the node is free again at start + 1 h.
    assert conflict.value.code == 7 and f"free for the same duration from {format_time(site.start + HOUR)}" in (
        conflict.value.message
    )
    assert f"reserved outside sfa-omf (OAR job {local} of bob)" in conflict.value.message
    windows = site.aggregate.availability.free_windows(
        site.start - HOUR, site.start + 3 * HOUR, nodes=[node_urn("node8")]
    )
    spans = [(w.start, w.end) for w in windows[node_urn("node8")]]
    assert all(end <= site.start or start >= site.start + HOUR for start, end in spans)
    oar_client.delete_job(local, user="bob")
    wait_for_job(oar_client, local, {"Error", "Terminated"})
    assert f"oar:{local}" in site.backend.refresh_external().removed
    site.allocate(["node8"], site.start)  # free again


def test_oar_down_then_back(site: Site, oar_client: OarClient) -> None:
    site.allocate(["node9"], site.start)
    oar_script("stop-api")
    try:
        with pytest.raises(GeniError) as down:
            site.provision()
        assert down.value.code == GeniCode.UNAVAILABLE and "retry" in down.value.message
        assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"]
    finally:
        oar_script("start-api")
    site.provision()
    (lease_id,) = site.lease_ids()
    job = oar_client.job(job_of(site, lease_id))
    assert job is not None and job.state == "Waiting"


def test_reconciler(site: Site, oar_client: OarClient, oar_jobs: OarJobs) -> None:
    backend = site.backend
    # An orphan: the calendar cancelled a lease whose OAR job stayed (say, OAR was down at the time).
    site.allocate(["node10"], site.start + 5 * HOUR)
    site.provision()
    (orphaned,) = site.lease_ids()
    orphan = job_of(site, orphaned)
    site.aggregate.bookings.cancel(orphaned)
    # A job named like ours for a lease this calendar never had: another sfa-omf's; left alone.
    foreign = oar_jobs.submit(
        user="alice", nodes=["node10"], start=site.start + 6 * HOUR, walltime_s=3599, name=job_name(str(uuid.uuid4()))
    )
    # Missing: a provisioned lease whose OAR job was deleted behind our back.
    site.allocate(["node10"], site.start)
    site.provision()
    (missing_lease,) = site.lease_ids()
    lost = job_of(site, missing_lease)
    oar_client.delete_job(lost, user="alice")
    wait_for_job(oar_client, lost, {"Error", "Terminated"})
    # A crash after OAR accepted a provision but before the answer was recorded: the row says "submitting".
    site.allocate(["node10"], site.start + 2 * HOUR)
    interrupted = next(lease for lease in site.lease_ids() if lease != missing_lease)
    backend.jobs.set(interrupted, SUBMITTING, owner="alice")
    accepted = oar_jobs.submit(
        user="alice", nodes=["node10"], start=site.start + 2 * HOUR, walltime_s=3599, name=job_name(interrupted)
    )
    settle(site, interrupted)
    # A crash before OAR was asked: the row says "submitting" and OAR has nothing.
    site.allocate(["node9"], site.start + 3 * HOUR)
    never_sent = next(lease for lease in site.lease_ids() if lease not in (missing_lease, interrupted))
    backend.jobs.set(never_sent, SUBMITTING, owner="alice")
    settle(site, never_sent)

    report = backend.reconcile()
    assert report.orphans_deleted == [orphan]
    assert report.resubmitted == [missing_lease] and job_of(site, missing_lease) != lost
    resubmitted = oar_client.job(job_of(site, missing_lease), with_nodes=True)
    assert resubmitted is not None and resubmitted.start_time == site.start and resubmitted.nodes == ("node10",)
    assert report.adopted == [interrupted]
    row = backend.jobs.get(interrupted)
    assert row is not None and (row.state, row.job_id) == (SUBMITTED, accepted)
    states = {lease.id: lease.state for lease in site.aggregate.bookings.leases()}
    assert states[interrupted] == "provisioned", "the interrupted Provision is finished"
    never_sent_row = backend.jobs.get(never_sent)
    assert never_sent_row is not None and (never_sent_row.state, never_sent_row.owner) == (DELETED, "alice")
    assert states[never_sent] == "allocated"
    assert wait_for_job(oar_client, orphan, {"Error", "Terminated"})
    still = oar_client.job(foreign)
    assert still is not None and still.state == "Waiting"
    again = backend.reconcile()
    assert not again.changed, again
    site.provision()  # the booking that never reached OAR provisions normally afterwards
    assert backend.jobs.get(never_sent) is not None


def test_a_round_leaves_a_provision_on_its_way_to_its_call(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """A Provision on its way: its row was just written (submitting) and OAR made its job, but the call has not
    recorded the answer yet (and may still fail). A reconcile round then neither adopts the job nor provisions the
    lease (the call might answer an error with the lease provisioned); once the row is settled, a round does."""
    site.allocate(["node9"], site.start)
    (lease_id,) = site.lease_ids()
    site.backend.jobs.set(lease_id, SUBMITTING, owner="alice")
    made = oar_jobs.submit(user="alice", nodes=["node9"], start=site.start, walltime_s=3599, name=job_name(lease_id))
    report = site.backend.reconcile()
    assert report.adopted == [] and not report.changed, report
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"]
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (SUBMITTING, None)
    settle(site, lease_id)
    assert site.backend.reconcile().adopted == [lease_id]
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_provisioned"]
    assert job_of(site, lease_id) == made


def test_renew_moves_the_oar_reservation_or_refuses_with_oars_hint(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    alice = site.pki.users["alice"]
    site.allocate(["node6"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    site.aggregate.renew(alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(site.start + 2 * HOUR), {})
    second = job_of(site, lease_id)
    job = oar_client.job(second, with_nodes=True)
    assert second != first and job is not None
    assert (job.start_time, job.walltime_s, job.nodes, job.owner) == (site.start, 2 * 3600 - 1, ("node6",), "alice")
    old = oar_client.job(first)
    assert old is not None and old.state not in ("Waiting", "Running")
    # A local user holds the next hour in OAR: extending into it is refused and nothing changes.
    local = oar_jobs.submit(user="bob", nodes=["node6"], start=site.start + 2 * HOUR, walltime_s=3599, name="bobs")
    with pytest.raises(GeniError) as refused:
        site.aggregate.renew(
            alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(site.start + 3 * HOUR), {}
        )
    assert refused.value.code == 7 and "could run at" in refused.value.message
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert lease.end == site.start + 2 * HOUR, "the calendar is put back"
    restored = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert restored is not None and restored.state == "Waiting"
    assert (restored.start_time, restored.walltime_s, restored.nodes) == (site.start, 2 * 3600 - 1, ("node6",))
    local_job = oar_client.job(local)
    assert local_job is not None and local_job.state == "Waiting", "the local reservation is untouched"


def test_a_foreign_user_gets_a_created_account_that_owns_the_oar_job(
    oar_url: str, pki: DemoPki, vectors: Path, tmp_path: Path, oar_client: OarClient
) -> None:
    """alice of onelab.inria (SFA's own vectors) provisions: her mapped account is created with her key, and OAR
    runs the reservation as that account."""
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(vectors / "sfa" / "trusted_roots" / "onelab.gid", roots / "onelab.gid")
    database = Database(sqlite_url(str(tmp_path / "foreign.sqlite")))
    database.upgrade()
    backend = OarTestbed(OarClient(oar_url, timeout_s=60), database, "testbed")
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(load_trusted_roots(str(roots))),
        backend=backend,
        unix_accounts=UnixAccounts(),
    )
    aggregate.inventory.add_node(NodeSpec(node_urn("node9"), "node9"))
    sfa = vectors / "sfa"
    chain = load_gid_chain_file(str(sfa / "gids" / "onelab.inria.alice.gid"))
    slice_cred = (sfa / "creds" / "alice.myslice.slice.cred").read_text()
    myslice = "urn:publicid:IDN+onelab:inria+slice+myslice"
    alice_urn = "urn:publicid:IDN+onelab:inria+user+alice"
    login = derived_login(alice_urn)
    subprocess.run(["userdel", "-r", login], capture_output=True, check=False)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3, hours=random.randrange(24))
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="n" component_id="{node_urn("node9")}" exclusive="true"/></rspec>'
    )
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJw8ZC0c4fS3mYjyhQkKJgLw0X6o2xR2zJ1kq3Jc9u4v alice@onelab"
    options = {"geni_users": [{"urn": alice_urn, "keys": [key]}], **Site.window(start)}
    try:
        aggregate.allocate(chain, myslice, [slice_cred], rspec, options)
        aggregate.provision(chain, [myslice], [slice_cred], {})
        (lease,) = aggregate.bookings.leases(slice_urn=myslice)
        row = backend.jobs.get(lease.id)
        assert row is not None and row.job_id is not None
        job = oar_client.job(row.job_id)
        assert job is not None and job.owner == login and job.state == "Waiting"
        assert UnixAccounts().slice_keys(login, myslice) == [key]
        aggregate.delete(chain, [myslice], [slice_cred], {})
        assert UnixAccounts().slice_keys(login, myslice) == []
    finally:
        for lease in aggregate.bookings.leases():
            with contextlib.suppress(GeniError):
                backend.release(lease)
        subprocess.run(["userdel", "-r", login], capture_output=True, check=False)


def test_status_follows_the_oar_job(site: Site, oar_client: OarClient) -> None:
    """A reservation starting in about a minute goes Running (geni_ready); a job OAR lost to an error reads
    geni_failed with OAR's own words, until the reconciler submits it again."""
    # A node booked by the minute, whose OAR address is node5.
    site.aggregate.inventory.add_node(
        NodeSpec(node_urn("minute"), "minute", grain_s=60, properties={"network_address": "node5"})
    )
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=2 if now.second > 30 else 1)
    person = site.pki.users["alice"]
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="n" component_id="{node_urn("minute")}" exclusive="true"/></rspec>'
    )
    window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(minutes=5))}
    site.aggregate.allocate(person.chain, site.pki.slice_urn, [person.slice_cred], rspec, window)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    # The scheduler runs at least every 60 s: the job may start up to a minute late.
    wait_for_job(oar_client, job_id, {"Running"}, within_s=200)
    site.backend.cache_s = 0  # read OAR now, not the cached answer
    assert [s["geni_operational_status"] for s in site.status()] == ["geni_ready"]
    oar_client.delete_job(job_id, user="alice")  # behind sfa-omf's back
    ended = wait_for_job(oar_client, job_id, {"Error", "Terminated"})
    (sliver,) = site.status()
    if ended.state == "Error":
        assert sliver["geni_operational_status"] == "geni_failed"
        assert sliver["geni_error"].startswith(f"OAR job {job_id}: ") and len(sliver["geni_error"]) > 15
    else:  # a running noop job killed ends as Terminated: the slot reads as over
        assert sliver["geni_operational_status"] == "geni_notready"
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id]
    assert job_of(site, lease_id) != job_id


def test_a_provision_whose_answer_was_lost_is_adopted_not_refused(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """OAR made the reservation but sfa-omf never recorded it (crash, time-out): Provision again finds our own job
    holding the slot and adopts it instead of answering "reserved directly in OAR"."""
    site.allocate(["node9"], site.start)
    (lease_id,) = site.lease_ids()
    made = oar_jobs.submit(user="alice", nodes=["node9"], start=site.start, walltime_s=3599, name=job_name(lease_id))
    site.provision()
    assert job_of(site, lease_id) == made
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_provisioned"]


def test_oar_too_slow_then_the_retry_adopts_what_oar_made(site: Site, oar_url: str, oar_client: OarClient) -> None:
    """OAR slower than the configured time-out: TIMEDOUT, the booking stays allocated; OAR went on and made the
    reservation anyway, and Provision again adopts it (one job, not two)."""
    site.allocate(["node10"], site.start)
    (lease_id,) = site.lease_ids()
    slow = provision_timing_out(site, oar_url)
    assert slow.code == GeniCode.TIMEDOUT and "Provision again" in slow.message
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"]
    site.provision()
    ours = [job for job in oar_client.reservations(site.start, site.start + HOUR) if job.name == job_name(lease_id)]
    assert [job.id for job in ours] == [job_of(site, lease_id)]


def test_deploy_jobs_install_the_lease_image_only_where_needed(
    site: Site, oar_client: OarClient, oar_users: tuple[str, ...]
) -> None:
    """Image-per-slot provisioning: a deploy reservation runs the site's deploy command for the nodes whose previous
    lease ran another image; a node that already runs the image is not reprovisioned."""
    site.backend.job_type = "deploy"
    site.backend.deploy_command = "/usr/local/sbin/sfa-omf-deploy"
    images = ({"name": "debian12"}, {"name": "ubuntu2404"})  # what the nodes can run (advertised, checked)
    for name in ("dnode1", "dnode2"):  # scripts/oar.sh's deploy=YES nodes
        site.aggregate.inventory.add_node(NodeSpec(node_urn(name), name, disk_images=images))

    def book(nodes: list[str], start: datetime, *images: str) -> None:
        person = site.pki.users["alice"]
        body = "".join(
            f'<node client_id="{n}" component_id="{node_urn(n)}" exclusive="true">'
            f'<sliver_type name="raw-pc"><disk_image name="{image}"/></sliver_type></node>'
            for n, image in zip(nodes, images * len(nodes), strict=False)
        )
        rspec = f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{body}</rspec>'
        site.aggregate.allocate(person.chain, site.pki.slice_urn, [person.slice_cred], rspec, Site.window(start))

    book(["dnode1", "dnode2"], site.start, "debian12")
    book(["dnode1"], site.start + HOUR, "debian12")
    book(["dnode2"], site.start + 2 * HOUR, "ubuntu2404")
    site.provision()
    jobs = [oar_client.job(job_of(site, lease)) for lease in site.lease_ids()]
    assert all(job is not None and job.types == ("deploy",) for job in jobs)
    assert [job.command for job in jobs if job] == [
        "/usr/local/sbin/sfa-omf-deploy debian12 dnode1,dnode2",
        "",  # dnode1 runs debian12 from the previous slot on: not reprovisioned
        "/usr/local/sbin/sfa-omf-deploy ubuntu2404 dnode2",
    ]
    site.delete()
    book(["dnode1", "dnode2"], site.start, "debian12", "ubuntu2404")  # one lease, two images
    with pytest.raises(GeniError) as mixed:
        site.provision()
    assert mixed.value.code == 1 and "one disk image per lease" in mixed.value.message


def _provisioned_with_its_job_lost(site: Site, oar_client: OarClient, node: str) -> str:
    """A lease of ``node`` at the site's start, provisioned, whose OAR job was then deleted behind our back (ended in
    OAR): its id."""
    site.allocate([node], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    lost = job_of(site, lease_id)
    oar_client.delete_job(lost, user="alice")
    wait_for_job(oar_client, lost, {"Error", "Terminated"})
    return lease_id


def test_a_job_that_cannot_be_resubmitted_reads_failed_with_oars_words(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The job vanished and a local user took the slot in OAR meanwhile: the reconciler cannot resubmit, and Status
    says so (geni_failed, OAR's refusal in geni_error)."""
    lease_id = _provisioned_with_its_job_lost(site, oar_client, "node8")
    oar_jobs.submit(user="bob", nodes=["node8"], start=site.start, walltime_s=3599, name="bob-took-it")
    report = site.backend.reconcile()
    assert lease_id in report.failed and "could run at" in report.failed[lease_id]
    assert not report.changed, "a refusal is no repair: no operators' alert every round"
    (sliver,) = site.status()
    assert sliver["geni_operational_status"] == "geni_failed"
    assert sliver["geni_error"].startswith("OAR refused to reserve it again") and "could run at" in sliver["geni_error"]


class _StateOnlyClient:
    """Stands in for OAR only to walk every job state: the short-lived ones (toLaunch, Launching, toAckReservation,
    Finishing...) cannot be caught reliably on a real OAR. Everything else in this file runs against the real one."""

    timeout_s = 1.0
    admin_user = "oar"

    def __init__(self) -> None:
        self.state = "Waiting"

    def job(self, job_id: int, *, with_nodes: bool = False) -> OarJob:
        return OarJob(job_id, self.state, "Scheduled", "alice", "x", None, 3599, ("noop",), "OAR's words")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("Waiting", "geni_notready"),
        ("Hold", "geni_notready"),
        ("toAckReservation", "geni_configuring"),
        ("toLaunch", "geni_configuring"),
        ("Launching", "geni_configuring"),
        ("Running", "geni_ready"),
        ("Suspended", "geni_notready"),
        ("Resuming", "geni_configuring"),
        ("Finishing", "geni_notready"),
        ("Terminated", "geni_notready"),
        ("Error", "geni_failed"),
    ],
)
def test_every_oar_state_maps_to_a_geni_state(tmp_path: Path, state: str, expected: str) -> None:
    database = Database(sqlite_url(str(tmp_path / "states.sqlite")))
    database.upgrade()
    client = _StateOnlyClient()
    client.state = state
    backend = OarTestbed(client, database, "testbed", cache_s=0)  # type: ignore[arg-type]
    Inventory(database).add_node(NodeSpec(node_urn("node5"), "node5"))
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + 2 * HOUR
    (booked,) = (
        Bookings(database)
        .book(
            "urn:publicid:IDN+testbed+slice+s",
            start + 10 * HOUR,
            [BookingRequest(node_urn("node5"), start, start + HOUR)],
        )
        .leases
    )
    lease = Bookings(database).mark_provisioned(booked.id)
    backend.jobs.set(lease.id, SUBMITTED, owner="alice", job_id=7)
    health = backend.health(lease.slivers[0], lease, datetime.now(UTC))
    assert health.operational_state == expected
    assert (health.error == "OAR job 7: OAR's words") == (expected == "geni_failed")


def test_a_job_oar_lost_is_told_to_the_slice_users_once(site: Site, oar_client: OarClient) -> None:
    """The lease's OAR job is deleted from OAR's side (oardel as its owner): the reconciler reserves the slot again
    and records, with that change, one "failed" event carrying OAR's words, which a real SMTP server receives once."""
    from sfa_omf.calendar.outbox import NotifyEvents, Outbox
    from sfa_omf.notify.channels import SmtpSettings
    from sfa_omf.notify.notifier import Notifier, NotifySettings
    from tests.notify.conftest import SmtpServer
    from tests.ports import free_port

    site.allocate(["node7"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    lost = job_of(site, lease_id)
    oar_client.delete_job(lost, user="alice")
    ended = wait_for_job(oar_client, lost, {"Error", "Terminated"})
    assert site.backend.reconcile().resubmitted == [lease_id]
    assert site.backend.reconcile().resubmitted == [], "the new job holds the slot"
    database = site.aggregate.database
    (news,) = [e for e in NotifyEvents(database).since(datetime.now(UTC) - HOUR) if e.event == "failed"]
    assert news.key == f"{lease_id}:failed:oar:{lost}" and news.slice_urn == site.pki.slice_urn
    assert news.payload["reason"].startswith(f"OAR job {lost} ended in state {ended.state} before the lease's end")
    assert news.payload["reason"].endswith(f"its slot is reserved again as OAR job {job_of(site, lease_id)}")
    alice = site.pki.users["alice"].chain[0].urn or ""
    assert news.payload["owner"] == alice
    Outbox(database).subscribe(alice, "email", "alice@example.org")
    smtp = SmtpServer(free_port()).start()
    try:
        note = Notifier(database, NotifySettings(smtp=SmtpSettings(port=smtp.port, timeout_s=5)))
        for _ in range(2):
            note.notice()
            note.deliver()
    finally:
        smtp.stop()
    failed = [m for m in smtp.mailbox.messages if "failed on the testbed" in str(m["Subject"])]
    assert len(failed) == 1 and f"OAR job {lost} ended in state" in failed[0].get_content()


def test_a_lost_job_that_cannot_be_reserved_again_is_told_with_oars_refusal(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    from sfa_omf.calendar.outbox import NotifyEvents

    lease_id = _provisioned_with_its_job_lost(site, oar_client, "node8")
    oar_jobs.submit(user="bob", nodes=["node8"], start=site.start, walltime_s=3599, name="bob-took-it-too")
    for _ in range(2):  # refused every round: told once
        assert lease_id in site.backend.reconcile().failed
    (news,) = NotifyEvents(site.aggregate.database).since(datetime.now(UTC) - HOUR)
    assert news.event == "failed" and "OAR refused to reserve it again" in news.payload["reason"]
    assert "could run at" in news.payload["reason"]


def test_an_oar_time_out_on_one_lease_does_not_end_the_reconcile_round_for_the_others(
    site: Site, oar_client: OarClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two leases whose jobs were deleted in OAR; reading the first one's job times out (OAR's CGI too slow for that
    one call: injected into the real client, a time-out cannot be had on demand from the real OAR). The other lease
    is still reserved again in that round; the first one in the next."""
    site.allocate(["node9"], site.start)
    site.allocate(["node10"], site.start + 2 * HOUR)
    site.provision()
    leases = site.lease_ids()
    for lease_id in leases:
        oar_client.delete_job(job_of(site, lease_id), user="alice")
    for lease_id in leases:
        wait_for_job(oar_client, job_of(site, lease_id), {"Error", "Terminated"})
    real_job = site.backend.client.job
    slow: list[int] = []

    def first_read_times_out(job_id: int, *, with_nodes: bool = False) -> OarJob | None:
        if not slow:
            slow.append(job_id)
            raise OarTimeout(f"no answer within 1 s for job {job_id}")
        return real_job(job_id, with_nodes=with_nodes)

    monkeypatch.setattr(site.backend.client, "job", first_read_times_out)
    report = site.backend.reconcile()
    (skipped,) = [lease_id for lease_id in leases if job_of(site, lease_id) == slow[0]]
    assert report.resubmitted == [lease_id for lease_id in leases if lease_id != skipped]
    assert report.failed == {}
    monkeypatch.setattr(site.backend.client, "job", real_job)
    assert site.backend.reconcile().resubmitted == [skipped]


def test_oar_unreachable_when_a_lost_job_is_reserved_again_marks_nothing_failed_and_tells_no_one(
    site: Site, oar_client: OarClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease whose job was deleted in OAR, reserved again by the reconciler just as OAR stops answering (or its
    breaker rests: not even asked): the lease was marked failed and its users told "OAR refused to reserve it again",
    though nothing was refused. Now the round leaves it for the next one, which reserves it again. (The submit's
    failure is injected into the real client: OAR answering the round's listing, then not the submit moments later,
    cannot be had on demand.)"""
    from sfa_omf.calendar.outbox import NotifyEvents
    from sfa_omf.testbed.oar.client import OarCircuitOpen

    lease_id = _provisioned_with_its_job_lost(site, oar_client, "node6")
    real_submit = site.backend.client.submit_reservation

    def resting(*arguments: object, **keywords: object) -> int:
        raise OarCircuitOpen(
            "OAR at the test's API failed at 12:00:00 (no answer within 30 s); not asked until 12:00:15"
        )

    monkeypatch.setattr(site.backend.client, "submit_reservation", resting)
    report = site.backend.reconcile()
    assert lease_id in report.failed and "not asked until" in report.failed[lease_id]
    assert NotifyEvents(site.aggregate.database).since(datetime.now(UTC) - HOUR) == []  # no one told of a refusal
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state != FAILED, row  # not marked failed
    monkeypatch.setattr(site.backend.client, "submit_reservation", real_submit)
    assert site.backend.reconcile().resubmitted == [lease_id]  # the next round reserves it again


class _JobInStateClient(_StateOnlyClient):
    """Stands in for OAR to show the reconciler a job of ours in any state while its listing of reservations misses
    it (a job OAR still holds but does not list cannot be made on demand on a real OAR). None: OAR knows it not."""

    def __init__(self, state: str | None) -> None:
        super().__init__()
        self.known = state

    def job(self, job_id: int, *, with_nodes: bool = False) -> OarJob | None:  # type: ignore[override]
        if self.known is None:
            return None
        self.state = self.known
        return super().job(job_id, with_nodes=with_nodes)

    def reservations(self, start: datetime, end: datetime, *, unplaced: bool = False) -> list[OarJob]:
        return []

    def submit_reservation(self, **_arguments: Any) -> int:
        return 8


@pytest.mark.parametrize(
    ("state", "told"),
    [("Waiting", False), ("Running", False), ("Finishing", False), ("Error", True), ("Terminated", True), (None, True)],
)
def test_only_a_job_gone_or_ended_is_told_to_users_as_failed(tmp_path: Path, state: str | None, told: bool) -> None:
    from sfa_omf.calendar.outbox import NotifyEvents

    database = Database(sqlite_url(str(tmp_path / "lost.sqlite")))
    database.upgrade()
    backend = OarTestbed(_JobInStateClient(state), database, "testbed", cache_s=0)  # type: ignore[arg-type]
    Inventory(database).add_node(NodeSpec(node_urn("node5"), "node5"))
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + 2 * HOUR
    (booked,) = (
        Bookings(database)
        .book(
            "urn:publicid:IDN+testbed+slice+s",
            start + 10 * HOUR,
            [BookingRequest(node_urn("node5"), start, start + HOUR)],
        )
        .leases
    )
    lease = Bookings(database).mark_provisioned(booked.id)
    backend.jobs.set(lease.id, SUBMITTED, owner="alice", job_id=7)
    report = backend.reconcile()
    if told:
        assert report.resubmitted == [lease.id]
    else:  # a job of ours still alive: nothing is submitted beside it (OAR would refuse it), the round says why
        assert report.resubmitted == [] and "is alive" in report.failed[lease.id]
    failed = [event for event in NotifyEvents(database).since(start - 4 * HOUR) if event.event == "failed"]
    assert bool(failed) == told, failed
    if told:
        assert failed[0].payload["reason"].endswith("its slot is reserved again as OAR job 8")
