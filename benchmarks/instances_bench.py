"""Containers of a lease: time from "start the lease's containers" to "every container answers SSH", with real LXC.

Needs root and scripts/lxc.sh (LXC, busybox-static, dropbear, the project's bridge). Run from the repository root:

    bash scripts/lxc.sh up                                   # prints the bridge, sfaomf-lxc0 by default
    python benchmarks/instances_bench.py --bridge sfaomf-lxc0           # 1 and 10 containers, 3 rounds each
    python benchmarks/instances_bench.py --bridge sfaomf-lxc0 --sizes 10 20 --rounds 2

Each round launches N containers in parallel (one thread each: the work is LXC's processes), each built offline
from busybox, attached to the bridge at its own address, with one SSH key, started, and waited for until its SSH
server sends its banner (sfa_omf.images.lxc.LxcHost.launch); the row's time ends when the last one answers. Then all
are destroyed (timed too). Containers live under a temporary LXC path and are destroyed whatever happens.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sfa_omf.images.lxc import InstanceSpec, LxcHost

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
            results = [one_round(host, size, network, round_no) for round_no in range(args.rounds)]
            rows.append((size, [ready for ready, _ in results], [gone for _, gone in results]))
    print("| containers | all answer SSH: median s | min | max | destroy all: median s | rounds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, ready, gone in rows:
        print(
            f"| {size} | {statistics.median(ready):.2f} | {min(ready):.2f} | {max(ready):.2f} | "
            f"{statistics.median(gone):.2f} | {len(ready)} |"
        )


if __name__ == "__main__":
    main()
