"""Lease containers on the OAR backend, with the shared real OAR 2.5.9 and real LXC: the containers start once the
lease's OAR job runs, and killing the job (oardel behind sfa-omf's back) kills them — as the OAR Cloud project
checked by hand. This needs a job that runs now: the test books a short slot from now on a node nothing holds now
(chosen by asking OAR), and deletes its job at the end whatever happens."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniError
from sfa_omf.images.instances import Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.store import ImageStore
from sfa_omf.registry.accounts import Accounts
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.times import format_time
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.images.lxc_env import bridge, bridge_network, key_pair, needs_lxc, ssh
from tests.testbed.oar.conftest import wait_for_job

pytestmark = needs_lxc
NODE = "urn:publicid:IDN+testbed+node+lxchost"


def free_node_now(client: OarClient) -> str:
    """A fake node no job holds in the next ten minutes (node10 first: the other tests start from node1)."""
    now = datetime.now(UTC)
    busy = {node for job in client.reservations(now, now + timedelta(minutes=10)) for node in job.nodes}
    for number in range(10, 0, -1):
        if f"node{number}" not in busy:
            return f"node{number}"
    pytest.fail(f"every fake node of the shared OAR is held now: {sorted(busy)}")


@pytest.fixture
def aggregate(
    oar_url: str, oar_users: tuple[str, ...], pki: DemoPki, tmp_path: Path
) -> Iterator[tuple[Aggregate, OarTestbed, LxcHost]]:
    database = Database(sqlite_url(str(tmp_path / "oar-lxc.sqlite")))
    database.upgrade()
    client = OarClient(oar_url, timeout_s=60)
    backend = OarTestbed(client, database, "testbed", cache_s=0)  # read the job's state on every tick
    accounts = Accounts(database)
    accounts.pin(pki.users["alice"].chain[0].urn or "", "alice")
    host = LxcHost(bridge(), lxc_path=str(tmp_path / "lxc"))
    store = ImageStore(database, tmp_path / "images")
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots),
        Policy(min_duration_s=60),
        backend=backend,
        accounts=accounts,
        images=store,
        instances=Instances(database, host, str(bridge_network().network), store),
    )
    # A node booked by the minute whose OAR address is a fake node free now.
    made.inventory.add_node(
        NodeSpec(NODE, "lxchost", grain_s=60, properties={"network_address": free_node_now(client)})
    )
    yield made, backend, host
    for lease in made.bookings.leases(active_only=False):  # leave nothing in OAR, nor in LXC
        with contextlib.suppress(GeniError):
            backend.release(lease)
    for record in host.instances():
        host.destroy(record.name)


def test_killing_the_oar_job_kills_the_lease_containers(
    aggregate: tuple[Aggregate, OarTestbed, LxcHost], pki: DemoPki, tmp_path: Path
) -> None:
    am, backend, host = aggregate
    alice = pki.users["alice"]
    key, public = key_pair(tmp_path, "alice")
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true">'
        '<sliver_type name="lxc" inst:count="2"/></node></rspec>'
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=6)
    options = {
        "geni_end_time": format_time(end),  # from now: the slot has begun, so OAR launches the job at once
        "geni_users": [{"urn": alice.chain[0].urn, "keys": [public]}],
    }
    am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)
    row = backend.jobs.get(lease.id)
    assert row is not None and row.job_id is not None
    client = backend.client

    # OAR may launch the job before or during this first round (its scheduler runs when it likes): containers start
    # only once the job runs. A job's states only move forward, so a job not Running after the round was not
    # Running during it.
    early, _ = am.run_instances()
    assert early == [] or client.job(row.job_id).state == "Running", "containers started before the job ran"
    if not early:
        assert host.instances() == []
    wait_for_job(client, row.job_id, {"Running"}, within_s=200)  # OAR's scheduler may start it up to 60 s late
    started = early + am.run_instances()[0]
    assert len(started) == 2 and len(host.instances()) == 2
    assert am.instances is not None
    first = am.instances.listing()[0]
    assert ssh(key, first.host, "true").returncode == 0

    client.delete_job(row.job_id, user="alice")  # behind sfa-omf's back
    wait_for_job(client, row.job_id, {"Error", "Terminated"})
    deadline = time.monotonic() + 30
    destroyed: list[str] = []
    while len(destroyed) < 2 and time.monotonic() < deadline:  # the server's next round(s)
        destroyed += am.run_instances()[1]
    assert sorted(destroyed) == sorted(record.name for record in am.instances.listing(live_only=False))
    assert host.instances() == []
    assert ssh(key, first.host, "true").returncode != 0
