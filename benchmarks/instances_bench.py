"""Containers of a lease: time from the slot's start to "every container of the lease answers SSH", with real LXC,
against the floor measured in the same run (the same containers launched directly, no calendar, all at once).

Needs root and scripts/lxc.sh (LXC, busybox-static, dropbear, the project's bridge). Run from the repository root:

    bash scripts/lxc.sh up                                   # prints the bridge, sfaomf-lxc0 by default
    python benchmarks/instances_bench.py --bridge sfaomf-lxc0           # 1 and 10 containers, 3 rounds each
    python benchmarks/instances_bench.py --bridge sfaomf-lxc0 --network 10.217.0.0/24 --sizes 10 --rounds 2

Two rows per size, interleaved round by round so that the machine's load hits both alike:
- floor: N containers launched in parallel (one thread each) straight through ``LxcHost.launch``: built offline
  from busybox, attached to the bridge, one SSH key, started, waited for until dropbear sends its banner.
- lease: what the server does at a slot's start (``Instances.tick``, run by the aggregate's ``run_instances``): a
  provisioned lease of N containers in the calendar (SQLite), the tick finds it due, gives addresses, launches the
  containers (``LAUNCH_WORKERS`` at once) and records each state; the time ends when the tick returns, every
  container answering SSH. The server runs the tick every ``INSTANCES_PERIOD_S`` (5 s): a slot's start waits up
  to that long more before the tick sees it; that wait is not in the table.
Then all are destroyed (timed too). Containers live under a temporary LXC path and are destroyed whatever happens.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.images.instances import RUNNING, InstanceRequest, Instances
from sfa_omf.images.lxc import InstanceSpec, LxcHost, wait_for_ssh
from sfa_omf.images.store import ImageStore
from sfa_omf.times import utcnow

# A real public key (its private half is thrown away: the benchmark waits for the SSH banner, it does not log in).
KEY = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " bench"


def one_round(host: LxcHost, size: int, network: ipaddress.IPv4Network, round_no: int) -> tuple[float, float]:
    lease = f"bench{round_no:02d}"
    hosts = list(network.hosts())[100 : 100 + size]  # .101 onwards: clear of the bridge's own address
    specs = [
        InstanceSpec(host.name_for(lease, index), f"{address}/{network.prefixlen}", (KEY,))
        for index, address in enumerate(hosts)
    ]
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=size) as pool:
            list(pool.map(host.launch, specs))
        ready = time.perf_counter() - start
    finally:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=size) as pool:
            list(pool.map(host.destroy, [spec.name for spec in specs]))
        gone = time.perf_counter() - start
    return ready, gone


def lease_round(
    work: str, bridge: str, size: int, network: ipaddress.IPv4Network, round_no: int
) -> tuple[float, float]:
    """A provisioned lease of ``size`` containers whose slot has begun; time the server's tick that starts them."""
    database = Database(sqlite_url(f"{work}/lease{round_no}.sqlite"))
    database.upgrade()
    node = "urn:publicid:IDN+bench+node+n1"
    Inventory(database).add_node(NodeSpec(node, "n1", grain_s=60))
    now = utcnow().replace(microsecond=0)
    end = now.replace(second=0) + timedelta(hours=1)  # the slot began: its end keeps to the grain
    bookings = Bookings(database, sliver_authority="bench")
    slice_urn = f"urn:publicid:IDN+bench+slice+s{round_no}"
    booked = bookings.book(slice_urn, now + timedelta(hours=2), [BookingRequest(node, now, end, from_now=True)])
    (lease,) = booked.leases
    bookings.mark_provisioned_all([lease.id], slice_urn)
    host = LxcHost(bridge, lxc_path=f"{work}/lxc")
    instances = Instances(database, host, str(network), ImageStore(database, f"{work}/images"))
    instances.plan(lease.id, [InstanceRequest(lease.slivers[0].urn, node, "", size)], now)
    try:
        start = time.perf_counter()
        started, _ = instances.tick(now, lambda _slice: [KEY])
        ready = time.perf_counter() - start
        records = instances.of_lease(lease.id)
        if len(started) != size or any(r.state != RUNNING or not wait_for_ssh(r.host, 1) for r in records):
            raise SystemExit(f"lease round {round_no}: not every container runs: {records}")
    finally:
        start = time.perf_counter()
        instances.destroy_lease(lease.id, now)
        gone = time.perf_counter() - start
        database.dispose()
    return ready, gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--network", default="10.217.0.0/24", help="the bridge's range (default %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    network = ipaddress.IPv4Network(args.network)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sfaomf-bench-lxc-") as work:
        host = LxcHost(args.bridge, lxc_path=work)
        for size in args.sizes:
            floor, lease = [], []
            for round_no in range(args.rounds):  # interleaved: one of each per round
                floor.append(one_round(host, size, network, round_no))
                lease.append(lease_round(work, args.bridge, size, network, size * 100 + round_no))
            rows.append((size, "floor: LxcHost.launch, all at once", floor))
            rows.append((size, "lease: slot start -> tick -> all answer SSH", lease))
    print("| containers | path | all answer SSH: median s | min | max | destroy all: median s | rounds |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size, path, results in rows:
        ready = [r for r, _ in results]
        gone = [g for _, g in results]
        print(
            f"| {size} | {path} | {statistics.median(ready):.2f} | {min(ready):.2f} | {max(ready):.2f} | "
            f"{statistics.median(gone):.2f} | {len(ready)} |"
        )


if __name__ == "__main__":
    main()
