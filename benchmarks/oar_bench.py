"""The OAR backend against a real OAR 2.5.9: how long Provision takes for leases of 1, 10 and 50 nodes, and what
ListResources costs with OAR's own reservations mirrored (cached) versus refreshed from OAR first (cold).

Run from the repository root, with the project's virtualenv, after bringing up OAR with at least 50 fake nodes:

    OAR_NODES=50 bash scripts/oar.sh up
    python benchmarks/oar_bench.py                       # about 3 minutes
    python benchmarks/oar_bench.py --rounds 3 --sizes 1,10

Set-up: ``init_directory`` (authority ``testbed``, user alice) in a temporary directory, the calendar in SQLite
there, an Aggregate with the OAR backend (the real ``OarClient`` on ``--oar-url``), alice's URN pinned to the Unix
user ``alice`` that scripts/oar.sh creates, nodes node1..node50 in the inventory. Each round books a different
random 1-hour slot 2 to 25 days ahead (within the demo slice credential's 30 days), times Provision alone (one OAR
reservation whatever the number of nodes), checks the OAR job holds exactly those nodes, then deletes it (Delete,
which deletes the OAR job, timed too). ListResources: ``--bookers`` reservations made directly in OAR as bob are
mirrored; "cold" = refresh_external() (one OAR request) + ListResources, "cached" = ListResources alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.accounts import Accounts
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.times import format_time
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier

GENI_V3 = {"type": "GENI", "version": "3"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oar-url", default=os.environ.get("SFA_OMF_TEST_OAR_URL", "http://127.0.0.1:6668/oarapi"))
    parser.add_argument("--sizes", default="1,10,50", help="lease sizes in nodes")
    parser.add_argument("--rounds", type=int, default=5, help="provisions per size")
    parser.add_argument("--bookers", type=int, default=20, help="reservations made directly in OAR for ListResources")
    parser.add_argument("--list-rounds", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    client = OarClient(args.oar_url, timeout_s=120)
    addresses = sorted({r.network_address for r in client.resources()}, key=lambda name: int(name[4:]))
    if len(addresses) < max(sizes):
        print(f"OAR has {len(addresses)} nodes; run: OAR_NODES={max(sizes)} bash scripts/oar.sh up", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as directory:
        init_directory(directory, "testbed", ("alice",))
        settings = read_config(os.path.join(directory, "sfa-omf.conf"))
        database = Database(settings.calendar_url)
        database.upgrade()
        backend = OarTestbed(client, database, "testbed", horizon=timedelta(days=30))
        accounts = Accounts(database)
        accounts.pin("urn:publicid:IDN+testbed+user+alice", "alice")
        aggregate = Aggregate(
            AggregateSettings(authority_hrn="testbed", horizon=timedelta(days=30)),
            database,
            CredentialVerifier(load_trusted_roots(settings.trusted_roots_dir)),
            Policy(max_advance_s=40 * 86400, max_duration_s=7 * 86400),
            backend=backend,
            accounts=accounts,
        )
        for name in addresses[: max(sizes)]:
            aggregate.inventory.add_node(NodeSpec(f"urn:publicid:IDN+testbed+node+{name}", name))
        sfi = Path(directory) / "users" / "alice" / "sfi"
        chain = load_gid_chain_file(str(sfi / "testbed.alice.user.gid"))
        slice_urn = "urn:publicid:IDN+testbed+slice+demo"
        slice_cred = (sfi / "testbed.alice-testbed.demo.slice.cred").read_text(encoding="utf-8")
        user_cred = (sfi / "testbed.alice.user.cred").read_text(encoding="utf-8")
        print(
            f"# OAR {client.version()['oar_version']} at {args.oar_url}; {platform.python_implementation()} "
            f"{platform.python_version()}; {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d}"
        )
        print()
        print("| lease size | Provision median s | min | max | Delete median s | rounds |")
        print("|---:|---:|---:|---:|---:|---:|")
        used: set[datetime] = set()
        for size in sizes:
            provision_times, delete_times = [], []
            for _ in range(args.rounds):
                start = _free_slot(used)
                nodes = addresses[:size]
                aggregate.allocate(chain, slice_urn, [slice_cred], _request(nodes), _window(start))
                provision_times.append(_timed(lambda: aggregate.provision(chain, [slice_urn], [slice_cred], {})))
                (lease,) = aggregate.bookings.leases(slice_urn=slice_urn)
                row = backend.jobs.get(lease.id)
                job = client.job(row.job_id if row and row.job_id else 0, with_nodes=True)
                assert job is not None and sorted(job.nodes) == sorted(nodes), job
                assert job.start_time == start and job.owner == "alice", job
                delete_times.append(_timed(lambda: aggregate.delete(chain, [slice_urn], [slice_cred], {})))
            print(
                f"| {size} | {statistics.median(provision_times):.2f} | {min(provision_times):.2f} | "
                f"{max(provision_times):.2f} | {statistics.median(delete_times):.2f} | {args.rounds} |"
            )
        # ListResources with OAR's own reservations: cold (mirror refreshed from OAR first) versus cached.
        made = []
        for number in range(args.bookers):
            start = _free_slot(used)
            made.append(
                client.submit_reservation(
                    user="bob",
                    nodes=[addresses[number % len(addresses)]],
                    start=start,
                    walltime_s=3599,
                    job_type="noop",
                    name=f"bench-local-{number}",
                )
            )
        try:
            report = backend.refresh_external()
            assert len(report.added) + report.kept >= args.bookers, report
            options = {"geni_rspec_version": GENI_V3}
            list_resources = lambda: aggregate.list_resources(chain, [user_cred], options)  # noqa: E731
            cold = [_timed(lambda: (backend.refresh_external(), list_resources())) for _ in range(args.list_rounds)]
            refresh = [_timed(backend.refresh_external) for _ in range(args.list_rounds)]
            cached = [_timed(list_resources) for _ in range(args.list_rounds)]
        finally:
            for job_id in made:
                client.delete_job(job_id, user="bob")
        print()
        print(
            f"ListResources, {max(sizes)} nodes, {args.bookers} reservations made directly in OAR "
            f"(plus whatever else OAR holds in the next 30 days), {args.list_rounds} rounds:"
        )
        print()
        print("| | median s | min | max |")
        print("|---|---:|---:|---:|")
        for label, times in (
            ("cold: refresh from OAR + ListResources", cold),
            ("refresh from OAR alone", refresh),
            ("cached: ListResources alone", cached),
        ):
            print(f"| {label} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    return 0


def _free_slot(used: set[datetime]) -> datetime:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    while True:
        start = now + timedelta(days=2, hours=random.randrange(23 * 24))
        if start not in used:
            used.add(start)
            return start


def _request(nodes: list[str]) -> str:
    body = "".join(
        f'<node client_id="{name}" component_id="urn:publicid:IDN+testbed+node+{name}" exclusive="true"/>'
        for name in nodes
    )
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{body}</rspec>'


def _window(start: datetime) -> dict[str, str]:
    return {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(hours=1))}


def _timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


if __name__ == "__main__":
    sys.exit(main())
