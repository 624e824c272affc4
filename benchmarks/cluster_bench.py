"""Many processes, many hosts on one PostgreSQL: calls/s of Status and Allocate with 1 worker, 2 workers, and two
instances (two ``sfa-omf serve`` as two hosts would run them, clients split between them); the speed-up over one
worker is the figure.

Run from the repository root, with the project's virtualenv and a PostgreSQL database for the benchmark alone (its
public schema is dropped):

    python benchmarks/cluster_bench.py --postgres-url "$(bash scripts/postgres.sh sfaomf_bench | tail -n 1)"
    python benchmarks/cluster_bench.py --seconds 3       # quicker (default 8 s per measurement)

The servers are the real ones (``sfa-omf serve --workers N`` in subprocesses, on free ports, READY=1 awaited on a
notification socket of ours). The clients are threads of this process, ``--clients`` of them (default 16), each with its
own kept-alive ``xmlrpc.client`` connection over TLS presenting a user's GID chain, as sfi.py does; with two instances
half of the clients call each. Every setup is measured ``--repeat`` times (default 3), the setups in turn (each round
begins with the next one), and the best of each is printed (this machine is shared: the load average before the run
is printed too).
Status is of a slice holding one sliver, on the kept-alive connection and, as sfi.py does, on a new connection (TCP
and TLS handshake) for each call. Allocate: each client is a user of its own, with its own slice and its own node,
and every call books the next free 30-minute slot of that node (no call waits for another's booking); the answer is
checked (geni_code 0, one new sliver). Before each Allocate measurement the slices are emptied (their leases
removed), so that every setup books from the same empty slices (an Allocate answers with its whole slice).
CPU: user + system seconds of every server process (masters and workers) and of this process (the clients), per
second of wall time: 100 % is one core. connections: how the clients'
kept-alive connections were spread over the serving processes at the end (from ss), largest first.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from am_bench import CLOCK_TICKS, make_context  # benchmarks/ is sys.path[0] when run as a script
from calendar_bench import check_database_url
from serving import free_port, sfa_omf_command
from sqlalchemy import create_engine, text

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import chain_pem
from sfa_omf.trust.pki import private_key_pem

AUTHORITY, USER = "testbed", "alice"
SLOT = timedelta(minutes=30)
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
NEW_CONNECTION = "Status, a connection per call"
METHODS = ("Status", NEW_CONNECTION, "Allocate")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", default=os.environ.get("SFA_OMF_BENCH_POSTGRES_URL"))
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (threads)")
    parser.add_argument("--threads", type=int, default=8, help="[sfa_omf] threads of each worker")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD", help=f"of {METHODS}"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every setup; the best of each is shown")
    args = parser.parse_args()
    if not args.postgres_url:
        parser.error("--postgres-url (or $SFA_OMF_BENCH_POSTGRES_URL) is required: the figure is for PostgreSQL")
    return args


class Instance:
    """``sfa-omf serve --workers N`` in a subprocess; stderr to a log file."""

    def __init__(self, config: str, url: str, workers: int, threads: int, directory: str, name: str) -> None:
        self.port = free_port()
        self.log_path = os.path.join(directory, f"{name}.log")
        self.notify_path = os.path.join(directory, f"{name}.notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(START_TIMEOUT_S)
        environ = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
        environ.update(
            SFA_AGGREGATE_PORT=str(self.port),
            SFA_REGISTRY_PORT=str(free_port()),
            SFA_OMF_DATABASE_URL=url,
            SFA_OMF_THREADS=str(threads),
            SFA_OMF_LOG_LEVEL="WARNING",  # a line per call would cost the same in every configuration; left out
            NOTIFY_SOCKET=self.notify_path,
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sfa_omf_command(), "serve", "--config", config, "--workers", str(workers)],
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self) -> None:
        try:
            said = self.notify.recv(4096)
        except TimeoutError:
            said = b""
        if said != b"READY=1":
            self.stop()
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                raise SystemExit(f"the server did not start:\n{handle.read()[-3000:]}")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def pids(self) -> list[int]:
        """The master (or single process) and its workers."""
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
                return [pid, *(int(child) for child in handle.read().split())]
        except OSError:
            return [pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()
        os.unlink(self.notify_path)  # the next round binds it again


def connections_by_process(instances: list[Instance]) -> list[int]:
    """How many established connections to the aggregate ports each process holds (from ss), largest first."""
    ports = " or ".join(f"sport = :{instance.port}" for instance in instances)
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( {ports} )"], capture_output=True, text=True, check=False
    ).stdout
    counts = Counter(re.findall(r"pid=(\d+)", listing))
    return sorted(counts.values(), reverse=True)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with suppress(OSError), open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class Lab:
    config: str
    context: Any  # alice's, for Status of the demo slice
    contexts: list[Any]  # each client's, for its Allocates
    slices: list[tuple[str, str]]  # per client: slice URN, alice's credential over it
    demo_slice: tuple[str, str]
    next_slot: list[int]  # per client: the next free slot of its node
    demo_booked: bool = False


def make_lab(directory: str, url: str, clients: int) -> Lab:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    report = init_directory(os.path.join(directory, "lab"), AUTHORITY, (USER,))
    database = Database(url)
    database.upgrade()
    inventory = Inventory(database)
    for number in range(clients + 1):
        inventory.add_node(NodeSpec(f"urn:publicid:IDN+{AUTHORITY}+node+n{number}", f"n{number}"))
    database.dispose()
    authority = LocalAuthority.load(report.directory, AUTHORITY)
    alice = authority.issued_chain(f"{AUTHORITY}.{USER}")
    sfi = report.sfi_dirs[USER]
    context = make_context(
        os.path.join(sfi, f"{AUTHORITY}.{USER}.user.gid"), os.path.join(sfi, f"{AUTHORITY}.{USER}.pkey")
    )
    # Each client is a user of its own, with a slice of its own: bookings of one user are serialized on purpose
    # (calendar/booking.py: per-user limits), which would measure that lock rather than the serving processes.
    slices, contexts = [], []
    for number in range(clients):
        user, key = authority.issue_gid(f"{AUTHORITY}.user{number}", "user")
        assert key is not None
        gid_path, key_path = os.path.join(directory, f"user{number}.gid"), os.path.join(directory, f"user{number}.pkey")
        with open(gid_path, "w", encoding="ascii") as handle:
            handle.write(chain_pem(user))
        with open(key_path, "wb") as handle:
            handle.write(private_key_pem(key))
        contexts.append(make_context(gid_path, key_path))
        chain, _ = authority.issue_gid(f"{AUTHORITY}.bench{number}", "slice")
        slices.append((chain[0].urn or "", authority.credential(user, chain)))
    chain, _ = authority.issue_gid(f"{AUTHORITY}.status", "slice")
    demo = (chain[0].urn or "", authority.credential(alice, chain))
    config = os.path.join(report.directory, "sfa-omf.conf")
    return Lab(config, context, contexts, slices, demo, [0] * clients)


def request(node: int, slot: int) -> tuple[str, tuple[str, str]]:
    base = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    start = base + SLOT * slot
    window = (format_time(start), format_time(start + SLOT))
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>'
        f'<node client_id="n" component_id="urn:publicid:IDN+{AUTHORITY}+node+n{node}" exclusive="true">'
        '<ol:lease_ref id_ref="l"/></node></rspec>'
    )
    return rspec, window


def checked(answer: Any, method: str) -> Any:
    if not isinstance(answer, dict) or answer.get("code", {}).get("geni_code") != 0:
        raise SystemExit(f"{method} failed: {answer.get('output') if isinstance(answer, dict) else answer!r}")
    return answer["value"]


def call_once(lab: Lab, method: str, client: int, proxy: Any, url: str) -> None:
    if method.startswith("Status"):
        if method == NEW_CONNECTION:  # as sfi.py does: a new connection (TCP, TLS handshake) for each call
            proxy = xmlrpc.client.ServerProxy(url, context=lab.context, allow_none=True)
        urn, credential = lab.demo_slice
        value = checked(proxy.Status([urn], [credential], {}), method)
        if len(value["geni_slivers"]) != 1:
            raise SystemExit(f"Status answered {len(value['geni_slivers'])} slivers, 1 expected")
        return
    urn, credential = lab.slices[client]
    rspec, window = request(client, lab.next_slot[client])
    lab.next_slot[client] += 1
    value = checked(proxy.Allocate(urn, [credential], rspec, {}), method)
    if not any((s["geni_start_time"], s["geni_end_time"]) == window for s in value["geni_slivers"]):
        raise SystemExit(f"Allocate answered no sliver for {window}")


@dataclass
class Row:
    setup: str
    method: str
    calls: int
    seconds: float
    server_cpu: float
    client_cpu: float
    split: str  # the clients' kept-alive connections held by each serving process

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds


def measure(lab: Lab, instances: list[Instance], method: str, clients: int, seconds: float, setup: str) -> Row:
    urls = [instances[number % len(instances)].url for number in range(clients)]
    proxies = [
        xmlrpc.client.ServerProxy(url, context=lab.contexts[number] if method == "Allocate" else lab.context)
        for number, url in enumerate(urls)
    ]
    for number, proxy in enumerate(proxies):  # connected and warmed up, untimed
        call_once(lab, method, number, proxy, urls[number])
    pids = [pid for instance in instances for pid in instance.pids()]
    counts = [0] * clients
    errors: list[BaseException] = []
    clock: list[float] = []

    def start_clock() -> None:
        clock[:] = [time.perf_counter(), cpu_seconds(pids), time.process_time()]

    barrier = threading.Barrier(clients, action=start_clock)

    def run(number: int) -> None:
        barrier.wait()
        try:
            while time.perf_counter() < clock[0] + seconds:
                call_once(lab, method, number, proxies[number], urls[number])
                counts[number] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - clock[0]
    split = "/".join(str(count) for count in connections_by_process(instances)) if method != NEW_CONNECTION else "-"
    if errors:
        raise SystemExit(f"{method} ({setup}) failed: {errors[0]!r}")
    server_cpu = (cpu_seconds(pids) - clock[1]) / elapsed
    client_cpu = (time.process_time() - clock[2]) / elapsed
    return Row(setup, method, sum(counts), elapsed, server_cpu, client_cpu, split)


def release_allocations(lab: Lab, url: str) -> None:
    """Remove what the clients' Allocates booked before (as if never booked), so that every Allocate measurement
    starts from empty slices: an Allocate answers with its whole slice's manifest, so slices that kept every earlier
    booking made each later call slower, and each setup measured later look slower than the one before it."""
    database = Database(url)
    try:
        bookings = Bookings(database)
        for urn, _ in lab.slices:
            bookings.discard(lease.id for lease in bookings.leases(slice_urn=urn, active_only=False))
    finally:
        database.dispose()


def run_setup(lab: Lab, args: argparse.Namespace, directory: str, setup: str, shape: list[int]) -> list[Row]:
    """Start one instance per entry of ``shape`` (its workers), measure Status then Allocate, stop them."""
    instances = [
        Instance(lab.config, args.postgres_url, workers, args.threads, directory, f"{setup}-{n}".replace(" ", "-"))
        for n, workers in enumerate(shape)
    ]
    try:
        for instance in instances:
            instance.wait_ready()
        if not lab.demo_booked:  # the demo slice's one sliver, for Status
            lab.demo_booked = True
            urn, credential = lab.demo_slice
            proxy = xmlrpc.client.ServerProxy(instances[0].url, context=lab.context, allow_none=True)
            rspec, _ = request(len(lab.slices), 0)
            checked(proxy.Allocate(urn, [credential], rspec, {}), "Allocate")
        rows = []
        for method in args.methods:
            if method == "Allocate":
                release_allocations(lab, args.postgres_url)
            rows.append(measure(lab, instances, method, args.clients, args.seconds, setup))
        return rows
    finally:
        for instance in instances:
            instance.stop()


def main() -> None:
    args = parse_args()
    load = os.getloadavg()
    check_database_url(args.postgres_url)
    directory = tempfile.mkdtemp(prefix="sfa-omf-cluster-bench-")
    try:
        lab = make_lab(directory, args.postgres_url, args.clients)
        measured: list[Row] = []
        setups = [("1 worker", [1]), ("2 workers", [2]), ("2 instances", [1, 1])]
        for round_number in range(args.repeat):
            # The setups in turn, so that a burst of load elsewhere hits each alike; each round starts with another
            # one, since every Allocate adds leases and a later setup books into a fuller calendar.
            shift = round_number % len(setups)
            for setup, shape in setups[shift:] + setups[:shift]:
                measured += run_setup(lab, args, directory, setup, shape)
        best: dict[tuple[str, str], Row] = {}
        for row in measured:
            key = (row.setup, row.method)
            if key not in best or row.per_second > best[key].per_second:
                best[key] = row
        rows = list(best.values())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"sfa-omf cluster benchmark: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {args.clients} clients (threads of one process), {args.seconds:g} s each, "
        f"[sfa_omf] threads {args.threads} per worker, PostgreSQL, best of {args.repeat}; "
        f"load average before: {' '.join(f'{value:.1f}' for value in load)}"
    )
    base = {row.method: row.per_second for row in rows if row.setup == "1 worker"}
    header = ("setup", "method", "calls", "calls/s", "speed-up", "server CPU", "client CPU", "connections")
    print(f"{header[0]:<12} {header[1]:<30} " + " ".join(f"{name:>11}" for name in header[2:]))
    for row in rows:
        print(
            f"{row.setup:<12} {row.method:<30} {row.calls:>11} {row.per_second:>11.1f} "
            f"{row.per_second / base[row.method]:>10.2f}x {row.server_cpu:>11.0%} {row.client_cpu:>11.0%} "
            f"{row.split:>11}"
        )


if __name__ == "__main__":
    sys.exit(main())
