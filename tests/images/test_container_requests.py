"""Requests for containers checked at Allocate, before anything is written (no LXC needed: nothing starts): an
unknown image names the repository's labels, counts out of bounds and unknown sliver types are refused, an aggregate
without containers says so; in every case nothing is booked and no container is recorded. The inst:count encoding
is valid GENI v3 (it passes the plain GENI schema) and is read back by the request writer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from rspec.document import load
from rspec.model import Request
from rspec.namespaces import OL
from rspec.parse_request import parse_request
from rspec.problems import RSpecError
from rspec.schemas import Schema, schema_problems
from rspec.write_request import Dialect, write_request
from sfa_omf.calendar.models import LeaseInstance
from sfa_omf.errors import GeniCode
from sfa_omf.images import instances as instances_module
from sfa_omf.images.lxc import InstanceRecord, InstanceSpec, LxcHost
from sfa_omf.times import format_time, utcnow
from tests.conftest import DemoPki
from tests.images.container_site import TWO, Site, cred, make_site, ok, request
from tests.tls_harness import Listener


@pytest.fixture
def site(listener: Listener, pki: DemoPki, tmp_path: Path) -> Site:
    return make_site(listener, pki, tmp_path, "sfaomf-unused", "10.217.250.0/24")  # no container is started here


@pytest.mark.parametrize(
    ("sliver_type", "code", "words"),
    [
        ('<sliver_type name="lxc"><disk_image name="nope"/></sliver_type>', GeniCode.BADARGS,
         ["containers start from repository images, and 'nope' is not one", "repository images: tools"]),
        ('<sliver_type name="lxc" inst:count="17"/>', GeniCode.BADARGS, ["asks for 17 containers; at most 16"]),
        ('<sliver_type name="lxc" inst:count="0"/>', GeniCode.BADARGS, ["inst:count='0'", "from 1 to 1000"]),
        ('<sliver_type name="lxc" inst:count="two"/>', GeniCode.BADARGS, ["inst:count='two'"]),
        ('<sliver_type name="raw-pc" inst:count="2"/>', GeniCode.BADARGS, ['applies to <sliver_type name="lxc">']),
        ('<sliver_type name="xen-vm"/>', GeniCode.BADARGS, ["sliver type 'xen-vm' is not offered here", "raw-pc, lxc"]),
    ],
)  # fmt: skip
def test_a_bad_container_request_is_refused_and_nothing_is_written(
    site: Site, pki: DemoPki, sliver_type: str, code: int, words: list[str]
) -> None:
    answer = site.alice(pki).Allocate(pki.slice_urn, [cred(pki.users["alice"].slice_cred)], request(sliver_type), {})
    assert answer["code"]["geni_code"] == code, answer
    for word in words:
        assert word in answer["output"], answer["output"]
    assert site.aggregate.bookings.leases(active_only=False) == []
    assert site.instances.listing(live_only=False) == []


def test_an_aggregate_without_containers_refuses_them(site: Site, pki: DemoPki) -> None:
    site.aggregate.instances = None  # no [sfa_omf] instance_bridge
    answer = site.alice(pki).Allocate(pki.slice_urn, [cred(pki.users["alice"].slice_cred)], request(), {})
    assert answer["code"]["geni_code"] == GeniCode.UNSUPPORTED, answer
    assert "runs none (no [sfa_omf] instance_bridge)" in answer["output"]
    assert site.aggregate.bookings.leases(active_only=False) == []


def test_allocate_records_the_containers_planned_and_delete_forgets_them(site: Site, pki: DemoPki) -> None:
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    allocated = ok(client.Allocate(pki.slice_urn, slice_cred, request(), {}))
    planned = site.instances.listing()
    assert [(i.position, i.image, i.state, i.address) for i in planned] == [
        (0, "tools", "planned", ""),
        (1, "tools", "planned", ""),
    ]
    urns = {s["geni_sliver_urn"]: s["geni_operational_status"] for s in allocated["geni_slivers"]}
    assert {urns[i.urn] for i in planned} == {"geni_notready"}  # allocated, not provisioned: nothing runs
    assert 'name="lxc"' in allocated["geni_rspec"] and "n1-c1" in allocated["geni_rspec"]
    # The image is in use while the lease is: its removal is refused naming the lease.
    (lease,) = site.aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert [use.lease_id for use in site.store.uses("tools", site.clock())] == [lease.id]
    ok(client.Delete([pki.slice_urn], slice_cred, {}))
    assert {i.state for i in site.instances.listing(live_only=False)} == {"destroyed"}
    assert site.store.uses("tools", site.clock()) == []


def test_containers_on_a_node_a_kept_lease_holds_are_refused(site: Site, pki: DemoPki) -> None:
    """The manifest sent back naming its lease by id, its node now asking for containers: they are planned when a
    node is booked, and this one is not booked again, so the request is refused (1) and nothing is planned."""
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    ok(client.Allocate(pki.slice_urn, slice_cred, request('<sliver_type name="raw-pc"/>'), {}))
    (lease,) = site.aggregate.bookings.leases(slice_urn=pki.slice_urn)
    again = (
        f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL}" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<ol:lease id="{lease.id}" valid_from="{format_time(lease.start)}" valid_until="{format_time(lease.end)}"/>'
        f'<node client_id="n1" component_id="{lease.nodes[0]}" exclusive="true">{TWO}'
        f'<ol:lease_ref id_ref="{lease.id}"/></node></rspec>'
    )

    answer = client.Allocate(pki.slice_urn, slice_cred, again, {})

    assert answer["code"]["geni_code"] == GeniCode.BADARGS, answer
    assert f"asks for containers in lease {lease.id}" in answer["output"]
    assert site.instances.listing() == [] and site.aggregate.bookings.leases(slice_urn=pki.slice_urn) == [lease]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_the_count_encoding_is_plain_geni_v3_and_round_trips_in_every_dialect(dialect: Dialect) -> None:
    now = utcnow()
    start = format_time(now.replace(minute=0, second=0, microsecond=0) + timedelta(days=2))
    document = (
        request(TWO)
        .replace("<node ", f'<ol:lease xmlns:ol="{OL}" client_id="l1" valid_from="{start}" duration="3600"/><node ')
        .replace('exclusive="true">', 'exclusive="true"><ol:lease_ref xmlns:ol="' + OL + '" id_ref="l1"/>')
    )
    assert schema_problems(load(document), Schema.REQUEST, 10) == []
    parsed: Request = parse_request(document, now=now)
    (node,) = parsed.nodes
    assert (node.sliver_type, node.disk_image, node.instance_count) == ("lxc", "tools", 2)
    written, options = write_request(parsed, dialect)
    assert schema_problems(load(written), Schema.REQUEST, 10) == []
    if dialect is not Dialect.SFA:  # SFA's own <lease> is no GENI v3 element; inst:count is no reason
        assert schema_problems(load(written), Schema.GENI_V3_REQUEST, 10) == []
    assert parse_request(written, now=now, allocate_options=options).nodes == parsed.nodes


def test_a_count_without_lxc_is_a_request_problem() -> None:
    with pytest.raises(RSpecError) as refused:
        parse_request(request('<sliver_type name="raw-pc" inst:count="3"/>'), now=utcnow())
    assert 'inst:count applies to <sliver_type name="lxc"> only' in str(refused.value)


def test_acting_on_containers_outside_their_slot_is_refused_and_changes_nothing(site: Site, pki: DemoPki) -> None:
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    start = site.clock().replace(minute=0, second=0) + timedelta(days=1)
    later = request().replace("<node ", f'<ol:lease xmlns:ol="{OL}" client_id="l" valid_from="{format_time(start)}" '
                              'duration="3600"/><node ').replace(
        'exclusive="true">', f'exclusive="true"><ol:lease_ref xmlns:ol="{OL}" id_ref="l"/>'
    )  # fmt: skip
    ok(client.Allocate(pki.slice_urn, slice_cred, later, {}))
    ok(client.Provision([pki.slice_urn], slice_cred, {"geni_rspec_version": {"type": "GENI", "version": "3"}}))
    before = site.instances.listing()
    for action in ("geni_start", "geni_stop", "geni_restart"):
        refused = client.PerformOperationalAction([pki.slice_urn], slice_cred, action, {})
        assert refused["code"]["geni_code"] == GeniCode.BADARGS, refused
        assert "act during the slot" in refused["output"] and "nothing was changed" in refused["output"]
    assert site.instances.listing() == before and {i.state for i in before} == {"planned"}
    assert site.aggregate.run_instances() == ([], [])  # before the slot nothing starts


class SlowLaunchStandIn(LxcHost):
    """A stand-in LXC host whose launch takes as long as the test says (a long start of many containers): only that
    is faked; nothing is made."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__("sfaomf-unused", lxc_path="/nonexistent/lxc")
        self.release = release

    def state(self, name: str) -> str:
        return ""

    def launch(self, spec: InstanceSpec, ssh_timeout_s: float = 30.0, image: str = "") -> InstanceRecord:
        assert self.release.wait(30), "the test never let the launch end"
        return InstanceRecord(spec.name, "RUNNING", spec.address, "")


def test_a_long_start_renews_its_claim_so_no_round_takes_it_for_a_dead_one(
    site: Site, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instances_module, "CLAIM_RENEWAL_S", 0.05)
    ok(site.alice(pki).Allocate(pki.slice_urn, [cred(pki.users["alice"].slice_cred)], request(), {}))
    planned = site.instances.listing()
    lease_id = planned[0].lease_id
    release = threading.Event()
    site.instances.host = SlowLaunchStandIn(release)
    claimed_at = utcnow().replace(microsecond=0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(site.instances.start_lease, lease_id, [], claimed_at)
        try:
            # The claim is renewed in the frame of the start's clock (a second after it began, at the earliest); a
            # generous bound against a hang only: the start runs in a thread of a loaded machine.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with site.database.read() as session:
                    claims = session.execute(
                        select(LeaseInstance.state, LeaseInstance.updated_s).where(LeaseInstance.lease_id == lease_id)
                    ).all()
                if all(state == "starting" and renewed > int(claimed_at.timestamp()) for state, renewed in claims):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the start never renewed its claim")
        finally:
            release.set()
        started = starting.result(timeout=30)
    assert {row.state for row in started} == {"running"}
