"""Status, Describe, Renew and Delete of a small slice, in-process (no TLS): the whole call, its calendar work
(reading the slice's leases) before and after the column query, and the caller-chain check with and without its
verdict cache.

Run from the repository root, with the project's virtualenv:

    python benchmarks/slice_calls_bench.py                       # SQLite
    python benchmarks/slice_calls_bench.py --postgres-url URL    # also PostgreSQL (its public schema is dropped)

The calendar is benchmarks/calendar_bench.py's (``--nodes`` nodes, ``--leases`` provisioned one-node leases of 100
other slices, bulk-inserted), plus the demo slice of an ``init_directory`` authority holding one sliver, booked
with ``Bookings.book``. The aggregate has a ``VerdictCache`` (as ``sfa-omf serve`` makes it) and alice's slice
credential. The eight calendar rows run in turns (one call of each per round), so that the load of a shared machine
falls on them alike; PostgreSQL's round trips per call are counted from libpq's trace. Rows (median per call):
*status*, *describe* — ``Aggregate.status`` / ``describe`` of the demo slice;
*leases (ORM)* — the slice's leases read as ``Bookings.leases`` did before (ORM objects, selectinload), the peer;
*leases* — ``Bookings.leases(slice_urn=...)`` now; *renew* — ``Aggregate.renew`` of a second one-sliver lease of
the slice by one grain (the lease booked again, untimed, before each, with the slice credential's expiry as an
Allocate with the same credential stores it); *delete* — ``Aggregate.delete`` of that
lease by its sliver URN (the cancelled lease is removed, untimed, before the next booking: the slice keeps its two
leases and no history); *one statement* — ``SELECT 1`` by ``Database.fetch_all`` on the driver's cursor, the floor
of one round trip to the database (what each of a call's round trips costs at least); *one durable write* — one
row of a table of the benchmark's own updated and committed in a transaction of its own, as the calls write
(PostgreSQL: one statement in autocommit; SQLite: BEGIN IMMEDIATE, UPDATE, COMMIT), the floor of a write the
database must flush before it answers; *caller chain* —
``verify_caller`` without a cache (every link's signature checked), and *caller chain, cached* — with the verdict
cache. Before timing, the script checks that the new and the old lease reads answer the same, that Status answers
the demo slice's one sliver, and that Renew and Delete do what they say.

*calendar ms* (status, describe, renew, delete): the part of the call spent in the aggregate's calendar objects
(``Bookings``, ``Slices``, ``Inventory``, ``Accounts``: all its reads and writes of the calendar database and their
rows made into records), median per call; the rest of the call is checking the credential (cached), the answer's
dicts and the manifest's XML. The goal of issue 15 is <= 1 ms of calendar work for each of these four calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from calendar_bench import GRAIN_S, NOW, Calendar, booking_window, check_database_url, node_name
from sqlalchemy import Column, Integer, MetaData, Table, event, literal_column, select, update

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.booking import ACTIVE_LEASE_STATES, lease_record
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.models import Lease, Slice, Sliver
from sfa_omf.calendar.plain_statements import PlainStatement, execute_plain
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from sfa_omf.errors import GeniError
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache

SLICE = "urn:publicid:IDN+testbed+slice+demo"
CALLS = ("status", "describe", "renew", "delete")  # the aggregate's calls, whose calendar work is shown
ONE_STATEMENT = PlainStatement(select(literal_column("1")))  # SELECT 1, on the driver's cursor as the calls' reads
# The floor of a durable write: one row of a table of the benchmark's own updated in a transaction of its own,
# committed (the WAL's flush on either database), on the driver's cursor as the calls' writes.
FLOOR_TABLE = Table(
    "benchmark_durable_write", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer)
)
ONE_WRITE = PlainStatement(update(FLOOR_TABLE).where(FLOOR_TABLE.c.id == 1).values(n=FLOOR_TABLE.c.n + 1))
# What no implementation of a call avoids, in the rows above: Status and Describe read the slice once; Renew reads
# the lease (its checks need its start, its nodes' grain and the slice's expiry) and then writes durably; Delete
# writes durably (one statement can cancel and answer).
FLOORS = {
    "status": ("one statement",),
    "describe": ("one statement",),
    "renew": ("one statement", "one durable write"),
    "delete": ("one durable write",),
}
AT = NOW + timedelta(minutes=1)


def orm_leases(aggregate: Aggregate, slice_urn: str) -> list[LeaseRecord]:
    """Bookings.leases(slice_urn=...) as it was before the column query (the peer)."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    with aggregate.database.read() as session:
        query = (
            select(Lease)
            .options(selectinload(Lease.slivers).selectinload(Sliver.node))
            .order_by(Lease.start_s, Lease.id)
            .where(Lease.state.in_(ACTIVE_LEASE_STATES))
            .join(Slice)
            .where(Slice.urn == slice_urn)
        )
        return [lease_record(lease) for lease in session.scalars(query)]


def round_trips(database: Database, run: Callable[[], object]) -> int:
    """How many times ``run`` waits for PostgreSQL: libpq's trace of the client's messages, counting each simple
    Query and each Sync (the end of an extended-protocol batch) — every one is answered before the client goes on."""
    with tempfile.TemporaryFile("w+") as trace:

        def traced(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            dbapi_connection.pgconn.trace(trace.fileno())

        def untraced(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.pgconn.untrace()

        event.listen(database.engine, "checkout", traced)
        event.listen(database.engine, "checkin", untraced)
        try:
            run()
        finally:
            event.remove(database.engine, "checkout", traced)
            event.remove(database.engine, "checkin", untraced)
        trace.seek(0)
        sent = [[field.strip() for field in line.split("\t")] for line in trace]
    return sum(1 for fields in sent if len(fields) > 3 and fields[1] == "F" and fields[3] in ("Query", "Sync"))


def durable_write(database: Database) -> object:
    """The floor of a call's durable write: one row updated and committed, as the calls' writes run (PostgreSQL: one
    statement in autocommit, one round trip; SQLite: BEGIN IMMEDIATE, the statement, COMMIT)."""
    if not database.is_sqlite:
        return database.write_alone(ONE_WRITE)
    with database.write_connection() as connection:
        return execute_plain(connection, ONE_WRITE)


def free_stretch(aggregate: Aggregate, node: str) -> tuple[datetime, datetime]:
    """A one-grain slot on ``node`` whose next grain is free too (so that a Renew by one grain never conflicts)."""
    for segment in range(1, 100):
        start, end = booking_window(segment)
        try:
            booked = aggregate.bookings.book(
                SLICE, NOW + timedelta(days=7), [BookingRequest(node, start, end + (end - start))]
            )
        except GeniError:
            continue
        aggregate.bookings.cancel(booked.leases[0].id)
        return start, end
    raise SystemExit(f"no two free grains on {node}")


class CalendarTimer:
    """Seconds spent in the public methods of the objects given to ``watch`` (outermost calls only: a method of
    theirs calling another is counted once), summed until ``take``. Each method is replaced on the instance by a
    timed one (about a microsecond more per call)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.depth = 0

    def watch(self, *watched: object) -> None:
        for one in watched:
            for name in dir(type(one)):
                method = getattr(one, name)
                if not name.startswith("_") and callable(method):
                    setattr(one, name, self._timed(method))

    def take(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed_method(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            begin = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.spent += time.perf_counter() - begin

        return timed_method


def timed_in_turns(
    runs: list[tuple[str, Callable[[], object]]],
    seconds: float,
    untimed: dict[str, Callable[[], object]],
    calendar: CalendarTimer,
) -> dict[str, tuple[int, float, float]]:
    """Each run once per round, for ``seconds`` in all (at least 5 rounds): calls, median seconds and median seconds
    in ``calendar`` of each. ``untimed`` holds, by run name, what must happen before that run each round and is not
    counted (the booking a Renew renews)."""
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    in_calendar: dict[str, list[float]] = {name: [] for name, _ in runs}
    started = time.perf_counter()
    while len(times[runs[0][0]]) < 5 or time.perf_counter() - started < seconds:
        for name, run in runs:
            if name in untimed:
                untimed[name]()
            calendar.take()
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
            in_calendar[name].append(calendar.take())
    return {
        name: (len(spent), statistics.median(spent), statistics.median(in_calendar[name]))
        for name, spent in times.items()
    }


def timed(run: Callable[[], object], seconds: float) -> tuple[int, float]:
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - started < seconds and len(times) < 100_000):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return len(times), statistics.median(times)


def measure(
    backend: str, url: str, args: argparse.Namespace, authority: Path
) -> list[tuple[str, int, float, float | None]]:
    calendar = Calendar(backend, url, args.nodes)
    try:
        calendar.fill(args.leases)
        sfi = authority / "users" / "alice" / "sfi"
        chain = load_gid_chain_file(str(sfi / "testbed.alice.user.gid"))
        credential = (sfi / "testbed.alice-testbed.demo.slice.cred").read_text()
        roots = load_trusted_roots(str(authority / "trusted_roots"))
        aggregate = Aggregate(
            AggregateSettings(authority_hrn="testbed"),
            calendar.database,
            CredentialVerifier(roots, VerdictCache()),
            clock=lambda: AT,
        )
        start, end = booking_window(0)
        aggregate.bookings.book(SLICE, NOW + timedelta(days=7), [BookingRequest(node_name(0), start, end)])
        # Renew and Delete act on a second one-sliver lease of the slice, booked again (untimed) before each: Renew
        # moves its end one grain later (into a grain found free on its node), Delete deletes it by its sliver URN.
        doomed_start, doomed_end = free_stretch(aggregate, node_name(1))
        doomed = [BookingRequest(node_name(1), doomed_start, doomed_end)]
        renewed_end = format_time(doomed_end + timedelta(seconds=GRAIN_S))
        doomed_urns: list[str] = []
        doomed_leases: list[str] = []
        # Booked with the slice credential's expiry, as an Allocate with it stores: the Renew comes with the same
        # credential (a credential renewed at the authority in between costs the Renew one statement more).
        credential_expires = aggregate.authorize("Renew", chain, [credential], SLICE, {}).expires

        def book_doomed() -> object:
            # The lease Delete cancelled is removed first, so that the slice stays small: every round would leave
            # one more cancelled lease in it, which its reads filter out (a slice with a long history).
            aggregate.bookings.discard(doomed_leases)
            booked = aggregate.bookings.book(SLICE, credential_expires, doomed)
            doomed_urns[:] = [sliver.urn for lease in booked.leases for sliver in lease.slivers]
            doomed_leases[:] = [lease.id for lease in booked.leases]
            return booked

        status = aggregate.status(chain, [SLICE], [credential], {})
        book_doomed()
        aggregate.renew(chain, doomed_urns, [credential], renewed_end, {})
        ends = [lease.end for lease in aggregate.bookings.leases(slice_urn=SLICE) if lease.start == doomed_start]
        if ends != [doomed_end + timedelta(seconds=GRAIN_S)]:
            raise SystemExit(f"{backend}: Renew did not move the lease's end one grain: {ends}")
        if len(aggregate.delete(chain, doomed_urns, [credential], {})) != 1:
            raise SystemExit(f"{backend}: Delete did not answer the one sliver it deleted")
        if len(status["geni_slivers"]) != 1 or aggregate.bookings.leases(slice_urn=SLICE) != orm_leases(
            aggregate, SLICE
        ):
            raise SystemExit(f"{backend}: the demo slice's leases are not what was booked")
        FLOOR_TABLE.create(calendar.database.engine)
        with calendar.database.engine.begin() as connection:
            connection.execute(FLOOR_TABLE.insert().values(id=1, n=0))
        uncached = CredentialVerifier(roots)
        describe_options = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
        runs: list[tuple[str, Callable[[], object]]] = [
            ("status", lambda: aggregate.status(chain, [SLICE], [credential], {})),
            ("describe", lambda: aggregate.describe(chain, [SLICE], [credential], describe_options)),
            ("leases (ORM)", lambda: orm_leases(aggregate, SLICE)),
            ("leases", lambda: aggregate.bookings.leases(slice_urn=SLICE)),
            ("renew", lambda: aggregate.renew(chain, doomed_urns, [credential], renewed_end, {})),
            ("delete", lambda: aggregate.delete(chain, doomed_urns, [credential], {})),
            ("one statement", lambda: calendar.database.fetch_all(ONE_STATEMENT)),
            ("one durable write", lambda: durable_write(calendar.database)),
            ("caller chain", lambda: uncached.verify_caller(chain, AT)),
            ("caller chain, cached", lambda: aggregate.verifier.verify_caller(chain, AT)),
        ]
        if backend == "postgresql":
            book_doomed()
            trips = {name: round_trips(calendar.database, run) for name, run in runs[:8]}
            print(f"  postgresql round trips per call: {trips}")
        rows: list[tuple[str, int, float, float | None]] = []
        # In turns (one call of each per round) for the slow reads, so that the machine's load falls on them
        # alike; the chain checks, a thousand times quicker, one after the other.
        calendar_runs, chain_runs = runs[:8], runs[8:]
        seconds = len(calendar_runs) * args.seconds
        timer = CalendarTimer()
        timer.watch(aggregate.bookings, aggregate.slices, aggregate.inventory, aggregate.accounts)
        for name, (calls, median, in_calendar) in timed_in_turns(
            calendar_runs, seconds, {"renew": book_doomed}, timer
        ).items():
            rows.append((name, calls, median, in_calendar if name in CALLS else None))
        for name, run in chain_runs:
            calls, median = timed(run, args.seconds)
            rows.append((name, calls, median, None))
        for name, calls, median, _ in rows:
            print(f"  {backend:<11}{name:<22}{calls:>8,} calls {median * 1000:9.3f} ms", flush=True)
        return rows
    finally:
        calendar.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", help="also measure PostgreSQL (its public schema is dropped)")
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--leases", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    print("Status/Describe of a one-sliver slice, in-process (sfa-omf)")
    print(f"  calendar      {args.nodes:,} nodes, {args.leases:,} leases of other slices; {args.seconds} s per row")
    results: list[tuple[str, str, int, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="slice-bench-") as tmp:
        init_directory(str(Path(tmp) / "tb"))
        backends = [("sqlite", sqlite_url(str(Path(tmp) / "slice.sqlite")))]
        if args.postgres_url:
            check_database_url(args.postgres_url)
            backends.append(("postgresql", args.postgres_url))
        for backend, url in backends:
            for name, calls, median, in_calendar in measure(backend, url, args, Path(tmp) / "tb"):
                results.append((backend, name, calls, median, in_calendar))
    print()
    header = (
        f"{'backend':<11}{'measured':<22}{'calls':>8}{'median ms':>11}{'calendar ms':>13}{'floor ms':>10}"
        f"{'vs floor':>10}{'vs peer':>9}"
    )
    print(header)
    print("-" * len(header))
    peers = {"leases": "leases (ORM)", "caller chain, cached": "caller chain"}
    medians = {(backend, name): median for backend, name, _, median, _ in results}
    for backend, name, calls, median, in_calendar in results:
        peer = medians.get((backend, peers.get(name, "")))
        versus = f"{peer / median:>8.1f}x" if peer else ""
        calendar = f"{in_calendar * 1000:>13.3f}" if in_calendar is not None else " " * 13
        floor_text = " " * 20
        if in_calendar is not None and name in FLOORS:
            floor = sum(medians[backend, part] for part in FLOORS[name])
            floor_text = f"{floor * 1000:>10.3f}{in_calendar / floor:>9.2f}x"
        print(f"{backend:<11}{name:<22}{calls:>8,}{median * 1000:>11.3f}{calendar}{floor_text}{versus}")
    print("vs peer: how many times faster than the row it replaces (leases: the ORM read; cached: the uncached check).")
    print("calendar ms: of the call, the part in Bookings, Slices, Inventory and Accounts (issue 15's goal: <= 1 ms).")
    print(
        "floor ms: what no implementation of the call avoids, measured in this run (status, describe: one statement; "
        "renew: one statement and one durable write; delete: one durable write); vs floor: calendar ms / floor ms."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
