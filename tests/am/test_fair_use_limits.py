"""Fair use: an operator can bound what one user or one slice books ([sfa_omf] max_hours_per_day_per_user,
max_concurrent_leases_per_slice, max_node_hours_ahead_per_user; 0 is no limit) and the size of one request
(max_leases_per_request, node x window pairs). A refusal is REFUSED (geni_code 7), as the other policy rules, says
what to do, and writes nothing; Renew is held to the per-user limits too. Through Aggregate.allocate / renew as the
AM API calls them, on a real SQLite calendar; one test through the configuration file and build_aggregate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.config import read_config
from sfa_omf.errors import REASON_CODES, GeniCode, GeniError, Reason
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import Clock
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki

OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def policed(tmp_path: Path, pki: DemoPki, clock: Clock, backend: str = "sqlite", **limits: Any) -> Aggregate:
    database: Database = fresh_database(backend, tmp_path)
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots, VerdictCache()),
        Policy(**limits),
        clock=clock,
    )
    for name in ("n1", "n2", "n3"):
        made.inventory.add_node(NodeSpec(node_urn(name), name))
    return made


@pytest.fixture
def disposed() -> Iterator[list[Aggregate]]:
    made: list[Aggregate] = []
    yield made
    for aggregate in made:
        aggregate.database.dispose()


def slot(hours_from_now: int) -> datetime:
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)


def request(windows: list[tuple[int, int, list[str]]], authority: str = "testbed") -> str:
    """A request RSpec: each window (start in hours from now, hours, node names) one ol:lease on those nodes."""
    leases, refs = [], {}  # type: ignore[var-annotated]
    for index, (start, hours, names) in enumerate(windows):
        begin = slot(start)
        end = begin + timedelta(hours=hours)
        leases.append(
            f'<ol:lease client_id="l{index}" valid_from="{format_time(begin)}" valid_until="{format_time(end)}"/>'
        )
        for name in names:
            refs.setdefault(name, []).append(f'<ol:lease_ref id_ref="l{index}"/>')
    nodes = "".join(
        f'<node client_id="{name}" component_id="urn:publicid:IDN+{authority}+node+{name}" exclusive="true">'
        f"{''.join(lease_refs)}</node>"
        for name, lease_refs in refs.items()
    )
    body = "".join(leases) + nodes
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL}">{body}</rspec>'


def allocate(aggregate: Aggregate, pki: DemoPki, rspec: str, user: str = "alice") -> list[dict[str, Any]]:
    caller = pki.users[user]
    answer = aggregate.allocate(caller.chain, pki.slice_urn, [caller.slice_cred], rspec, {})
    return list(answer["geni_slivers"])


def rows(database: Database) -> dict[str, int]:
    with database.engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("slice", "lease", "sliver")
        }


def refused(call: Any) -> GeniError:
    with pytest.raises(GeniError) as refusal:
        call()
    assert refusal.value.reason is Reason.POLICY
    assert REASON_CODES[refusal.value.reason] is GeniCode.REFUSED and int(GeniCode.REFUSED) == 7
    return refusal.value


# -- max_node_hours_ahead_per_user -----------------------------------------------------------------------------------
def test_node_hours_ahead_allow_the_limit_and_refuse_more_naming_user_held_limit_and_what_to_do(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    aggregate = policed(tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=4)
    disposed.append(aggregate)
    assert len(allocate(aggregate, pki, request([(2, 2, ["n1", "n2"])]))) == 2  # 4 node-hours: at the limit
    before = rows(aggregate.database)
    refusal = refused(lambda: allocate(aggregate, pki, request([(10, 1, ["n3"])])))
    alice = pki.users["alice"].chain[0].urn
    assert f"{alice} holds 4 node-hours of leases not yet ended and asks for 1 more: 5 node-hours" in refusal.message
    assert "more than the 4 one user may hold ahead" in refusal.message
    assert "delete or shorten leases" in refusal.message
    assert "max_node_hours_ahead_per_user" in refusal.message
    assert rows(aggregate.database) == before  # nothing written


def test_node_hours_ahead_count_every_slice_of_the_user_and_not_other_users(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    """A PI with many slices holds no more: the limit is the user's, across their slices."""
    aggregate = policed(tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=3)
    disposed.append(aggregate)
    alice = pki.users["alice"].chain[0].urn
    expires = utcnow() + timedelta(days=20)
    other = BookingRequest(node_urn("n1"), slot(2), slot(4))  # 2 node-hours in another slice of alice's
    aggregate.bookings.book(OTHER_SLICE, expires, [other], owner_urn=alice)
    before = rows(aggregate.database)
    refusal = refused(lambda: allocate(aggregate, pki, request([(2, 2, ["n2"])])))
    assert f"{alice} holds 2 node-hours" in refusal.message
    assert rows(aggregate.database) == before
    # Bob's own hours are his: he books the same 2 node-hours in the same slice.
    assert len(allocate(aggregate, pki, request([(2, 2, ["n2"])]), user="bob")) == 1


def test_a_renewal_past_the_node_hours_ahead_is_refused_and_the_lease_keeps_its_end(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    aggregate = policed(tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=6)
    disposed.append(aggregate)
    allocate(aggregate, pki, request([(2, 2, ["n1", "n2"])]))  # 4 node-hours
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    before = rows(aggregate.database)
    refusal = refused(renewal(aggregate, pki, slot(6)))  # 2 nodes x 2 hours more: 8
    assert f"lease {lease.id} cannot be extended" in refusal.message
    assert "asks for 4 more: 8 node-hours, more than the 6" in refusal.message
    assert [held.end for held in aggregate.bookings.leases(slice_urn=pki.slice_urn)] == [slot(4)]
    assert rows(aggregate.database) == before
    renewal(aggregate, pki, slot(5))()  # 2 nodes x 1 hour more: 6, at the limit
    assert [held.end for held in aggregate.bookings.leases(slice_urn=pki.slice_urn)] == [slot(5)]


def renewal(aggregate: Aggregate, pki: DemoPki, new_end: datetime) -> Any:
    """Alice's Renew of the slice to ``new_end``, to be called."""
    alice = pki.users["alice"]
    return lambda: aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(new_end), {})


def test_the_node_hours_ahead_query_reads_only_leases_not_yet_ended(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    """Bounded to what has not ended: a user's history is never read by the check (its statement says so)."""
    aggregate = policed(
        tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=100, max_hours_per_day_per_user=100
    )
    disposed.append(aggregate)
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "owner_urn" in statement and "FROM sliver JOIN lease" in statement:
            statements.append((statement, parameters))

    event.listen(aggregate.database.engine, "before_cursor_execute", seen)
    allocate(aggregate, pki, request([(2, 2, ["n1"])]))
    event.remove(aggregate.database.engine, "before_cursor_execute", seen)
    # Two reads of the owner's slivers: the day's node-hours, and what they hold ahead; each bounded in time.
    assert len(statements) == 2, statements
    for statement, _ in statements:
        assert "sliver.end_s >" in statement, statement
    daily = next(statement for statement, _ in statements if "sliver.start_s <" in statement)
    assert daily  # the per-day read is bounded on both sides: the days checked


def set_options(config: Path, **values: int) -> None:
    """Set ``[sfa_omf]`` options in the configuration file ``sfa-omf init`` wrote (it writes every option)."""
    lines = config.read_text().splitlines()
    for key, value in values.items():
        (index,) = [number for number, line in enumerate(lines) if line.split("=")[0].strip() == key]
        lines[index] = f"{key} = {value}"
    config.write_text("\n".join(lines) + "\n")


# -- max_hours_per_day_per_user and max_concurrent_leases_per_slice, through the configuration --------------------
def test_fair_use_limits_are_read_from_the_configuration_and_enforced(tmp_path: Path) -> None:
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = tmp_path / "lab" / "sfa-omf.conf"
    set_options(
        config,
        max_hours_per_day_per_user=3,
        max_concurrent_leases_per_slice=2,
        max_node_hours_ahead_per_user=5,
        max_leases_per_request=4,
    )
    settings = read_config(str(config))
    aggregate = build_aggregate(settings)
    try:
        policy = aggregate.policy
        assert (
            policy.max_hours_per_day_per_user,
            policy.max_concurrent_leases_per_slice,
            policy.max_node_hours_ahead_per_user,
            policy.max_leases_per_request,
        ) == (3, 2, 5, 4)
        for name in ("n1", "n2", "n3"):
            aggregate.inventory.add_node(NodeSpec(f"urn:publicid:IDN+lab+node+{name}", name))
        sfi = Path(report.sfi_dirs["ann"])
        chain = load_gid_chain_file(str(sfi / "lab.ann.user.gid"))
        cred = (sfi / "lab.ann-lab.demo.slice.cred").read_text()
        slice_urn = "urn:publicid:IDN+lab+slice+demo"

        def book(windows: list[tuple[int, int, list[str]]]) -> Any:
            return aggregate.allocate(chain, slice_urn, [cred], request(windows, "lab"), {})

        def refused_for(rule: str, windows: list[tuple[int, int, list[str]]]) -> str:
            before = rows(aggregate.database)
            refusal = refused(lambda: book(windows))
            assert f"(policy rule {rule})" in refusal.message
            assert rows(aggregate.database) == before
            return refusal.message

        # Whole hours from now to 02:00 UTC of the day after tomorrow: every window below stays inside its day.
        day = slot(48).replace(hour=2)
        h0 = int((day - slot(0)).total_seconds() // 3600)
        # Two leases at once in the slice (2 node-hours that day, 2 held ahead): at the limit; a third is over.
        book([(h0, 1, ["n1"]), (h0, 1, ["n2"])])
        message = refused_for("max_concurrent_leases_per_slice", [(h0, 1, ["n3"])])
        assert "would hold 3 leases at once, more than 2" in message
        # 3 node-hours on one UTC day: 2 booked, 2 more that day is over.
        message = refused_for("max_hours_per_day_per_user", [(h0 + 3, 2, ["n3"])])
        assert f"would book 4 node-hours on {day:%Y-%m-%d}, more than 3" in message
        # 5 node-hours ahead: 2 held, 2 + 2 more on two other days is over (no day's limit is).
        message = refused_for("max_node_hours_ahead_per_user", [(h0 + 24, 2, ["n1"]), (h0 + 48, 2, ["n1"])])
        assert "holds 2 node-hours of leases not yet ended and asks for 4 more: 6 node-hours" in message
        # 5 pairs of node x window, over 4.
        message = refused_for("max_leases_per_request", [(h0 + 72, 1, ["n1", "n2", "n3"]), (h0 + 96, 1, ["n1", "n2"])])
        assert "the request books 5 node-windows" in message and "limit of 4 per request" in message
    finally:
        aggregate.database.dispose()


def test_zero_in_the_configuration_is_no_limit(tmp_path: Path) -> None:
    init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = tmp_path / "lab" / "sfa-omf.conf"
    written = config.read_text()  # init writes every option with its default: no limit
    for key in ("max_hours_per_day_per_user", "max_concurrent_leases_per_slice", "max_node_hours_ahead_per_user"):
        assert f"\n{key} = 0\n" in written
    set_options(
        config, max_hours_per_day_per_user=0, max_concurrent_leases_per_slice=0, max_node_hours_ahead_per_user=0
    )
    aggregate = build_aggregate(read_config(str(config)))
    try:
        policy = aggregate.policy
        assert policy.max_hours_per_day_per_user is None
        assert policy.max_concurrent_leases_per_slice is None
        assert policy.max_node_hours_ahead_per_user is None
    finally:
        aggregate.database.dispose()


# -- max_leases_per_request --------------------------------------------------------------------------------------------
def test_a_request_of_more_node_windows_than_the_limit_is_refused_before_any_work(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    aggregate = policed(tmp_path, pki, clock, backend, max_leases_per_request=4)
    disposed.append(aggregate)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    before = rows(aggregate.database)
    over = request([(2, 1, ["n1", "n2"]), (4, 1, ["n1", "n2"]), (6, 1, ["n3"])])  # 5 node-windows, 3 nodes
    event.listen(aggregate.database.engine, "before_cursor_execute", seen)
    refusal = refused(lambda: allocate(aggregate, pki, over))
    event.remove(aggregate.database.engine, "before_cursor_execute", seen)
    assert "the request books 5 node-windows (each node of each lease)" in refusal.message
    assert "over this aggregate's limit of 4 per request (policy rule max_leases_per_request): split it" in (
        refusal.message
    )
    assert rows(aggregate.database) == before
    # Nothing was written, nor a slice or lease read: only the request's nodes were looked up.
    assert not [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert not [s for s in statements if "FROM lease" in s or "FROM slice" in s], statements
    # 4 is the limit: booked.
    assert len(allocate(aggregate, pki, request([(2, 1, ["n1", "n2"]), (4, 1, ["n1", "n2"])]))) == 4


def test_the_default_request_size_keeps_a_request_of_the_most_nodes_in_two_windows() -> None:
    policy = Policy()
    assert policy.max_leases_per_request == 2 * policy.max_nodes_per_request


# -- Provision of many leases --------------------------------------------------------------------------------------
def test_provisioning_many_leases_reads_them_in_a_few_statements_not_several_per_lease(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    """Bookings.mark_provisioned_all holds the write lock for its whole unit of work: its statements must not grow
    with the leases (they were four or more per lease: 24 000 leases held every other writer for 30 s)."""
    aggregate = policed(tmp_path, pki, clock, backend)
    disposed.append(aggregate)
    windows = [(2 + index, 1, ["n1", "n2"]) for index in range(60)]  # 60 leases, 120 slivers
    allocate(aggregate, pki, request(windows))
    lease_ids = [lease.id for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)]
    assert len(lease_ids) == 60
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(aggregate.database.engine, "before_cursor_execute", seen)
    records = aggregate.bookings.mark_provisioned_all(lease_ids, pki.slice_urn)
    event.remove(aggregate.database.engine, "before_cursor_execute", seen)
    assert {record.state for record in records} == {"provisioned"}
    assert [record.id for record in records] == lease_ids
    assert all(sliver.allocation_state == "geni_provisioned" for record in records for sliver in record.slivers)
    assert sum(len(record.slivers) for record in records) == 120
    assert len(statements) < 20, statements  # (one per lease was already 60)
    stored = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert {lease.state for lease in stored} == {"provisioned"}


# -- geni_extend_alap under the limits ---------------------------------------------------------------------------------
def alap(aggregate: Aggregate, pki: DemoPki, new_end: datetime) -> list[dict[str, Any]]:
    """Alice's Renew of the slice to ``new_end`` with geni_extend_alap: the slivers' answers."""
    alice = pki.users["alice"]
    options = {"geni_extend_alap": True}
    return aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(new_end), options)


def ends(aggregate: Aggregate, pki: DemoPki) -> list[datetime]:
    """The slice's leases' ends as the calendar holds them, in order of start."""
    leases = sorted(aggregate.bookings.leases(slice_urn=pki.slice_urn), key=lambda lease: lease.start)
    return [lease.end for lease in leases]


def test_alap_extends_as_far_as_the_node_hours_ahead_allow_and_says_what_stopped_it(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    aggregate = policed(tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=4)
    disposed.append(aggregate)
    allocate(aggregate, pki, request([(2, 2, ["n1"])]))  # 2 node-hours of 4
    (answer,) = alap(aggregate, pki, slot(8))  # 4 hours more asked; 2 fit
    assert ends(aggregate, pki) == [slot(6)]
    assert answer["geni_end_time"] == format_time(slot(6))
    note = answer["sfa_omf_renewal"]
    assert "extended: it now ends at" in note and "as far as geni_extend_alap could extend it" in note, note
    assert "may hold at most 4 node-hours" in note and "(policy rule max_node_hours_ahead_per_user)" in note, note


def test_alap_at_the_node_hours_ahead_limit_keeps_the_lease_and_says_why(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    aggregate = policed(tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=4)
    disposed.append(aggregate)
    allocate(aggregate, pki, request([(2, 2, ["n1", "n2"])]))  # 4 node-hours: at the limit
    before = rows(aggregate.database)
    answers = alap(aggregate, pki, slot(8))
    assert ends(aggregate, pki) == [slot(4)]
    assert rows(aggregate.database) == before
    for answer in answers:
        note = answer["sfa_omf_renewal"]
        assert note.startswith("unchanged: lease") and "geni_extend_alap cannot extend it" in note, note
        assert "holds 4, where each hour of this lease counts 2" in note, note
        assert "(policy rule max_node_hours_ahead_per_user)" in note, note


def test_alap_of_several_leases_shares_the_node_hours_ahead_between_them_in_order(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    """Each extension granted counts against the next lease's: the renewal checks them one after the other, and two
    leases each given the whole room left would be refused together."""
    aggregate = policed(tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=6)
    disposed.append(aggregate)
    allocate(aggregate, pki, request([(2, 2, ["n1"]), (5, 2, ["n2"])]))  # 4 node-hours of 6
    answers = alap(aggregate, pki, slot(12))
    first, second = ends(aggregate, pki)
    assert (first - slot(4)) + (second - slot(7)) == timedelta(hours=2), (first, second)
    assert all("max_node_hours_ahead_per_user" in answer["sfa_omf_renewal"] for answer in answers), answers


def test_alap_extends_as_far_as_the_hours_per_day_allow_on_the_day_it_stops(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    aggregate = policed(tmp_path, pki, clock, backend, max_hours_per_day_per_user=5)
    disposed.append(aggregate)
    # 01:00 to 03:00 tomorrow (UTC): the extension stays on that day whenever the test runs.
    tomorrow = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    start = int((tomorrow - slot(0)).total_seconds() // 3600) + 1
    allocate(aggregate, pki, request([(start, 2, ["n1"])]))
    (answer,) = alap(aggregate, pki, slot(start + 8))  # 8 hours more asked; 3 fit in the day's 5
    assert ends(aggregate, pki) == [slot(start + 5)]
    note = answer["sfa_omf_renewal"]
    assert "may book at most 5 node-hours per UTC day" in note and f"on {tomorrow:%Y-%m-%d}" in note, note
    assert "(policy rule max_hours_per_day_per_user)" in note, note


def test_alap_stops_before_a_lease_of_the_slice_that_would_make_too_many_at_once(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    """An extension can make a lease overlap another of its slice's: max_concurrent_leases_per_slice bounds it."""
    aggregate = policed(tmp_path, pki, clock, backend, max_concurrent_leases_per_slice=1)
    disposed.append(aggregate)
    allocate(aggregate, pki, request([(2, 2, ["n1"]), (6, 2, ["n2"])]))
    answers = alap(aggregate, pki, slot(10))
    assert ends(aggregate, pki) == [slot(6), slot(10)]
    notes = {answer["geni_end_time"]: answer["sfa_omf_renewal"] for answer in answers}
    assert "(policy rule max_concurrent_leases_per_slice)" in notes[format_time(slot(6))], notes
    assert "would hold 2 at" in notes[format_time(slot(6))], notes


def test_the_per_user_queries_read_the_users_leases_not_yet_ended_through_an_index(
    tmp_path: Path, pki: DemoPki, clock: Clock, disposed: list[Aggregate], backend: str
) -> None:
    """Migration 0034's index on lease (owner_urn, end_s), declared by the model too: the per-user checks filter on
    the lease's end, so PostgreSQL reads the user's leases not yet ended through it, not every sliver kept (a year of
    history by default)."""
    aggregate = policed(
        tmp_path, pki, clock, backend, max_node_hours_ahead_per_user=100, max_hours_per_day_per_user=100
    )
    disposed.append(aggregate)
    indexes = {
        index["name"]: index["column_names"] for index in inspect(aggregate.database.engine).get_indexes("lease")
    }
    assert indexes.get("ix_lease_owner_end") == ["owner_urn", "end_s"], indexes
    assert any(index.name == "ix_lease_owner_end" for index in Lease.__table__.indexes)
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "owner_urn" in statement and "FROM sliver JOIN lease" in statement:
            statements.append((statement, parameters))

    event.listen(aggregate.database.engine, "before_cursor_execute", seen)
    allocate(aggregate, pki, request([(2, 2, ["n1"])]))
    event.remove(aggregate.database.engine, "before_cursor_execute", seen)
    assert len(statements) == 2, statements
    assert all("lease.end_s >" in statement for statement, _ in statements), statements
    if backend != "postgresql":
        return
    # The plan PostgreSQL picks when a scan of the whole table is the dearest (as with 300 000 ended slivers).
    connection = aggregate.database.engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SET enable_seqscan = off")
        for statement, parameters in statements:
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(str(row[0]) for row in cursor.fetchall())
            assert "ix_lease_owner_end" in plan, plan
    finally:
        connection.rollback()
        connection.close()
