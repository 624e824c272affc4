"""ListResources in-process: the advertiser (one snapshot read + writing, cached per calendar generation) against the
straightforward way it was written before (the calendar's services with ORM reads) and against the floor.

Run from the repository root, with the project's virtualenv:

    python benchmarks/list_resources_bench.py                       # SQLite; 1 000 x 10 000 and 10 000 x 100 000
    python benchmarks/list_resources_bench.py --postgres-url URL    # also PostgreSQL (the database is wiped)
    python benchmarks/list_resources_bench.py --quick               # 100 x 1 000 and 1 000 x 10 000

Calendars are those of benchmarks/calendar_bench.py (nodes and provisioned one-node leases bulk-inserted, untimed,
over the 30 days after 2026-12-01 08:00 UTC); the aggregate advertises them at "now" = 08:01 with the default
settings (14-day horizon, 10 free windows a node), GENI view. What each row times, per call:

- reference: ``Aggregate.list_resources_reference`` — inventory, free windows, leases through the calendar services
  (ORM objects, datetimes), then the same writer. What ListResources cost before the advertiser.
- snapshot: ``read_snapshot`` alone — the two column queries into plain records.
- uncached: what a cache miss costs — a new ``Advertiser``'s ``document`` (snapshot read, free windows, writing,
  the template split).
- uncached, gc on: the same snapshot read and writing without pausing the garbage collector (the advertiser
  pauses it during a build: am/advertiser.py says why).
- floor: ``write_advertisement`` of the already built plain ``Advertisement`` (lxml elements from plain data and
  serialization) plus the decode to text: the work no read path can avoid. The writer builds and serializes the
  root's children in small trees (rspec/advertisement.py, ``_ChunkedRoot``), as the server does.
- floor, one tree: the same document built as one lxml tree and serialized at once (the floor before chunking).
- cached: ``Advertiser.document`` for a later second of the same calendar generation (a generation read, a join).
- compress per call: what geni_compressed cost before — ``zlib.compress`` and base64 of the whole document.
- cached, compressed: ``Advertiser.document(..., compressed=True)`` for a later second: the parts deflated once
  per cached document, joined with the deflated stamps into one zlib stream, base64.

Before timing, the script checks that the advertiser's document equals the reference's byte for byte, that it shows
every node and every lease, and that a cached answer equals a fresh one for its second.
"""

from __future__ import annotations

import argparse
import base64
import gc
import platform
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from calendar_bench import NOW, Calendar, check_database_url  # benchmarks/ is sys.path[0] when run as a script

from rspec.advertisement import write_advertisement
from rspec.model import LeaseView
from sfa_omf.am.advertiser import Advertiser
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import sqlite_url
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.snapshot import read_snapshot
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier

AT = NOW + timedelta(minutes=1)  # not on a grain boundary: the cached document stays valid until 08:30


@dataclass
class Row:
    backend: str
    nodes: int
    leases: int
    kilobytes: int
    seconds: dict[str, float]  # method -> median seconds per call
    calls: dict[str, int]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", help="also measure PostgreSQL (its public schema is dropped)")
    parser.add_argument("--quick", action="store_true", help="100 x 1 000 and 1 000 x 10 000")
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per measurement")
    parser.add_argument("--min-calls", type=int, default=3, help="calls per measurement at least")
    return parser.parse_args(argv)


def timed(run: Callable[[], object], seconds: float, min_calls: int, max_calls: int = 10_000) -> list[float]:
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - started < seconds):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return times


def measure(backend: str, url: str, nodes: int, leases: int, args: argparse.Namespace, roots: Path) -> Row:
    calendar = Calendar(backend, url, nodes)
    try:
        calendar.fill(leases)
        database = calendar.database
        aggregate = Aggregate(
            AggregateSettings(authority_hrn="testbed"),
            database,
            CredentialVerifier(load_trusted_roots(str(roots))),
            clock=lambda: AT,
        )

        def fresh_advertiser() -> Advertiser:
            return Advertiser(database, aggregate.settings.horizon, 10, 1800, aggregate._advertised_nodes)

        # Checks: same bytes as the reference, every node and lease shown, the cache answers what a build would.
        reference = aggregate.list_resources_reference(AT, {})
        advertiser = fresh_advertiser()
        document = advertiser.document(AT, LeaseView.GENI, False)
        if document != reference:
            raise SystemExit(f"{backend} {nodes}: the advertiser's document differs from the reference")
        if document.count("<node ") != nodes or document.count("<ol:lease ") != leases:
            raise SystemExit(f"{backend} {nodes}: the document does not show every node and lease")
        later = AT + timedelta(seconds=7)
        fresh = fresh_advertiser().build(read_snapshot(database, to_s(later)), later, LeaseView.GENI, False)
        if advertiser.document(later, LeaseView.GENI, False) != fresh or advertiser.builds != 1:
            raise SystemExit(f"{backend} {nodes}: the cached document is not the one a build writes")
        ad = advertiser.advertisement(read_snapshot(database, to_s(AT)), AT, False)
        ad_text = write_advertisement(ad, LeaseView.GENI).decode("utf-8")
        packed = advertiser.document(later, LeaseView.GENI, False, compressed=True)
        if zlib.decompress(base64.b64decode(packed)).decode("utf-8") != advertiser.document(
            later, LeaseView.GENI, False
        ):
            raise SystemExit(f"{backend} {nodes}: the compressed answer does not decompress to the document")
        del reference, document, fresh
        print(f"  {backend} {nodes:,} nodes x {leases:,} leases: checks passed", flush=True)

        moments = iter(AT + timedelta(seconds=1 + k % 1500) for k in range(10**9))
        methods: dict[str, Callable[[], object]] = {
            "reference": lambda: aggregate.list_resources_reference(AT, {}),
            "snapshot": lambda: read_snapshot(database, to_s(AT)),
            "uncached": lambda: fresh_advertiser().document(AT, LeaseView.GENI, False),
            "uncached, gc on": lambda: advertiser.build(read_snapshot(database, to_s(AT)), AT, LeaseView.GENI, False),
            "floor": lambda: write_advertisement(ad, LeaseView.GENI).decode("utf-8"),
            "floor, one tree": lambda: write_advertisement(ad, LeaseView.GENI, chunk_elements=10**9).decode("utf-8"),
            "cached": lambda: advertiser.document(next(moments), LeaseView.GENI, False),
            "compress per call": lambda: base64.b64encode(zlib.compress(ad_text.encode("utf-8"))),
            "cached, compressed": lambda: advertiser.document(next(moments), LeaseView.GENI, False, compressed=True),
        }
        seconds: dict[str, float] = {}
        calls: dict[str, int] = {}
        for name, run in methods.items():
            gc.collect()
            times = timed(run, args.seconds, args.min_calls)
            seconds[name] = statistics.median(times)
            calls[name] = len(times)
            print(f"    {name:<16} {len(times):>6} calls, median {seconds[name] * 1000:10.2f} ms", flush=True)
        with database.read() as session:
            if read_generation(session) != advertiser._cache[(LeaseView.GENI, False)].generation:
                raise SystemExit("the calendar changed during the measurement")
        return Row(backend, nodes, leases, len(write_advertisement(ad).decode()) // 1024, seconds, calls)
    finally:
        calendar.dispose()


def print_table(rows: list[Row]) -> None:
    print()
    print("ListResources in-process, GENI view, median per call (s; cached in ms)")
    header = (
        f"{'backend':<11}{'nodes':>7}{'leases':>9}{'KB':>8}{'reference':>11}{'snapshot':>10}{'uncached':>10}"
        f"{'gc on':>8}{'floor':>8}{'1 tree':>8}{'unc/floor':>10}{'ref/floor':>10}{'cached ms':>11}{'ref/cached':>12}"
        f"{'zlib ms':>9}{'cached zlib ms':>16}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        s = row.seconds
        print(
            f"{row.backend:<11}{row.nodes:>7,}{row.leases:>9,}{row.kilobytes:>8,}{s['reference']:>11.3f}"
            f"{s['snapshot']:>10.3f}{s['uncached']:>10.3f}{s['uncached, gc on']:>8.3f}{s['floor']:>8.3f}"
            f"{s['floor, one tree']:>8.3f}{s['uncached'] / s['floor']:>9.2f}x"
            f"{s['reference'] / s['floor']:>9.2f}x{s['cached'] * 1000:>11.2f}{s['reference'] / s['cached']:>11,.0f}x"
            f"{s['compress per call'] * 1000:>9.1f}{s['cached, compressed'] * 1000:>16.2f}"
        )
    print()
    print("Growth from the smaller to the larger calendar (10x the nodes and the leases): cost ratio (<= 10.5 wanted)")
    for backend in sorted({row.backend for row in rows}):
        small, large = sorted((r for r in rows if r.backend == backend), key=lambda r: r.nodes)[:2]
        ratios = "  ".join(f"{name} {large.seconds[name] / small.seconds[name]:.1f}" for name in large.seconds)
        print(f"  {backend:<11} {ratios}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [(100, 1_000), (1_000, 10_000)] if args.quick else [(1_000, 10_000), (10_000, 100_000)]
    print("ListResources benchmark (sfa-omf, in-process)")
    print(f"  python        {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
    print(f"  calendars     {', '.join(f'{n:,} nodes x {m:,} leases' for n, m in sizes)}; now = {AT:%Y-%m-%d %H:%M}Z")
    print(f"  budget        {args.seconds} s and >= {args.min_calls} calls per measurement")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as tmp:
        roots = Path(tmp) / "roots"
        roots.mkdir()
        backends = [("sqlite", "")]
        if args.postgres_url:
            check_database_url(args.postgres_url)
            backends.append(("postgresql", args.postgres_url))
        for backend, url in backends:
            for nodes, leases in sizes:
                where = url or sqlite_url(str(Path(tmp) / f"lr-{nodes}.sqlite"))
                rows.append(measure(backend, where, nodes, leases, args, roots))
    print_table(rows)
    print(
        "reference: the calendar services + writer (before); snapshot: read_snapshot alone;\n"
        "uncached: a cache miss (snapshot + free windows + writer); gc on: the same without pausing the collector;\n"
        "floor: write_advertisement of the built plain Advertisement + decode (1 tree: unchunked); "
        "cached: a later second at the same calendar generation;\n"
        "zlib: geni_compressed as before (zlib.compress + base64 of the document); cached zlib: from deflated parts."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
