"""The sequences GENI's own clients send, replayed over real TLS (AM API v3 at /, v2 at /am2): a plain request
with no time (omni, jFed and GENI's acceptance tests), renewals of a few minutes inside the first slot, and a slice
renewed at its authority between calls. The aggregate's clock is the test's, so each sequence runs at any minute of
the hour, on a grain boundary or between two."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.intervals import align_up
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.pki import create_gid, new_private_key
from tests.am.test_api_v2_tls import serve_v2_and_v3
from tests.am.test_api_v3_tls import GENI_V3, cred, node_urn, ok, refused
from tests.conftest import DemoPki
from tests.tls_harness import Listener, proxy

GRAIN = timedelta(minutes=30)


class Clock:
    """The aggregate's (and so the calendar's) clock, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def at_minute(minute: int, second: int = 37) -> datetime:
    """A moment of the next hour (inside every credential's validity) at this minute and second."""
    hour = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return hour + timedelta(minutes=minute, seconds=second)


def on_grain_after(moment: datetime) -> datetime:
    """The first grain boundary at or after ``moment``."""
    return parse_time(align_up(int(moment.timestamp()), int(GRAIN.total_seconds())))


def plain_request(*names: str) -> str:
    """What omni, jFed and the acceptance tests send: bound, exclusive nodes, no lease, no time."""
    nodes = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true"><sliver_type name="raw-pc"/></node>'
        for name in names
    )
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{nodes}</rspec>'


@dataclass
class Site:
    v3_url: str
    v2_url: str
    aggregate: Aggregate
    clock: Clock
    pki: DemoPki

    def client(self, user: str = "alice", v2: bool = False) -> Any:
        sfi = self.pki.users[user].sfi_dir
        name = f"testbed.{user}"
        return proxy(self.v2_url if v2 else self.v3_url, str(sfi / f"{name}.user.gid"), str(sfi / f"{name}.pkey"))

    def slice_cred(self, name: str, lifetime: timedelta, user: str = "alice") -> tuple[str, str]:
        """A slice credential from the slice's authority, as its clearinghouse issues (and renews) it."""
        urn = f"urn:publicid:IDN+testbed+slice+{name}"
        path = self.pki.directory / "gids" / f"testbed.{name}.gid"
        if path.exists():
            chain = self.pki.authority.issued_chain(f"testbed.{name}")
        else:
            key = new_private_key()
            gid = create_gid(urn, key.public_key(), self.pki.authority.key, self.pki.authority.chain[0])
            chain = (gid, *self.pki.authority.chain)
        return urn, self.pki.authority.credential(self.pki.users[user].chain, chain, lifetime=lifetime)


@pytest.fixture
def site(listener: Listener, pki: DemoPki, tmp_path: Path) -> Site:
    clock = Clock(at_minute(0))
    served = serve_v2_and_v3(listener, pki, tmp_path, clock)
    return Site(served.v3_url, served.v2_url, served.aggregate, clock, pki)


@pytest.mark.parametrize(
    ("minute", "second"), [(0, 0), (0, 37), (1, 5), (14, 37), (29, 59), (30, 0), (31, 37), (44, 37), (58, 37), (59, 59)]
)
def test_v3_plain_request_provision_start_renew_five_minutes_describe_delete(
    site: Site, minute: int, second: int
) -> None:
    """GENI's acceptance sequence (test_CreateSliver, v3) at this time of the hour (on a boundary or in a slot)."""
    now = at_minute(minute, second)
    site.clock.now = now
    client = site.client()
    urn, slice_cred = site.slice_cred("replay3", timedelta(days=7))
    credentials = [cred(slice_cred)]
    booked_until = on_grain_after(now + timedelta(hours=1))

    allocated = ok(client.Allocate(urn, credentials, plain_request("node1"), {}))
    (sliver,) = allocated["geni_slivers"]
    # Booked from now (a first partial slot), to the first boundary at least the default hour later.
    assert (sliver["geni_start_time"], sliver["geni_end_time"]) == (format_time(now), format_time(booked_until))
    assert f'valid_from="{format_time(now)}"' in allocated["geni_rspec"]
    assert f'valid_until="{format_time(booked_until)}"' in allocated["geni_rspec"]

    provisioned = ok(client.Provision([urn], credentials, {}))
    assert [s["geni_allocation_status"] for s in provisioned["geni_slivers"]] == ["geni_provisioned"]
    started = ok(client.PerformOperationalAction([urn], credentials, "geni_start", {}))
    assert [s["geni_operational_status"] for s in started] == ["geni_ready"]
    site.clock.now = now + timedelta(seconds=20)
    status = ok(client.Status([urn], credentials, {}))
    assert [s["geni_operational_status"] for s in status["geni_slivers"]] == ["geni_ready"], "ready now, not later"

    # Renew to now + 5 minutes, as the acceptance test does, with the sliver's URN and omni's naive ISO time.
    five_minutes = now + timedelta(minutes=5)
    renewed = ok(
        client.Renew([sliver["geni_sliver_urn"]], credentials, five_minutes.replace(tzinfo=None).isoformat(), {})
    )
    new_end = on_grain_after(five_minutes)  # rounded up: never less than asked, never empty
    assert [(s["geni_end_time"], s["geni_expires"]) for s in renewed] == [(format_time(new_end),) * 2]
    assert new_end >= five_minutes and new_end > now
    assert "now ends at" in renewed[0]["sfa_omf_renewal"] and format_time(new_end) in renewed[0]["sfa_omf_renewal"]

    described = ok(client.Describe([urn], credentials, {"geni_rspec_version": GENI_V3}))
    assert f'valid_until="{format_time(new_end)}"' in described["geni_rspec"]
    assert [s["geni_operational_status"] for s in described["geni_slivers"]] == ["geni_ready"]
    deleted = ok(client.Delete([urn], credentials, {}))
    assert [s["geni_allocation_status"] for s in deleted] == ["geni_unallocated"]
    assert ok(client.Status([urn], credentials, {}))["geni_slivers"] == []


def test_v2_create_renew_after_the_slice_was_renewed_at_its_authority(site: Site) -> None:
    """omni -V2: CreateSliver with no time; the slice is renewed at the clearinghouse (a new slice credential);
    RenewSliver two days ahead with the new credential works and the stored expiry follows it."""
    now = at_minute(17)
    site.clock.now = now
    client = site.client(v2=True)
    urn, first = site.slice_cred("replay2", timedelta(days=1))
    manifest = ok(client.CreateSliver(urn, [first], plain_request("node2"), [], {}))
    assert f'valid_from="{format_time(now)}"' in manifest
    two_days = now + timedelta(days=2)
    # With the first credential the slice ends in a day: refused, saying so and what to do.
    output = refused(client.RenewSliver(urn, [first], format_time(two_days), {}), 7, "renew the slice at its authority")
    assert "beyond the slice credential's expiry" in output

    _, renewed = site.slice_cred("replay2", timedelta(days=10))  # RenewSlice at the clearinghouse
    assert ok(client.RenewSliver(urn, [renewed], format_time(two_days), {})) is True
    status = ok(client.SliverStatus(urn, [renewed], {}))
    expected_end = format_time(on_grain_after(two_days))
    assert status["geni_expires"] == expected_end and status["geni_status"] == "ready"
    assert [r["geni_end_time"] for r in status["geni_resources"]] == [expected_end]
    stored = site.aggregate.slices.get(urn).expires
    assert stored is not None and stored > two_days, "the stored expiry was updated from the call's credential"
    assert ok(client.DeleteSliver(urn, [renewed], {})) is True
    refused(client.SliverStatus(urn, [renewed], {}), 12, "no slivers")


def test_three_plain_requests_for_three_nodes_in_three_slices_at_once(site: Site) -> None:
    now = at_minute(42, second=5)
    site.clock.now = now
    requests = [(site.slice_cred(f"three{n}", timedelta(days=2)), f"node{n}") for n in (1, 2, 3)]
    barrier = threading.Barrier(3)
    answers: list[dict[str, Any]] = [{}, {}, {}]

    def allocate(index: int) -> None:
        (urn, slice_cred), node = requests[index]
        client = site.client()
        barrier.wait(timeout=30)
        answers[index] = client.Allocate(urn, [cred(slice_cred)], plain_request(node), {})

    threads = [threading.Thread(target=allocate, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    windows = {(s["geni_start_time"], s["geni_end_time"]) for answer in answers for s in ok(answer)["geni_slivers"]}
    assert windows == {(format_time(now), format_time(on_grain_after(now + timedelta(hours=1))))}


def test_a_plain_request_for_a_busy_node_gets_the_earliest_common_slot(site: Site) -> None:
    now = at_minute(12)
    site.clock.now = now
    client = site.client()
    first_urn, first = site.slice_cred("busy1", timedelta(days=2))
    taken = ok(client.Allocate(first_urn, [cred(first)], plain_request("node3"), {}))["geni_slivers"][0]
    urn, slice_cred = site.slice_cred("busy2", timedelta(days=2))
    allocated = ok(client.Allocate(urn, [cred(slice_cred)], plain_request("node2", "node3"), {}))
    starts = {(s["geni_start_time"], s["geni_end_time"]) for s in allocated["geni_slivers"]}
    later = parse_time(taken["geni_end_time"])
    assert starts == {(format_time(later), format_time(later + timedelta(hours=1)))}, "whole slots, both nodes"


def test_explicit_times_off_the_grain_are_still_refused(site: Site) -> None:
    site.clock.now = now = at_minute(5)
    urn, slice_cred = site.slice_cred("offgrain", timedelta(days=2))
    window = {
        "geni_start_time": format_time(now + timedelta(hours=2)),
        "geni_end_time": format_time(now + timedelta(hours=3)),
    }
    output = refused(site.client().Allocate(urn, [cred(slice_cred)], plain_request("node1"), window), 7, "grain")
    assert "slots of 30 minutes" in output


def test_renew_refusals_name_the_real_reason(site: Site) -> None:
    site.clock.now = now = at_minute(20)
    client = site.client()
    urn, slice_cred = site.slice_cred("refusals", timedelta(days=20))
    credentials = [cred(slice_cred)]
    begins = on_grain_after(now + timedelta(minutes=90))
    later = {"geni_start_time": format_time(begins), "geni_end_time": format_time(begins + timedelta(hours=1))}
    allocated = ok(client.Allocate(urn, credentials, plain_request("node1"), later))
    start = allocated["geni_slivers"][0]["geni_start_time"]
    refused(client.Renew([urn], credentials, format_time(now - timedelta(minutes=1)), {}), 1, "is in the past")
    # Named by the slice, a lease that starts after the end asked for is left as it is: nothing else to renew.
    output = refused(
        client.Renew([urn], credentials, format_time(now + timedelta(minutes=50)), {}), 1, "nothing to renew"
    )
    assert f"starts at {start}, after the end asked for" in output
    output = refused(client.Renew([urn], credentials, format_time(now + timedelta(days=25)), {}), 7)
    assert "beyond the slice credential's expiry" in output and "renew the slice at its authority" in output
    output = refused(client.Renew([urn], credentials, format_time(now + timedelta(days=19)), {}), 7, "max_duration")
    assert "longer than the maximum of 7 days" in output and " s " not in output.split("(policy")[0]
    assert ok(client.Status([urn], credentials, {}))["geni_slivers"][0]["geni_start_time"] == start, "nothing changed"


def test_renew_of_an_allocation_says_what_changed(site: Site) -> None:
    site.clock.now = now = at_minute(3)
    client = site.client()
    urn, slice_cred = site.slice_cred("allocated", timedelta(days=3))
    credentials = [cred(slice_cred)]
    (sliver,) = ok(client.Allocate(urn, credentials, plain_request("node2"), {}))["geni_slivers"]
    site.clock.now = now + timedelta(minutes=8)  # the allocation was to be provisioned within 10 minutes
    renewed = ok(client.Renew([urn], credentials, format_time(now + timedelta(hours=3)), {}))
    note = renewed[0]["sfa_omf_renewal"]
    assert "extended" in note and f"(was {sliver['geni_end_time']})" in note and "to be provisioned before" in note
    assert renewed[0]["geni_expires"] > sliver["geni_expires"], "renewing an allocation gives it time to be provisioned"
    status = ok(client.Status([urn], credentials, {}))["geni_slivers"][0]
    assert (status["geni_end_time"], status["geni_expires"]) == (
        renewed[0]["geni_end_time"],
        renewed[0]["geni_expires"],
    )
    again = ok(client.Renew([urn], credentials, format_time(now + timedelta(hours=3)), {}))
    assert again[0]["sfa_omf_renewal"].startswith("unchanged")


def test_a_plain_request_stops_before_a_short_lived_slice_credential(site: Site) -> None:
    """gcf's clearinghouse issues slice credentials for an hour: a request with no time (no end asked for) is cut at
    the last slot boundary before the credential's expiry instead of being refused for outliving the slice."""
    site.clock.now = now = at_minute(10)
    expires = now + timedelta(minutes=45)
    urn, slice_cred = site.slice_cred("shortlived", expires - utcnow())
    (sliver,) = ok(site.client().Allocate(urn, [cred(slice_cred)], plain_request("node1"), {}))["geni_slivers"]
    last_boundary = on_grain_after(expires) - GRAIN
    assert (sliver["geni_start_time"], sliver["geni_end_time"]) == (format_time(now), format_time(last_boundary))
    # An end the client asked for is not cut: beyond the credential, it is refused, saying so.
    window = {"geni_end_time": format_time(on_grain_after(now + timedelta(minutes=90)))}
    output = refused(site.client().Allocate(urn, [cred(slice_cred)], plain_request("node2"), window), 7)
    assert "slice credential expires" in output and "renew the slice at its authority" in output
