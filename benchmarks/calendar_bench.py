"""Reservation calendar: bookings per second and next-free-windows latency, on SQLite and on PostgreSQL.

Run from the repository root, with the project's virtualenv:

    python benchmarks/calendar_bench.py                       # SQLite only (PostgreSQL rows say why not)
    python benchmarks/calendar_bench.py --postgres-url "$(bash scripts/postgres.sh sfaomf_bench | tail -n 1)"
    python benchmarks/calendar_bench.py --quick               # a tenth of the data, 1 s per measurement

The PostgreSQL URL may also come from SFA_OMF_BENCH_POSTGRES_URL. Give the benchmark a database of its own: it drops
and recreates that database's ``public`` schema for every fresh calendar (it refuses a database whose name lacks
"bench" and that already holds tables). SQLite calendars are temporary files.

What is measured, with the calendar's own code (``Bookings``, ``Availability``) and a fixed "now" on a grain boundary:

* bookings/s — ``Bookings.book`` of one node for one grain (1800 s), by each of ``--processes`` processes (spawned,
  each with its own ``Database`` and engine, each with its own slice, each booking a disjoint set of (node, window)
  so that every booking succeeds), on a calendar of ``--nodes``' first count of nodes that already holds 0 and then
  each ``--leases`` count of leases. Aggregate successful bookings per second over ``--seconds``, counted from when
  every process has passed a barrier (process start-up, connection and one warm-up booking each are not timed);
  with the CPU the booking processes used per booking and how busy the machine's CPUs were meanwhile (/proc/stat).
* next free windows — ``Availability.free_windows(now, now + 30 days, count=10)`` for every node, for each node count
  and lease count; milliseconds per call (median), and the part of it spent in the ``held_windows`` query.
* earliest common slot — ``Availability.earliest_slot(2 h, now, nodes=<10 named nodes>)``.

The existing leases are written with bulk inserts (SQLAlchemy Core, 10 000 rows a statement), which is not timed;
PostgreSQL is then ANALYZEd as autovacuum would. Layout: the 30 days are cut into 120 segments of 6 h; each node's
j-th lease lies in segment (7 j + node) mod 120, 1 to 6 grains long at an offset of 0 to 5 grains, so leases never
overlap on a node and the last grain of every segment stays free: the timed bookings take those grains (from the start
of the month on, so each booking's check reads the rest of that node's month). Bookings made while timing are checked
and then deleted, so every table row sees exactly the stated number of leases.

Checks before and after timing: the database holds exactly the leases generated (and node 0's windows are the ones
generated); the free windows of three nodes and the earliest common slot equal a brute-force answer computed from the
generated leases; every timed booking succeeded, is in the database, and overlaps no other held sliver of its node
(SQL); and, once per calendar, no two held slivers of one node overlap anywhere (SQL self-join).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import multiprocessing
import os
import platform
import queue
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.engine import make_url

from sfa_omf.calendar.availability import Availability
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.intervals import DAY_S, Interval
from sfa_omf.calendar.models import Lease, Node, Pool, Slice, Sliver
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.queries import held_windows, to_s
from sfa_omf.calendar.records import BookingRequest

# 08:00 UTC tomorrow (on a grain boundary), not a fixed date: the benchmarks that check credentials do it at this
# clock, and the certificates they make are valid from the moment they are made. The processes a benchmark starts
# (spawned: they import this module again) take the first one's, through the environment.
_NOW_VARIABLE = "SFA_OMF_BENCH_NOW"
NOW = (
    datetime.fromisoformat(os.environ[_NOW_VARIABLE])
    if _NOW_VARIABLE in os.environ
    else datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=1)
)
os.environ[_NOW_VARIABLE] = NOW.isoformat()
NOW_S = to_s(NOW)
GRAIN_S = 1800
HORIZON_DAYS = 30
HORIZON = NOW + timedelta(days=HORIZON_DAYS)
HORIZON_GRAINS = HORIZON_DAYS * DAY_S // GRAIN_S
SEGMENT_GRAINS = 12  # 6 h; leases use grains 0..10 of a segment, bookings grain 11
SEGMENTS = HORIZON_GRAINS // SEGMENT_GRAINS  # 120
STRIDE = 7  # coprime with SEGMENTS: a node's j-th lease (j < SEGMENTS) gets a segment of its own
BOOKED_GRAIN = SEGMENT_GRAINS - 1
POLICY = Policy(max_advance_s=10 * 365 * DAY_S, max_duration_s=7 * DAY_S)
SLICE_EXPIRES = NOW + timedelta(days=400)
FILLER_SLICES = 100
CHUNK = 10_000
FREE_COUNT = 10
SLOT_NODES = 10
SLOT_DURATION_S = 2 * 3600
BENCH_SLICE_PREFIX = "urn:publicid:IDN+testbed+slice+bench-"
WORKER_TIMEOUT_S = 300.0

assert math.gcd(STRIDE, SEGMENTS) == 1


@dataclass(frozen=True)
class BookingRow:
    backend: str
    processes: int
    leases: int
    bookings: int = 0
    elapsed: float = 0.0
    busy: float = 0.0  # sum over processes of their timed seconds
    client_cpu: float = 0.0  # sum over processes of their CPU seconds while timed
    machine_busy: float | None = None  # fraction of all CPUs busy (any process) while timed, from /proc/stat
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.bookings / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.busy / self.bookings if self.bookings else 0.0

    @property
    def client_cpu_ms(self) -> float:
        return 1000.0 * self.client_cpu / self.bookings if self.bookings else 0.0


@dataclass(frozen=True)
class CallRow:
    backend: str
    nodes: int
    leases: int
    calls: int = 0
    median_ms: float = 0.0
    min_ms: float = 0.0
    query_ms: float | None = None  # the held_windows query alone (median)
    detail: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SFA_OMF_BENCH_POSTGRES_URL"),
        help="PostgreSQL URL of a database for the benchmark alone (default: $SFA_OMF_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="time budget per measurement (default 3)")
    parser.add_argument("--min-calls", type=int, default=3, help="minimum calls per latency measurement (default 3)")
    parser.add_argument("--max-calls", type=int, default=1000, help="maximum calls per latency measurement")
    parser.add_argument(
        "--max-bookings", type=int, default=100_000, help="maximum timed bookings per process (default 100000)"
    )
    parser.add_argument(
        "--processes", default="1,2,4", help="booking processes, comma-separated; 1 is always measured (default 1,2,4)"
    )
    parser.add_argument("--nodes", default=None, help="node counts, comma-separated (default 1000,10000)")
    parser.add_argument("--leases", default=None, help="existing-lease counts, comma-separated (default 10000,100000)")
    parser.add_argument("--quick", action="store_true", help="100,1000 nodes, 1000,10000 leases, 1 s (a smoke run)")
    parser.add_argument("--no-sqlite", action="store_true", help="measure PostgreSQL only")
    args = parser.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    args.nodes = _counts(parser, args.nodes or ("100,1000" if args.quick else "1000,10000"), "--nodes")
    args.leases = _counts(parser, args.leases or ("1000,10000" if args.quick else "10000,100000"), "--leases")
    args.processes = sorted({1, *_counts(parser, args.processes, "--processes")})
    if args.seconds <= 0 or args.min_calls < 1 or args.max_calls < args.min_calls:
        parser.error("need --seconds > 0 and 1 <= --min-calls <= --max-calls")
    if args.max_bookings < 1:
        parser.error("need --max-bookings >= 1")
    for nodes in args.nodes:
        if -(-max(args.leases) // nodes) > SEGMENTS:
            parser.error(f"{max(args.leases)} leases on {nodes} nodes: at most {SEGMENTS} leases per node fit")
    return args


def _counts(parser: argparse.ArgumentParser, value: str, option: str) -> list[int]:
    try:
        counts = sorted({int(part.replace("_", "")) for part in value.split(",") if part.strip()})
    except ValueError:
        parser.error(f"{option} takes comma-separated integers, not {value!r}")
    if not counts or counts[0] < 1:
        parser.error(f"{option} needs positive counts")
    return counts


# -- the layout of the existing leases -----------------------------------------------------------------------------
def node_name(index: int) -> str:
    return f"urn:publicid:IDN+testbed+node+bench{index:05d}"


def lease_window(node: int, j: int) -> Interval:
    """Node ``node``'s j-th lease: in segment (STRIDE j + node) mod SEGMENTS, 1-6 grains at an offset of 0-5."""
    mixed = ((node + 1) * 2_654_435_761 + (j + 1) * 2_246_822_519) % 2**32
    mixed ^= mixed >> 13
    offset, length = mixed % 6, 1 + (mixed // 6) % 6
    segment = (j * STRIDE + node) % SEGMENTS
    start = NOW_S + (segment * SEGMENT_GRAINS + offset) * GRAIN_S
    return start, start + length * GRAIN_S


def node_windows(node: int, nodes: int, leases: int) -> list[Interval]:
    """The windows held on one node when ``leases`` leases are dealt round-robin over ``nodes`` nodes."""
    count = leases // nodes + (1 if node < leases % nodes else 0)
    return sorted(lease_window(node, j) for j in range(count))


def booking_window(segment: int) -> tuple[datetime, datetime]:
    start = NOW + timedelta(seconds=(segment * SEGMENT_GRAINS + BOOKED_GRAIN) * GRAIN_S)
    return start, start + timedelta(seconds=GRAIN_S)


# -- calendars ------------------------------------------------------------------------------------------------------
class Calendar:
    """One fresh calendar database with ``nodes`` nodes; ``fill`` brings it to a number of leases."""

    def __init__(self, backend: str, url: str, nodes: int) -> None:
        self.backend = backend
        self.url = url
        self.nodes = nodes
        self.leases = 0
        self.database = Database(url)
        if backend == "postgresql":
            with self.database.engine.begin() as connection:
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
        self.database.upgrade()
        started = time.perf_counter()
        with self.database.engine.begin() as connection:
            connection.execute(insert(Pool), [{"name": "bench", "federated": True, "description": ""}])
            pool_id = connection.scalar(select(Pool.id).where(Pool.name == "bench"))
            for first in range(0, nodes, CHUNK):
                connection.execute(
                    insert(Node),
                    [
                        {
                            "component_id": node_name(index),
                            "component_name": f"bench{index:05d}",
                            "hardware_type": "bench",
                            "exclusive": True,
                            "properties": {},
                            "disk_images": [],
                            "grain_s": GRAIN_S,
                            "state": "usable",
                            "pool_id": pool_id,
                        }
                        for index in range(first, min(first + CHUNK, nodes))
                    ],
                )
            connection.execute(
                insert(Slice),
                [
                    {
                        "urn": f"urn:publicid:IDN+testbed+slice+filler{n}",
                        "expires_s": to_s(SLICE_EXPIRES),
                        "shut_down": False,
                    }
                    for n in range(FILLER_SLICES)
                ],
            )
            ids = dict(connection.execute(select(Node.component_id, Node.id)).all())
            self.node_ids = [ids[node_name(index)] for index in range(nodes)]
            self.slice_ids = sorted(connection.scalars(select(Slice.id)).all())
        self._analyze()
        print(f"  {backend}: fresh calendar with {nodes:,} nodes ({time.perf_counter() - started:.1f} s)", flush=True)

    def fill(self, leases: int) -> None:
        """Bulk-insert leases (one node each, provisioned) until the calendar holds ``leases`` (untimed setup)."""
        started = time.perf_counter()
        for first in range(self.leases, leases, CHUNK):
            lease_rows: list[dict[str, Any]] = []
            sliver_rows: list[dict[str, Any]] = []
            for k in range(first, min(first + CHUNK, leases)):
                node, j = k % self.nodes, k // self.nodes
                start, end = lease_window(node, j)
                lease_id = str(uuid.UUID(int=k + 1))
                lease_rows.append(
                    {
                        "id": lease_id,
                        "slice_id": self.slice_ids[k % len(self.slice_ids)],
                        "owner_urn": "",
                        "start_s": start,
                        "end_s": end,
                        "state": "provisioned",
                    }
                )
                sliver_rows.append(
                    {
                        "urn": f"urn:publicid:IDN+testbed+sliver+filler{k}",
                        "lease_id": lease_id,
                        "node_id": self.node_ids[node],
                        "start_s": start,
                        "end_s": end,
                        "holds_node": True,
                        "allocation_state": "geni_provisioned",
                        "operational_state": "geni_ready",
                        "expires_s": end,
                    }
                )
            with self.database.engine.begin() as connection:
                connection.execute(insert(Lease), lease_rows)
                connection.execute(insert(Sliver), sliver_rows)
        added = leases - self.leases
        self.leases = leases
        self._analyze()
        elapsed = time.perf_counter() - started
        print(
            f"  {self.backend}: {self.nodes:,} nodes, bulk-inserted {added:,} leases -> {leases:,} "
            f"({elapsed:.1f} s, untimed)",
            flush=True,
        )

    def _analyze(self) -> None:
        if self.backend == "postgresql":
            with self.database.engine.begin() as connection:
                connection.execute(text("ANALYZE"))

    def check_contents(self) -> None:
        """The database holds exactly the generated leases; node 0's windows are the generated ones."""
        with self.database.read() as session:
            held = session.scalar(select(func.count()).select_from(Sliver).where(Sliver.holds_node.is_(True)))
            rows = session.execute(
                text("SELECT start_s, end_s FROM sliver WHERE node_id = :node ORDER BY start_s"),
                {"node": self.node_ids[0]},
            ).all()
        if held != self.leases:
            raise SystemExit(f"{self.backend}: {held} held slivers in the database, {self.leases} were inserted")
        if [tuple(row) for row in rows] != node_windows(0, self.nodes, self.leases):
            raise SystemExit(f"{self.backend}: node 0's slivers are not the generated ones")

    def dispose(self) -> None:
        self.database.dispose()


def check_database_url(url: str) -> None:
    """Refuse to wipe a database that has tables unless its name says it is for benchmarks."""
    name = make_url(url).database or ""
    if "bench" in name:
        return
    database = Database(url)
    try:
        tables = inspect(database.engine).get_table_names(schema="public")
    finally:
        database.dispose()
    if tables:
        raise SystemExit(
            f"database {name!r} holds tables ({', '.join(sorted(tables)[:5])}) and its name lacks 'bench': the "
            "benchmark drops its public schema. Use one of its own: bash scripts/postgres.sh sfaomf_bench"
        )


# -- bookings per second --------------------------------------------------------------------------------------------
def book_worker(
    url: str,
    worker: int,
    processes: int,
    nodes: int,
    tag: str,
    seconds: float,
    max_bookings: int,
    barrier: Any,
    results: Any,
) -> None:
    """One booking process: its own engine and slice; books the booked grain of its nodes, segment after segment."""
    database = Database(url)
    try:
        bookings = Bookings(database, POLICY, "testbed", clock=lambda: NOW)
        slice_urn = f"{BENCH_SLICE_PREFIX}{tag}-w{worker}"
        slots: Iterator[tuple[int, int]] = (
            (node, segment) for segment in range(SEGMENTS) for node in range(worker, nodes, processes)
        )

        def book_next() -> bool:
            slot = next(slots, None)
            if slot is None:
                return False
            start, end = booking_window(slot[1])
            result = bookings.book(slice_urn, SLICE_EXPIRES, [BookingRequest(node_name(slot[0]), start, end)])
            if len(result.leases) != 1 or result.refused:
                raise RuntimeError(f"booking {slot} did not book exactly one lease: {result}")
            return True

        book_next()  # warm-up: connection, slice row, code paths; not timed
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        count, exhausted = 0, False
        cpu_started, machine_started = time.process_time(), cpu_times()
        started = now = time.monotonic()
        deadline = started + seconds
        while count < max_bookings and now < deadline:
            if not book_next():
                exhausted = True
                break
            count += 1
            now = time.monotonic()
        cpu = time.process_time() - cpu_started
        machine = machine_busy(machine_started, cpu_times())
        results.put((worker, "", count, started, now, exhausted, cpu, machine))
    except BaseException as exc:  # reported by the parent: a worker must not fail silently
        barrier.abort()
        results.put((worker, f"{type(exc).__name__}: {exc}", 0, 0.0, 0.0, False, 0.0, None))
    finally:
        database.dispose()


def measure_bookings(calendar: Calendar, processes: int, seconds: float, max_bookings: int) -> BookingRow:
    tag = f"{calendar.backend}-{calendar.leases}-{processes}p"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=book_worker,
            args=(calendar.url, w, processes, calendar.nodes, tag, seconds, max_bookings, barrier, results),
        )
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = []
    try:
        for _ in workers:
            outcomes.append(results.get(timeout=WORKER_TIMEOUT_S + seconds))
    except queue.Empty:
        raise SystemExit(f"{tag}: a booking process did not report within {WORKER_TIMEOUT_S + seconds:.0f} s") from None
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
    errors = [f"process {w}: {error}" for w, error, *_ in outcomes if error]
    if errors:
        raise SystemExit(f"{tag}: booking failed: {'; '.join(errors)}")
    timed = sum(outcome[2] for outcome in outcomes)
    elapsed = max(outcome[4] for outcome in outcomes) - min(outcome[3] for outcome in outcomes)
    busy = sum(outcome[4] - outcome[3] for outcome in outcomes)
    client_cpu = sum(outcome[6] for outcome in outcomes)
    machine = [outcome[7] for outcome in outcomes if outcome[7] is not None]
    check_bookings(calendar, timed + processes)  # + one warm-up booking per process
    note = "ran out of free slots before the time was up" if any(outcome[5] for outcome in outcomes) else ""
    return BookingRow(
        calendar.backend,
        processes,
        calendar.leases,
        timed,
        elapsed,
        busy,
        client_cpu,
        statistics.fmean(machine) if machine else None,
        note,
    )


def cpu_times() -> tuple[int, int] | None:
    """(all, idle) jiffies of all CPUs since boot, from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user and nice]
    return sum(fields[:8]), fields[3] + fields[4]


def machine_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[0] <= before[0]:
        return None
    return 1.0 - (after[1] - before[1]) / (after[0] - before[0])


BENCH_SLIVERS = (
    "SELECT sliver.id FROM sliver JOIN lease ON lease.id = sliver.lease_id JOIN slice ON slice.id = lease.slice_id "
    "WHERE slice.urn LIKE :prefix"
)


def check_bookings(calendar: Calendar, expected: int) -> None:
    """Every booking is in the database and overlaps no other held sliver of its node; then delete them."""
    prefix = {"prefix": BENCH_SLICE_PREFIX + "%", "held": True}
    with calendar.database.write() as session:
        booked = session.scalar(
            text(f"SELECT count(*) FROM ({BENCH_SLIVERS} AND sliver.holds_node = :held) AS b"), prefix
        )
        clashes = session.scalar(
            text(
                "SELECT count(*) FROM sliver a JOIN sliver b ON b.node_id = a.node_id AND b.id <> a.id "
                "AND b.holds_node = :held AND b.start_s < a.end_s AND a.start_s < b.end_s "
                f"WHERE a.holds_node = :held AND a.id IN ({BENCH_SLIVERS})"
            ),
            prefix,
        )
        if booked != expected or clashes:
            raise SystemExit(
                f"{calendar.backend}: {booked} bookings in the database ({expected} made), {clashes} overlaps"
            )
        session.execute(text(f"DELETE FROM sliver WHERE id IN ({BENCH_SLIVERS})"), prefix)
        bench_slices = "SELECT id FROM slice WHERE urn LIKE :prefix"
        session.execute(text(f"DELETE FROM lease WHERE slice_id IN ({bench_slices})"), prefix)
        session.execute(text("DELETE FROM slice WHERE urn LIKE :prefix"), prefix)


def check_no_overlap_anywhere(calendar: Calendar) -> float:
    """The SQL self-join: no two held slivers of one node overlap. Returns its duration in seconds."""
    started = time.perf_counter()
    with calendar.database.read() as session:
        clashes = session.scalar(
            text(
                "SELECT count(*) FROM sliver a JOIN sliver b ON b.node_id = a.node_id AND b.id > a.id "
                "AND b.start_s < a.end_s AND a.start_s < b.end_s WHERE a.holds_node = :held AND b.holds_node = :held"
            ),
            {"held": True},
        )
    if clashes:
        raise SystemExit(f"{calendar.backend}: {clashes} pairs of held slivers overlap")
    return time.perf_counter() - started


# -- latency of the availability queries ----------------------------------------------------------------------------
def time_calls(run: Callable[[], object], seconds: float, min_calls: int, max_calls: int) -> list[float]:
    """One untimed warm-up call, then calls until the budget is spent and min_calls are done; milliseconds each."""
    run()
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(durations) < max_calls and (len(durations) < min_calls or time.perf_counter() < deadline):
        started = time.perf_counter()
        run()
        durations.append(1000.0 * (time.perf_counter() - started))
    return durations


def brute_free_windows(busy: list[Interval], count: int) -> list[Interval]:
    """Maximal runs of free grains in [NOW, HORIZON), the first ``count`` of them, from a grain-by-grain look."""
    taken = {grain for start, end in busy for grain in range((start - NOW_S) // GRAIN_S, (end - NOW_S) // GRAIN_S)}
    windows: list[Interval] = []
    run_start: int | None = None
    for grain in range(HORIZON_GRAINS + 1):
        free = grain < HORIZON_GRAINS and grain not in taken
        if free and run_start is None:
            run_start = grain
        elif not free and run_start is not None:
            windows.append((NOW_S + run_start * GRAIN_S, NOW_S + grain * GRAIN_S))
            run_start = None
    return windows[:count]


def brute_earliest_slot(busy_by_node: list[list[Interval]], duration_s: int) -> int:
    """The earliest grain-aligned start >= NOW at which every node is free for duration_s."""
    grains = duration_s // GRAIN_S
    taken = set()
    for busy in busy_by_node:
        taken |= {grain for start, end in busy for grain in range((start - NOW_S) // GRAIN_S, (end - NOW_S) // GRAIN_S)}
    grain = 0
    while any(g in taken for g in range(grain, grain + grains)):
        grain += 1
    return NOW_S + grain * GRAIN_S


def measure_free_windows(calendar: Calendar, args: argparse.Namespace) -> CallRow:
    availability = Availability(calendar.database)
    answer = availability.free_windows(NOW, HORIZON, count=FREE_COUNT)
    if len(answer) != calendar.nodes:
        raise SystemExit(f"{calendar.backend}: free windows for {len(answer)} nodes, {calendar.nodes} exist")
    for node in (0, calendar.nodes // 2, calendar.nodes - 1):
        got = [(to_s(w.start), to_s(w.end)) for w in answer[node_name(node)]]
        expected = brute_free_windows(node_windows(node, calendar.nodes, calendar.leases), FREE_COUNT)
        if got != expected:
            raise SystemExit(f"{calendar.backend}: free windows of node {node} are {got}, expected {expected}")
    windows = sum(len(found) for found in answer.values())

    def call() -> None:
        availability.free_windows(NOW, HORIZON, count=FREE_COUNT)

    def query() -> None:
        with calendar.database.read() as session:
            held_windows(session, NOW_S, to_s(HORIZON))

    durations = time_calls(call, args.seconds, args.min_calls, args.max_calls)
    query_durations = time_calls(query, args.seconds / 2, args.min_calls, args.max_calls)
    return CallRow(
        calendar.backend,
        calendar.nodes,
        calendar.leases,
        len(durations),
        statistics.median(durations),
        min(durations),
        statistics.median(query_durations),
        f"{windows:,} windows",
    )


def measure_earliest_slot(calendar: Calendar, args: argparse.Namespace) -> CallRow:
    chosen = [index * calendar.nodes // SLOT_NODES for index in range(SLOT_NODES)]
    names = [node_name(index) for index in chosen]
    availability = Availability(calendar.database)
    slot = availability.earliest_slot(SLOT_DURATION_S, NOW, nodes=names)
    expected = brute_earliest_slot([node_windows(i, calendar.nodes, calendar.leases) for i in chosen], SLOT_DURATION_S)
    if (to_s(slot.start), to_s(slot.end), set(slot.nodes)) != (expected, expected + SLOT_DURATION_S, set(names)):
        raise SystemExit(f"{calendar.backend}: earliest slot {slot}, expected one starting at {expected}")

    def call() -> None:
        availability.earliest_slot(SLOT_DURATION_S, NOW, nodes=names)

    durations = time_calls(call, args.seconds, args.min_calls, args.max_calls)
    held = sum(len(node_windows(i, calendar.nodes, calendar.leases)) for i in chosen)
    return CallRow(
        calendar.backend,
        calendar.nodes,
        calendar.leases,
        len(durations),
        statistics.median(durations),
        min(durations),
        None,
        f"NOW+{(to_s(slot.start) - NOW_S) / 3600:g} h ({held} leases read)",
    )


# -- running it all -------------------------------------------------------------------------------------------------
def run_backend(
    backend: str, url_for: Callable[[int], str], args: argparse.Namespace
) -> tuple[list[BookingRow], list[CallRow], list[CallRow]]:
    """Every measurement on one backend: a fresh calendar per node count, filled stage by stage."""
    bookings: list[BookingRow] = []
    free: list[CallRow] = []
    slots: list[CallRow] = []
    for nodes in args.nodes:
        calendar = Calendar(backend, url_for(nodes), nodes)
        try:
            with_bookings = nodes == args.nodes[0]
            if with_bookings:
                bookings += measure_all_bookings(calendar, args)
            for leases in args.leases:
                calendar.fill(leases)
                calendar.check_contents()
                free.append(measure_free_windows(calendar, args))
                print(f"    free windows: {_call_line(free[-1])}", flush=True)
                slots.append(measure_earliest_slot(calendar, args))
                print(f"    earliest slot: {_call_line(slots[-1])}", flush=True)
                if with_bookings:
                    bookings += measure_all_bookings(calendar, args)
            took = check_no_overlap_anywhere(calendar)
            print(f"    no two held slivers of a node overlap (SQL self-join, {took:.1f} s)", flush=True)
        finally:
            calendar.dispose()
    return bookings, free, slots


def measure_all_bookings(calendar: Calendar, args: argparse.Namespace) -> list[BookingRow]:
    rows = []
    for processes in args.processes:
        row = measure_bookings(calendar, processes, args.seconds, args.max_bookings)
        print(
            f"    bookings: {row.processes} process(es), {row.leases:,} leases: {row.bookings:,} in "
            f"{row.elapsed:.1f} s, {row.per_second:,.1f}/s (checked, then deleted)",
            flush=True,
        )
        rows.append(row)
    return rows


def _call_line(row: CallRow) -> str:
    return f"{row.nodes:,} nodes, {row.leases:,} leases: {row.median_ms:,.1f} ms median over {row.calls} calls"


def postgres_version(url: str) -> str:
    database = Database(url)
    try:
        with database.engine.connect() as connection:
            return str(connection.scalar(text("SHOW server_version")))
    except Exception as exc:
        raise SystemExit(f"cannot reach PostgreSQL at {make_url(url).render_as_string()}: {exc}") from exc
    finally:
        database.dispose()


def print_facts(args: argparse.Namespace, pg_version: str | None) -> None:
    print("Reservation calendar benchmark (sfa-omf)")
    print(f"  python        {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
    print(f"  cpu count     {os.cpu_count()}")
    print(f"  sqlite        {sqlite3.sqlite_version} (WAL, BEGIN IMMEDIATE for writes)")
    print(f"  postgresql    {pg_version or 'not measured: no --postgres-url'}")
    print(
        f"  libraries     SQLAlchemy {importlib.metadata.version('sqlalchemy')}, "
        f"psycopg {importlib.metadata.version('psycopg')}"
    )
    print(f"  budget        {args.seconds:g} s per measurement; >= {args.min_calls} calls per latency figure")
    print(f"  processes     {', '.join(str(p) for p in args.processes)} (spawned; each its own engine and slice)")
    print(
        f"  calendar      nodes {', '.join(f'{n:,}' for n in args.nodes)}; existing leases "
        f"{', '.join(f'{n:,}' for n in args.leases)}, one node each,"
    )
    print(f"                1-6 grains of {GRAIN_S} s over {HORIZON_DAYS} days, bulk-inserted (untimed);")
    print("                PostgreSQL ANALYZEd after each bulk insert")
    print()


def print_bookings(rows: list[BookingRow], measured: set[str], args: argparse.Namespace) -> None:
    print(f"Bookings per second (one node, one {GRAIN_S} s grain each; {args.nodes[0]:,} nodes; {args.seconds:g} s)")
    header = (
        f"{'backend':<11} {'processes':>9} {'leases held':>11} {'bookings':>9} {'bookings/s':>10} "
        f"{'vs 1 proc':>9} {'ms/booking':>10} {'client cpu ms':>13} {'cpus busy':>9}"
    )
    print(header)
    print("-" * len(header))
    single = {(row.backend, row.leases): row.per_second for row in rows if row.processes == 1}
    for backend in ("sqlite", "postgresql"):
        if backend not in measured:
            print(f"{backend:<11} not measured: {'no --postgres-url' if backend == 'postgresql' else '--no-sqlite'}")
            continue
        for row in (row for row in rows if row.backend == backend):
            base = single.get((row.backend, row.leases))
            ratio = f"{row.per_second / base:.2f}x" if base else "n/a"
            machine = f"{100 * row.machine_busy:.0f} %" if row.machine_busy is not None else "n/a"
            print(
                f"{row.backend:<11} {row.processes:>9} {row.leases:>11,} {row.bookings:>9,} {row.per_second:>10,.1f} "
                f"{ratio:>9} {row.latency_ms:>10.2f} {row.client_cpu_ms:>13.2f} {machine:>9}"
                + (f"  ({row.note})" if row.note else "")
            )
    print(
        "vs 1 proc = bookings/s over the 1-process row's; ms/booking = mean time one process waits for one booking;"
        "\nclient cpu ms = CPU the booking processes spend per booking (Python, SQLAlchemy, driver);"
        f"\ncpus busy = share of all {os.cpu_count()} CPUs busy while timed (clients, database server, anything else)."
    )


def print_calls(title: str, rows: list[CallRow], measured: set[str], with_query: bool) -> None:
    print(title)
    query = f" {'query ms':>9}" if with_query else ""
    header = f"{'backend':<11} {'nodes':>7} {'leases':>8} {'calls':>6} {'median ms':>10} {'min ms':>9}{query}  answer"
    print(header)
    print("-" * (len(header) + 22))
    for backend in ("sqlite", "postgresql"):
        if backend not in measured:
            print(f"{backend:<11} not measured: {'no --postgres-url' if backend == 'postgresql' else '--no-sqlite'}")
            continue
        for row in (row for row in rows if row.backend == backend):
            query = f" {row.query_ms:>9.1f}" if with_query and row.query_ms is not None else ""
            print(
                f"{row.backend:<11} {row.nodes:>7,} {row.leases:>8,} {row.calls:>6} {row.median_ms:>10.1f} "
                f"{row.min_ms:>9.1f}{query}  {row.detail}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg_version = None
    if args.postgres_url:
        check_database_url(args.postgres_url)
        pg_version = postgres_version(args.postgres_url)
    print_facts(args, pg_version)
    booking_rows: list[BookingRow] = []
    free_rows: list[CallRow] = []
    slot_rows: list[CallRow] = []
    measured: set[str] = set()
    started = time.perf_counter()
    print("Setup (untimed), checks and progress:")
    with tempfile.TemporaryDirectory(prefix="sfa-omf-calendar-bench-") as workdir:
        backends: list[tuple[str, Callable[[int], str]]] = []
        if not args.no_sqlite:
            backends.append(("sqlite", lambda nodes: sqlite_url(os.path.join(workdir, f"calendar-{nodes}.sqlite"))))
        if args.postgres_url:
            postgres_url: str = args.postgres_url
            backends.append(("postgresql", lambda _nodes: postgres_url))
        for backend, url_for in backends:
            measured.add(backend)
            rows = run_backend(backend, url_for, args)
            booking_rows += rows[0]
            free_rows += rows[1]
            slot_rows += rows[2]
    print(f"  (whole run {time.perf_counter() - started:.0f} s)")
    print()
    print_bookings(booking_rows, measured, args)
    print()
    print_calls(
        f"Next {FREE_COUNT} free windows of every node in {HORIZON_DAYS} days "
        f"(Availability.free_windows; query ms = the held_windows query alone)",
        free_rows,
        measured,
        True,
    )
    print()
    print_calls(
        f"Earliest common {SLOT_DURATION_S // 3600} h slot of {SLOT_NODES} named nodes (Availability.earliest_slot)",
        slot_rows,
        measured,
        False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
