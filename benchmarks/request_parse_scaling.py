"""How reading an Allocate request scales with its node count: 1k, 10k and 20k nodes by default.

Run from the repository root, with the project's virtualenv:

    python benchmarks/request_parse_scaling.py                    # about a minute on today's code
    python benchmarks/request_parse_scaling.py --counts 1000,5000 --repeat 3

Two measurements per node count N, each the best of ``--repeat`` runs:

1. parse — ``rspec.parse_request`` of a OneLab request RSpec holding one ``ol:lease`` and N nodes (each with a
   component_id and an ``ol:lease_ref``), as sfi.py sends it;
2. allocate — ``Aggregate.allocate`` of the same request, in-process, for alice's demo slice (credential checked),
   against a SQLite calendar holding N nodes: reading the request, resolving each node, booking the N slivers in one
   unit of work and writing the answer. Its bookings are cancelled before the next run.

Every run is checked: N nodes read; N slivers allocated. Times are wall-clock (time.perf_counter). The table gives the
ratios between consecutive counts: linear work makes the ratio 10k/1k about 10 and 20k/10k about 2 (quadratic:
100 and 4). The operator's per-request node limit, where the policy has one, is raised to the largest count for
the allocate measurement (a field of ``Policy`` whose name says nodes, set to that count).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from datetime import timedelta

from sqlalchemy import insert, select

from rspec.document import RSpecLimits
from rspec.parse_request import RequestPolicy, parse_request
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Node, Pool
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache

AUTHORITY = "testbed"
SLICE_URN = f"urn:publicid:IDN+{AUTHORITY}+slice+demo"
CHUNK = 5_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--counts", default="1000,10000,20000", help="node counts (default 1000,10000,20000)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement, the best is kept (default 2)")
    args = parser.parse_args(argv)
    try:
        args.counts = sorted(int(part) for part in args.counts.split(",") if part.strip())
    except ValueError:
        parser.error("--counts is a comma-separated list of whole numbers")
    if not args.counts or args.counts[0] < 1 or args.repeat < 1:
        parser.error("need node counts >= 1 and --repeat >= 1")
    return args


def node_urn(index: int) -> str:
    return f"urn:publicid:IDN+{AUTHORITY}+node+b{index:05d}"


def request(count: int, window: tuple[str, str]) -> str:
    nodes = "".join(
        f'<node client_id="n{index}" component_id="{node_urn(index)}" exclusive="true">'
        '<ol:lease_ref id_ref="l"/></node>'
        for index in range(count)
    )
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>{nodes}</rspec>'
    )


def add_nodes(database: Database, first: int, last: int) -> None:
    """Nodes first..last-1: the first with Inventory.add_node (it makes the default pool), the rest bulk-inserted."""
    if first == 0:
        Inventory(database).add_node(NodeSpec(node_urn(0), "b00000", hardware_type="bench"))
        first = 1
    with database.engine.begin() as connection:
        pool_id = connection.scalar(select(Pool.id).where(Pool.name == "default"))
        grain_s = connection.scalar(select(Node.grain_s).limit(1))
        for chunk in range(first, last, CHUNK):
            connection.execute(
                insert(Node),
                [
                    {
                        "component_id": node_urn(index),
                        "component_name": f"b{index:05d}",
                        "hardware_type": "bench",
                        "exclusive": True,
                        "properties": {},
                        "disk_images": [],
                        "grain_s": grain_s,
                        "state": "usable",
                        "pool_id": pool_id,
                    }
                    for index in range(chunk, min(chunk + CHUNK, last))
                ],
            )


def policy_allowing(count: int) -> Policy:
    """The default policy, with any per-request node limit it has raised to ``count``."""
    raised = {
        field.name: count
        for field in dataclasses.fields(Policy)
        if "node" in field.name and "int" in str(field.type) and "hour" not in field.name
    }
    return Policy(**raised)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    largest = args.counts[-1]
    limits = RSpecLimits(max_bytes=64 * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="sfa-omf-parse-") as workdir:
        directory = os.path.join(workdir, "authority")
        report = init_directory(directory, AUTHORITY, ("alice",))
        sfi = report.sfi_dirs["alice"]
        alice = load_gid_chain_file(os.path.join(sfi, f"{AUTHORITY}.alice.user.gid"))
        with open(os.path.join(sfi, f"{AUTHORITY}.alice-{AUTHORITY}.demo.slice.cred"), encoding="utf-8") as handle:
            credentials = [handle.read()]
        database = Database(sqlite_url(os.path.join(workdir, "calendar.sqlite")))
        database.upgrade()
        verifier = CredentialVerifier(load_trusted_roots(os.path.join(directory, "trusted_roots")), VerdictCache())
        aggregate = Aggregate(
            AggregateSettings(authority_hrn=AUTHORITY, max_request_bytes=64 * 1024 * 1024),
            database,
            verifier,
            policy_allowing(largest),
        )
        start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        window = (format_time(start), format_time(start + timedelta(hours=1)))

        def cancel_all() -> None:
            for lease in aggregate.bookings.leases(slice_urn=SLICE_URN):
                aggregate.bookings.cancel(lease.id)

        print("Request parsing and Allocate by node count (sfa-omf)")
        print(f"  python   {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
        print(f"  runs     best of {args.repeat} per measurement; SQLite calendar holding as many nodes as requested")
        print()
        rows = []
        have = 0
        for count in args.counts:
            add_nodes(database, have, count)
            have = count
            document = request(count, window)
            parse_times, allocate_times = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                parsed = parse_request(document, now=utcnow(), policy=RequestPolicy(limits=limits))
                parse_times.append(time.perf_counter() - started)
                if len(parsed.nodes) != count:
                    raise SystemExit(f"parse_request read {len(parsed.nodes)} nodes of {count}")
            for _ in range(args.repeat):
                started = time.perf_counter()
                answer = aggregate.allocate(alice, SLICE_URN, credentials, document, {})
                allocate_times.append(time.perf_counter() - started)
                booked = [s for s in answer["geni_slivers"] if s["geni_allocation_status"] == "geni_allocated"]
                if len(booked) != count:
                    raise SystemExit(f"Allocate of {count} nodes allocated {len(booked)} slivers")
                cancel_all()
            parse_s, allocate_s = min(parse_times), min(allocate_times)
            rows.append((count, len(document), parse_s, allocate_s))
            print(f"  ({count:,} nodes measured)", flush=True)
        database.dispose()
    print()
    print(f"{'nodes':>8}{'request KB':>12}{'parse s':>10}{'ratio':>8}{'allocate s':>12}{'ratio':>8}")
    print("-" * 58)
    previous = None
    for count, size, parse_s, allocate_s in rows:
        parse_ratio = f"{parse_s / previous[2]:.1f}" if previous else "-"
        allocate_ratio = f"{allocate_s / previous[3]:.1f}" if previous else "-"
        print(f"{count:>8,}{size / 1024:>12,.0f}{parse_s:>10.3f}{parse_ratio:>8}{allocate_s:>12.3f}{allocate_ratio:>8}")
        previous = (count, size, parse_s, allocate_s)
    print("ratio: this row's time over the previous row's; linear work gives the ratio of the node counts.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
