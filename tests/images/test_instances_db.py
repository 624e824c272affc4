"""The containers' rows on SQLite and on a real PostgreSQL: addresses distinct while held and given back when a
lease's containers are destroyed, the slot's clock (nothing before the slot, nothing once the lease is over), and a
launch failing for every container recorded per container with LXC's words. LXC is real; the bridge named does not
exist, so every launch fails quickly at lxc-start and nothing is left."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError
from sfa_omf.images.instances import DESTROYED, FAILED, PLANNED, InstanceRequest, Instances
from sfa_omf.images.lxc import InstanceSpec, LxcHost
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import Calendar, at, node_urn
from tests.images.lxc_env import bridge, needs_lxc

pytestmark = needs_lxc
SLICE = "urn:publicid:IDN+testbed+slice+exp"


def provisioned_lease(calendar: Calendar, instances: Instances, node: str, count: int, start: datetime) -> str:
    (lease,) = calendar.bookings.book(
        SLICE, at(100), [BookingRequest(node_urn(node), start, start + (at(1) - at(0)))]
    ).leases
    calendar.bookings.mark_provisioned_all([lease.id], SLICE)
    instances.plan(lease.id, [InstanceRequest(lease.slivers[0].urn, node_urn(node), "", count)], calendar.now)
    return lease.id


def test_addresses_are_distinct_while_held_and_given_back(
    calendar: Calendar, database: Database, store: ImageStore, tmp_path: Path
) -> None:
    bridge()  # LXC must be there (the launch itself fails on the missing bridge below)
    host = LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc"))
    instances = Instances(database, host, "10.217.99.0/29", store, ssh_timeout_s=1)  # .2 to .6: five addresses
    first = provisioned_lease(calendar, instances, "n1", 2, at(1))
    second = provisioned_lease(calendar, instances, "n2", 2, at(1))
    assert instances.tick(at(0.5), lambda _slice: ["ssh-ed25519 AAAA k"]) == ([], [])  # before the slot: nothing
    assert {i.state for i in instances.listing()} == {PLANNED}

    started, destroyed = instances.tick(at(1.5), lambda _slice: ["ssh-ed25519 AAAA k"])
    assert (started, destroyed) == ([], [])  # every launch failed...
    rows = instances.listing()
    assert {i.state for i in rows} == {FAILED}  # ...each recorded with LXC's words, none left on the host
    assert all("could not start" in i.error and "sfaomf-nobridge" in i.error for i in rows)
    assert host.instances() == []
    held = sorted(i.address for i in rows)
    assert held == ["10.217.99.2/29", "10.217.99.3/29", "10.217.99.4/29", "10.217.99.5/29"]

    freed = {i.address for i in instances.of_lease(first)}
    kept = {i.address for i in instances.of_lease(second)}
    assert len(instances.destroy_lease(first, at(1.5))) == 2  # its addresses go back
    third = provisioned_lease(calendar, instances, "n1", 2, at(2))
    instances.start_lease(third, [], at(2.5))
    assert {i.address for i in instances.of_lease(third)} == freed  # the lowest free ones: the first lease's
    assert {i.address for i in instances.of_lease(second)} == kept

    # One address is left (.6): a lease of two more gets it for one container and a reason for the other.
    fourth = provisioned_lease(calendar, instances, "big1", 2, at(2))
    with pytest.raises(GeniError, match=r"no free address left in 10\.217\.99\.0/29"):
        instances.start_lease(fourth, [], at(2.5))
    assert {i.state for i in instances.of_lease(fourth)} == {PLANNED}  # refused whole: nothing half-addressed

    # Once the leases are over, the next round destroys every container and releases every address.
    calendar.now = at(5)
    calendar.bookings.retire_ended()
    _, destroyed = instances.tick(at(5), lambda _slice: [])
    assert len(destroyed) == 6
    assert {i.state for i in instances.listing(live_only=False)} == {DESTROYED}
    assert {i.address for i in instances.listing(live_only=False)} == {""}


def test_a_lease_whose_start_fails_does_not_stop_the_round(
    calendar: Calendar, database: Database, store: ImageStore, tmp_path: Path
) -> None:
    bridge()
    host = LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc"))
    instances = Instances(database, host, "10.217.99.0/29", store, ssh_timeout_s=1)  # five addresses
    too_big = provisioned_lease(calendar, instances, "big1", 6, at(1))  # more containers than addresses
    small = provisioned_lease(calendar, instances, "n1", 1, at(1))
    stray = host.name_for("00000000-0000-0000-0000-00000000dead", 0)  # no row names it: the round destroys it
    host.create(InstanceSpec(stray, "10.217.99.6/29", ()))

    started, destroyed = instances.tick(at(1.5), lambda _slice: [])
    assert (started, destroyed) == ([], [stray])  # the round went on past the lease that could not start
    big_rows = instances.of_lease(too_big)
    assert {i.state for i in big_rows} == {FAILED}
    assert all("no free address left in 10.217.99.0/29" in i.error for i in big_rows)
    (small_row,) = instances.of_lease(small)
    assert small_row.state == FAILED and "sfaomf-nobridge" in small_row.error  # it was tried: LXC's own words
    assert host.instances() == []
    assert instances.tick(at(1.6), lambda _slice: []) == ([], [])  # the failed lease is not retried every round
