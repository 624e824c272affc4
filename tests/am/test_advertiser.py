"""The advertiser (snapshot read + cache) answers exactly what the straightforward ListResources wrote, at every
second and after every kind of calendar write, on SQLite and PostgreSQL; the generation moves with every write."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from rspec.model import LeaseView
from sfa_omf.am.advertiser import adler32_combine, deflate_segment
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar import generation as generation_module
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.generation import SHARDS, read_generation
from sfa_omf.calendar.models import CalendarGeneration, Pool
from sfa_omf.calendar.queries import from_s
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.calendar.snapshot import read_snapshot
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, at, fresh_database, node_urn

HORIZON = timedelta(days=2)  # short, so that bookings enter the horizon while the tests move "now"
VIEWS = {LeaseView.GENI: None, LeaseView.SFA_ALL: "all", LeaseView.SFA_LEASES: "leases"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def setup(database: Database, tmp_path: Path) -> tuple[Aggregate, Clock]:
    (tmp_path / "roots").mkdir()
    clock = Clock()
    settings = AggregateSettings(authority_hrn="testbed", horizon=HORIZON, free_windows=4)
    aggregate = Aggregate(
        settings, database, CredentialVerifier(load_trusted_roots(str(tmp_path / "roots"))), clock=clock
    )
    inventory = aggregate.inventory
    inventory.create_pool("private", federated=False)
    for index in range(6):
        grain = 3600 if index % 3 == 2 else None  # two grains in one inventory
        image = ({"name": "ubuntu", "os": "Linux"},) if index % 2 else ()
        inventory.add_node(NodeSpec(node_urn(f"n{index}"), f"n{index}", grain_s=grain, disk_images=image))
    inventory.add_node(NodeSpec(node_urn("hidden"), "hidden", pool="private"))
    inventory.set_state(node_urn("n5"), "maintenance")
    return aggregate, clock


def reference(aggregate: Aggregate, view: LeaseView, available: bool) -> str:
    options = {"list_leases": VIEWS[view], "geni_available": available}
    return aggregate.list_resources_reference(aggregate.clock(), options)


def document(aggregate: Aggregate, view: LeaseView, available: bool) -> str:
    return aggregate.advertiser.document(aggregate.clock(), view, available)


def assert_same_as_reference(aggregate: Aggregate) -> None:
    for view in VIEWS:
        for available in (False, True):
            expected = reference(aggregate, view, available)
            assert document(aggregate, view, available) == expected, (view, available)
            # geni_compressed: another zlib stream than zlib.compress's, with the same content.
            packed = aggregate.advertiser.document(aggregate.clock(), view, available, compressed=True)
            assert zlib.decompress(base64.b64decode(packed)).decode("utf-8") == expected, (view, available)


@given(st.binary(max_size=300), st.binary(max_size=70_000))
@settings(max_examples=60, deadline=None)
def test_adler32_combine_is_the_checksum_of_the_concatenation(first: bytes, second: bytes) -> None:
    combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
    assert combined == zlib.adler32(first + second)


@given(st.lists(st.binary(max_size=5_000), min_size=1, max_size=5))
@settings(max_examples=40, deadline=None)
def test_deflate_segments_concatenate_into_one_stream(chunks: list[bytes]) -> None:
    stream = b"".join(deflate_segment(chunk) for chunk in chunks) + deflate_segment(b"", final=True)
    assert zlib.decompress(stream, wbits=-15) == b"".join(chunks)


def fill(aggregate: Aggregate) -> None:
    """Bookings of every kind the advertisement shows or hides: allocated, provisioned, cancelled, renewed, several
    nodes in one lease, the hidden pool's node, one beyond the horizon; external holds off the grain."""
    bookings = aggregate.bookings

    def book(node: str, start_h: float, end_h: float, slice_urn: str = SLICE) -> str:
        request = BookingRequest(node_urn(node), at(start_h), at(end_h))
        return bookings.book(slice_urn, SLICE_EXPIRES, [request]).leases[0].id

    book("n0", 0, 1)
    provisioned = book("n0", 2, 4)
    bookings.mark_provisioned(provisioned)
    bookings.cancel(book("n1", 1, 2))
    bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(n), at(3), at(5)) for n in ("n1", "n2", "hidden")])
    renewed = book("n3", 1.5, 2.5)
    bookings.renew(renewed, at(3.5))
    book("n4", 47, 49, "urn:publicid:IDN+testbed+slice+other")  # enters the 2-day horizon after one hour
    book("n2", 10, 11)
    book("hidden", 1, 2)  # a lease of the hidden pool's node alone is not advertised
    ExternalHolds(aggregate.database, "testbed").sync(
        "oar",
        [
            ExternalHold("7", (node_urn("n4"),), at(0.1) + timedelta(seconds=13), at(1.3)),
            ExternalHold("8", (node_urn("n3"), node_urn("n1")), at(6), at(6.75) + timedelta(seconds=1)),
        ],
    )


def test_the_cached_advertisement_equals_the_reference_at_every_second(setup: tuple[Aggregate, Clock]) -> None:
    aggregate, clock = setup
    fill(aggregate)
    now_s = int(NOW.timestamp())
    snapshot = read_snapshot(aggregate.database, now_s)
    # Every second where something could change (grain boundaries, every start and end, every start minus the
    # horizon), the seconds either side of it, and random seconds, over the first 3 hours.
    critical = {now_s + 1800 * k for k in range(8)}
    for windows in snapshot.held.values():
        for start, end in windows:
            critical |= {start, end, start - int(HORIZON.total_seconds())}
    critical |= {lease.start_s for lease in snapshot.leases} | {lease.end_s for lease in snapshot.leases}
    rng = random.Random(15)
    seconds = {s + d for s in critical for d in (-1, 0, 1)} | {now_s + rng.randrange(3 * 3600) for _ in range(20)}
    moments = [from_s(s) for s in sorted(seconds) if now_s <= s < now_s + 3 * 3600]
    assert len(moments) > 40
    for moment in moments:
        clock.now = moment + timedelta(microseconds=moment.second * 1000)  # microseconds must not matter
        assert_same_as_reference(aggregate)
    calls = len(moments) * len(VIEWS) * 2
    # The cache really answered: far fewer builds than calls, and a build every time a boundary was crossed.
    assert 0 < aggregate.advertiser.builds < calls / 2


def test_every_kind_of_calendar_write_invalidates_the_cache(setup: tuple[Aggregate, Clock]) -> None:
    aggregate, clock = setup
    fill(aggregate)
    clock.now = at(0.25)
    bookings, inventory = aggregate.bookings, aggregate.inventory
    state: dict[str, str] = {}

    def book() -> None:
        state["lease"] = (
            bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(7), at(8))]).leases[0].id
        )

    writes = [
        ("book", book),
        ("renew", lambda: bookings.renew(state["lease"], at(9))),
        ("provision", lambda: bookings.mark_provisioned(state["lease"])),
        ("cancel", lambda: bookings.cancel(state["lease"])),
        ("book again", book),
        ("discard", lambda: bookings.discard([state["lease"]])),
        ("node to maintenance", lambda: inventory.set_state(node_urn("n2"), "maintenance")),
        ("node add", lambda: inventory.add_node(NodeSpec(node_urn("n9"), "n9", hardware_type="new"))),
        ("node update", lambda: inventory.update_node(node_urn("n9"), "renamed", {})),
        ("node move", lambda: inventory.move_node(node_urn("n9"), "private")),
        ("node remove", lambda: inventory.remove_node(node_urn("n9"))),
        ("external hold", lambda: ExternalHolds(aggregate.database, "testbed").sync("oar", [])),
    ]
    for name, write in writes:
        for view in VIEWS:
            document(aggregate, view, False)  # cached before the write
        before = generation(aggregate.database)
        write()
        assert generation(aggregate.database) > before, name
        assert_same_as_reference(aggregate)


def test_a_write_by_another_process_invalidates_the_cache(setup: tuple[Aggregate, Clock]) -> None:
    aggregate, clock = setup
    clock.now = at(0.25)
    cached = document(aggregate, LeaseView.GENI, False)
    assert node_urn("n0") in cached
    script = (
        "import sys\n"
        "from sfa_omf.calendar.database import Database\n"
        "from sfa_omf.calendar.inventory import Inventory\n"
        "Inventory(Database(sys.argv[1])).set_state(sys.argv[2], 'maintenance')\n"
    )
    subprocess.run([sys.executable, "-c", script, aggregate.database.url, node_urn("n0")], check=True)
    fresh = document(aggregate, LeaseView.GENI, False)
    assert fresh != cached
    assert fresh == reference(aggregate, LeaseView.GENI, False)


def test_only_units_of_work_that_change_something_bump_the_generation(database: Database) -> None:
    start = generation(database)
    with database.write():
        pass
    assert generation(database) == start
    with pytest.raises(RuntimeError), database.write() as session:
        session.add(Pool(name="gone", federated=True, description=""))
        session.flush()
        raise RuntimeError("rolled back")
    assert generation(database) == start
    with database.write() as session:
        session.add(Pool(name="kept", federated=True, description=""))
    assert generation(database) == start + 1


def generation(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


@pytest.mark.parametrize("shard", [1, 2, 17, SHARDS])
def test_a_write_counted_in_any_shard_invalidates_the_cache(
    setup: tuple[Aggregate, Clock], shard: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    aggregate, clock = setup
    clock.now = at(0.25)
    cached = document(aggregate, LeaseView.GENI, False)
    before = generation(aggregate.database)
    monkeypatch.setattr(generation_module.random, "randint", lambda _low, _high: shard)
    aggregate.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n0"), at(1), at(2))])
    assert shard_values(aggregate.database).get(shard, 0) >= 1
    assert generation(aggregate.database) == before + 1
    fresh = document(aggregate, LeaseView.GENI, False)
    assert fresh != cached
    assert fresh == reference(aggregate, LeaseView.GENI, False)


def shard_values(database: Database) -> dict[int, int]:
    with database.read() as session:
        return {row.id: row.value for row in session.execute(select(CalendarGeneration.id, CalendarGeneration.value))}
