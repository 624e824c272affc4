"""RSpec costs: reading requests, writing advertisements, against plain lxml parsing of the same bytes.

Run from the repository root, with the project's virtualenv:

    python benchmarks/rspec_parse_emit.py              # 7 runs per measurement, median shown
    python benchmarks/rspec_parse_emit.py --runs 15

Rows:

* request, ol / SFA dialect, N nodes — ``parse_request``: hostile-input checks and parsing (sfa_omf.xmlsafe), the
  RELAX NG schema (schemas/request.rng), the dialect readers and the checks (lease references, duplicates,
  overlaps) that run before anything is booked. Every node has a sliver type and an image; ol requests book them
  in two leases, SFA requests in two <lease> elements.
* advertisement, N nodes — ``write_advertisement`` (GENI view) of N nodes, each with a hardware type, a sliver
  type with two images, a location, 10 bookings (each booking holds a group of 10 nodes, so there are N bookings
  in all, written as ol:lease with an ol:lease_ref on each of its nodes) and 10 free windows (av:free).
* the floor — ``lxml.etree.fromstring`` of the same bytes with the same safe parser options, nothing else: no
  reading, no validation. For requests it is what any reader must pay; for advertisements it is the cost of the
  same XML on the other side of the wire.

Standard library only, apart from sfa-omf itself and lxml.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rspec.advertisement import write_advertisement
from rspec.model import (
    AdvertisedNode,
    Advertisement,
    Booking,
    DiskImage,
    FreeWindow,
    Horizon,
    Location,
    Request,
    RequestLease,
    RequestNode,
    SliverType,
)
from rspec.parse_request import RequestPolicy, parse_request
from rspec.write_request import Dialect, write_request

NOW = datetime(2026, 12, 1, 8, tzinfo=UTC)
GRAIN = timedelta(minutes=30)
CM = "urn:publicid:IDN+omf:testbed+authority+cm"


def node_urn(index: int) -> str:
    return f"urn:publicid:IDN+omf:testbed+node+node{index:05d}"


def request_bytes(nodes: int, dialect: Dialect) -> bytes:
    """A request for ``nodes`` nodes in two leases, written as a client would."""
    request_nodes = tuple(
        RequestNode(
            client_id=f"node{i}",
            component_id=node_urn(i),
            component_manager_id=CM,
            exclusive=True,
            sliver_type="raw-pc",
            disk_image="urn:publicid:IDN+omf:testbed+image+ubuntu-22.04",
        )
        for i in range(nodes)
    )
    half = max(1, nodes // 2)
    everyone = tuple(n.client_id for n in request_nodes)
    leases = (
        RequestLease(NOW + 2 * timedelta(hours=1), 2 * GRAIN, everyone[:half]),
        RequestLease(NOW + 6 * timedelta(hours=1), 4 * GRAIN, everyone[half:] or everyone),
    )
    data, _ = write_request(Request(request_nodes, leases), dialect, GRAIN)
    return data


def advertisement(nodes: int) -> Advertisement:
    """``nodes`` nodes with 10 bookings and 10 free windows each."""
    inventory = tuple(
        AdvertisedNode(
            component_id=node_urn(i),
            component_manager_id=CM,
            component_name=f"node{i:05d}",
            hardware_types=("pc-x86",),
            sliver_types=(
                SliverType(
                    "raw-pc",
                    (
                        DiskImage("urn:publicid:IDN+omf:testbed+image+ubuntu-22.04", os="Linux", version="22.04"),
                        DiskImage("urn:publicid:IDN+omf:testbed+image+debian-12", os="Linux", version="12"),
                    ),
                ),
            ),
            location=Location("FR", 48.71, 2.21),
        )
        for i in range(nodes)
    )
    bookings = []
    windows = {}
    for group in range(0, nodes, 10):
        members = tuple(node_urn(i) for i in range(group, min(group + 10, nodes)))
        for slot in range(10):
            start = NOW + (2 * slot + 1) * timedelta(hours=1)
            bookings.append(Booking(f"lease-{group:05d}-{slot}", start, start + timedelta(hours=1), members))
        free = tuple(
            FreeWindow(NOW + 2 * s * timedelta(hours=1), NOW + (2 * s + 1) * timedelta(hours=1)) for s in range(10)
        )
        windows.update(dict.fromkeys(members, free))
    return Advertisement(inventory, tuple(bookings), NOW, GRAIN, Horizon(NOW, NOW + timedelta(days=2), 10), windows)


def lxml_floor(data: bytes) -> Callable[[], object]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    return lambda: etree.fromstring(data, parser)


def median_ms(work: Callable[[], object], runs: int) -> float:
    work()  # warm up: schemas compiled, caches filled
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median shown; default 7)")
    args = parser.parse_args()
    policy = RequestPolicy(grain=GRAIN)

    rows = []
    for dialect, nodes in ((Dialect.OL, 10), (Dialect.OL, 1000), (Dialect.SFA, 10), (Dialect.SFA, 1000)):
        data = request_bytes(nodes, dialect)
        assert len(parse_request(data, now=NOW, policy=policy).nodes) == nodes

        def read(data: bytes = data) -> object:
            return parse_request(data, now=NOW, policy=policy)

        rows.append((f"parse + validate request, {dialect.value}, {nodes} nodes", data, median_ms(read, args.runs)))
    for nodes in (1000, 10_000):
        ad = advertisement(nodes)
        data = write_advertisement(ad)

        def write(ad: Advertisement = ad) -> object:
            return write_advertisement(ad)

        rows.append((f"write advertisement, {nodes} nodes", data, median_ms(write, args.runs)))

    print(
        f"Python {platform.python_version()}, lxml {etree.__version__}, libxml2 "
        f"{'.'.join(map(str, etree.LIBXML_VERSION))}, {platform.machine()}, {args.runs} runs, median"
    )
    print()
    print("| case | bytes | sfa-omf (ms) | lxml parse of the same bytes (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, data, ours in rows:
        floor = median_ms(lxml_floor(data), args.runs)
        print(f"| {name} | {len(data):,} | {ours:.2f} | {floor:.2f} | {ours / floor:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
