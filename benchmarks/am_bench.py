"""The aggregate manager over TLS: per-call latency, calls per second under concurrency, and ListResources by size.

Run from the repository root, with the project's virtualenv:

    python benchmarks/am_bench.py                 # about 1 minute
    python benchmarks/am_bench.py --quick         # 0.5 s per measurement, 1 000 nodes at most (20 s)
    python benchmarks/am_bench.py --threads 16    # the server's [sfa_omf] threads (default: the configuration's)

The server is the real one, as an operator runs it: ``sfa-omf serve --config DIR/sfa-omf.conf`` in a subprocess, after
``init_directory`` (authority ``testbed``, user alice) in a temporary directory; the ports are free ones, given to the
server with ``SFA_AGGREGATE_PORT`` and ``SFA_REGISTRY_PORT``. The clients are in this process (threads): Python's
``xmlrpc.client`` over an ``ssl`` context that presents alice's GID chain and key and does not verify the server, as
sfi.py and omni do. The first ``--nodes`` nodes are added with ``Inventory.add_node``; the larger inventories are
bulk-inserted into the ``node`` table (SQLAlchemy Core) while the server is stopped, and the server is started again
on them.

What is measured:

1. latency — median and 95th percentile of GetVersion, ListResources (``--nodes`` nodes), Allocate and Delete (pairs:
   each Allocate books one node for one future 30-min slot, every one a different (node, slot), and the Delete of its
   sliver follows; with ``--plain`` also Allocate of a plain request with no time, booked from now, and its Delete),
   Status and Describe (of the demo slice, which holds one sliver), each (a) on a new TLS connection
   per call (a new ``ServerProxy``: TCP connect, full TLS handshake with client certificate, one request) and (b) on
   one kept-alive connection (one ``ServerProxy`` reused; HTTP/1.1 keeps the connection).
2. calls/s — GetVersion and Status by 1, 8 and 32 concurrent clients (threads, each with its own kept-alive
   ``ServerProxy``), with the server's CPU use meanwhile (from /proc; 100 % is one core).
3. ListResources latency (kept-alive) for ``--nodes`` nodes with ``--bookings`` existing bookings (one node and one
   30-min slot each, made with Allocate), and for each of ``--node-counts`` nodes without bookings.

Every measurement runs for ``--seconds`` and at least ``--rounds`` calls, capped at ``--max-rounds``. Before timing,
each call is made once and its answer checked: geni_code 0, and the expected content (every node advertised, the
sliver allocated, deleted, in the slice). Every timed call's geni_code is checked too; a failure stops the benchmark.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from serving import free_port, sfa_omf_command  # benchmarks/ is sys.path[0] when run as a script
from sqlalchemy import insert, select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Node, Pool
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time, utcnow

AUTHORITY = "testbed"
USER = "alice"
SLICE_URN = f"urn:publicid:IDN+{AUTHORITY}+slice+demo"
GENI_V3 = {"type": "GENI", "version": "3"}
SLOT = timedelta(minutes=30)
IMAGES = [{"name": "ubuntu-22.04", "os": "Linux", "version": "22.04", "description": "Ubuntu 22.04 LTS"}]
CHUNK = 5_000  # rows per bulk insert
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 300.0
BOOKINGS_PER_ALLOCATE = 100
MAX_BOOKINGS = 80 * 24 * 2  # 30-min slots in 80 days (the default max_advance_s is 90 days)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="minimum calls per measurement (default 5)")
    parser.add_argument("--max-rounds", type=int, default=2_000, help="maximum calls per measurement (default 2000)")
    parser.add_argument("--nodes", type=int, default=100, help="nodes of the latency and concurrency runs (100)")
    parser.add_argument(
        "--node-counts", default="1000,10000", help="larger inventories for ListResources (default 1000,10000)"
    )
    parser.add_argument("--bookings", type=int, default=300, help="existing bookings for ListResources (300)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients (default 1,8,32)")
    parser.add_argument("--threads", type=int, default=None, help="server worker threads (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="0.5 s and >= 2 calls per measurement, <= 1000 nodes")
    parser.add_argument(
        "--plain", action="store_true", help="also Allocate with no time in the request (from now), then Delete"
    )
    args = parser.parse_args(argv)
    try:
        args.node_counts = [int(part) for part in args.node_counts.split(",") if part.strip()]
        args.clients = [int(part) for part in args.clients.split(",") if part.strip()]
    except ValueError:
        parser.error("--node-counts and --clients are comma-separated whole numbers")
    if args.quick:
        args.seconds, args.rounds = 0.5, 2
        args.node_counts = [count for count in args.node_counts if count <= 1_000]
    if args.seconds <= 0 or args.rounds < 1 or args.max_rounds < args.rounds:
        parser.error("need --seconds > 0 and 1 <= --rounds <= --max-rounds")
    if args.nodes < 1 or any(count <= args.nodes for count in args.node_counts) or any(n < 1 for n in args.clients):
        parser.error("need --nodes >= 1, every --node-counts above --nodes, every --clients >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


# -- figures -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latencies:
    seconds: list[float]

    @property
    def median_ms(self) -> float:
        return 1000.0 * statistics.median(self.seconds)

    @property
    def p95_ms(self) -> float:
        if len(self.seconds) < 2:
            return 1000.0 * self.seconds[0]
        return 1000.0 * statistics.quantiles(self.seconds, n=20, method="inclusive")[18]


@dataclass(frozen=True)
class LatencyRow:
    method: str
    connection: str
    latencies: Latencies


@dataclass(frozen=True)
class ThroughputRow:
    method: str
    clients: int
    calls: int
    elapsed: float
    latencies: Latencies
    server_cpu: float  # fraction of one core
    client_cpu: float  # fraction of one core

    @property
    def per_second(self) -> float:
        return self.calls / self.elapsed


@dataclass(frozen=True)
class ListRow:
    nodes: int
    bookings: int
    latencies: Latencies
    response_bytes: int
    server_cpu_ms: float  # server CPU per call


# -- the server ----------------------------------------------------------------------------------------------------
class Server:
    """``sfa-omf serve`` in a subprocess, on a free port; its standard error goes to a log file."""

    def __init__(self, config_path: str, log_path: str, threads: int | None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        # Free ports for both servers sfa-omf serve runs (another sfa-omf may hold the default registry port).
        self.environ = dict(os.environ, SFA_AGGREGATE_PORT=str(free_port()), SFA_REGISTRY_PORT=str(free_port()))
        if threads is not None:
            self.environ["SFA_OMF_THREADS"] = str(threads)
        self.settings: Settings = read_config(config_path, self.environ)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.settings.aggregate_port}/"

    def start(self) -> float:
        """Start the server and wait until its port accepts connections; the seconds that took."""
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sfa_omf_command(), "serve", "--config", self.config_path],
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.settings.aggregate_port), timeout=1.0):
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"the server did not listen within {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far."""
        if self.process is None:
            return 0.0
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no log)"

    @contextmanager
    def running(self) -> Iterator[Server]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


# -- the inventory -------------------------------------------------------------------------------------------------
def node_urn(index: int) -> str:
    return f"urn:publicid:IDN+{AUTHORITY}+node+bench{index:05d}"


def add_nodes(database: Database, first: int, last: int) -> float:
    """Nodes first..last-1: with Inventory.add_node from 0 (it creates the default pool), else bulk-inserted."""
    started = time.perf_counter()
    if first == 0:
        inventory = Inventory(database)
        for index in range(last):
            inventory.add_node(
                NodeSpec(node_urn(index), f"bench{index:05d}", hardware_type="icarus", disk_images=tuple(IMAGES))
            )
        return time.perf_counter() - started
    with database.engine.begin() as connection:
        pool_id = connection.scalar(select(Pool.id).where(Pool.name == "default"))
        grain_s = connection.scalar(select(Node.grain_s).limit(1))
        for chunk in range(first, last, CHUNK):
            connection.execute(
                insert(Node),
                [
                    {
                        "component_id": node_urn(index),
                        "component_name": f"bench{index:05d}",
                        "hardware_type": "icarus",
                        "exclusive": True,
                        "properties": {},
                        "disk_images": IMAGES,
                        "grain_s": grain_s,
                        "state": "usable",
                        "pool_id": pool_id,
                    }
                    for index in range(chunk, min(chunk + CHUNK, last))
                ],
            )
    return time.perf_counter() - started


# -- clients -------------------------------------------------------------------------------------------------------
@dataclass
class Client:
    """What a caller needs: the URL, a TLS context with alice's chain and key, her credentials, free slots."""

    url: str
    context: ssl.SSLContext
    user_cred: str
    slice_cred: dict[str, str]
    nodes: int
    base: datetime
    next_booking: int = 0

    def proxy(self) -> Any:
        return xmlrpc.client.ServerProxy(self.url, context=self.context, allow_none=True)

    def booking(self) -> tuple[int, tuple[str, str]]:
        """A node and a 30-min slot no Allocate of this run has used (nodes in turn, slots one after another)."""
        index = self.next_booking
        if index >= MAX_BOOKINGS:
            raise SystemExit(
                f"more than {MAX_BOOKINGS} bookings: the slots would pass max_advance_s; lower --max-rounds"
            )
        self.next_booking += 1
        start = self.base + SLOT * index
        return index % self.nodes, (format_time(start), format_time(start + SLOT))


def make_context(chain_path: str, key_path: str) -> ssl.SSLContext:
    """What sfi.py and omni do: present a GID chain, do not verify the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(chain_path, key_path)
    return context


def request_rspec(bookings: list[tuple[int, tuple[str, str]]]) -> str:
    """An ol request: one lease per booking, each holding one node."""
    leases = "".join(
        f'<ol:lease client_id="l{n}" valid_from="{window[0]}" valid_until="{window[1]}"/>'
        for n, (_, window) in enumerate(bookings)
    )
    nodes = "".join(
        f'<node client_id="n{n}" component_id="{node_urn(node)}" exclusive="true"><ol:lease_ref id_ref="l{n}"/></node>'
        for n, (node, _) in enumerate(bookings)
    )
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        f'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">{leases}{nodes}</rspec>'
    )


def value(answer: Any, method: str) -> Any:
    """The answer's value; stops the benchmark when geni_code is not 0."""
    if not isinstance(answer, dict) or answer.get("code", {}).get("geni_code") != 0:
        output = answer.get("output") if isinstance(answer, dict) else answer
        raise SystemExit(f"{method} failed: {output!r}")
    return answer["value"]


class Calls:
    """The AM API calls measured, each returning the answer's value (geni_code checked)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_version(self, proxy: Any) -> Any:
        return value(proxy.GetVersion(), "GetVersion")

    def list_resources(self, proxy: Any) -> str:
        return str(
            value(proxy.ListResources([self.client.user_cred], {"geni_rspec_version": GENI_V3}), "ListResources")
        )

    def allocate(self, proxy: Any, bookings: list[tuple[int, tuple[str, str]]]) -> Any:
        rspec = request_rspec(bookings)
        return value(proxy.Allocate(SLICE_URN, [self.client.slice_cred], rspec, {}), "Allocate")

    def allocate_plain(self, proxy: Any, node: int) -> Any:
        rspec = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
            f'<node client_id="n" component_id="{node_urn(node)}" exclusive="true"/></rspec>'
        )
        return value(proxy.Allocate(SLICE_URN, [self.client.slice_cred], rspec, {}), "Allocate (no time)")

    def delete(self, proxy: Any, urns: list[str]) -> Any:
        return value(proxy.Delete(urns, [self.client.slice_cred], {}), "Delete")

    def status(self, proxy: Any) -> Any:
        return value(proxy.Status([SLICE_URN], [self.client.slice_cred], {}), "Status")

    def describe(self, proxy: Any) -> Any:
        options = {"geni_rspec_version": GENI_V3}
        return value(proxy.Describe([SLICE_URN], [self.client.slice_cred], options), "Describe")


def new_sliver(allocated: Any, window: tuple[str, str]) -> str:
    """The URN of the sliver an Allocate of one slot made (every booking of this run has its own slot)."""
    found = [
        s["geni_sliver_urn"]
        for s in allocated["geni_slivers"]
        if (s["geni_start_time"], s["geni_end_time"]) == window and s["geni_allocation_status"] == "geni_allocated"
    ]
    if len(found) != 1:
        raise SystemExit(f"Allocate of slot {window} answered {len(found)} slivers for it, 1 expected")
    return str(found[0])


# -- measurements --------------------------------------------------------------------------------------------------
def time_calls(run: Callable[[], object], args: argparse.Namespace, max_rounds: int | None = None) -> list[float]:
    """Seconds per call: for ``--seconds`` and at least ``--rounds`` calls, at most ``max_rounds``."""
    cap = max_rounds or args.max_rounds
    times: list[float] = []
    deadline = time.perf_counter() + args.seconds
    while len(times) < cap and (len(times) < args.rounds or time.perf_counter() < deadline):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def measure_latencies(calls: Calls, args: argparse.Namespace) -> list[LatencyRow]:
    kept = calls.client.proxy()
    rows = measure_connection(calls, "new TLS", calls.client.proxy, args)
    return rows + measure_connection(calls, "keep-alive", lambda: kept, args)


def measure_connection(
    calls: Calls, connection: str, proxy_for: Callable[[], Any], args: argparse.Namespace
) -> list[LatencyRow]:
    """Every method's latency with proxies from ``proxy_for`` (a new one each call, or always the same)."""
    simple: list[tuple[str, Callable[[Any], object]]] = [
        ("GetVersion", calls.get_version),
        ("ListResources", calls.list_resources),
        ("Status", calls.status),
        ("Describe", calls.describe),
    ]
    rows: list[LatencyRow] = []
    for method, call in simple:

        def one(call: Callable[[Any], object] = call) -> None:
            call(proxy_for())

        rows.append(LatencyRow(method, connection, Latencies(time_calls(one, args))))
    allocate_times: list[float] = []
    delete_times: list[float] = []

    def pair() -> None:
        node, window = calls.client.booking()
        started = time.perf_counter()
        allocated = calls.allocate(proxy_for(), [(node, window)])
        allocate_times.append(time.perf_counter() - started)
        sliver = new_sliver(allocated, window)
        started = time.perf_counter()
        calls.delete(proxy_for(), [sliver])
        delete_times.append(time.perf_counter() - started)

    time_calls(pair, args)
    rows.append(LatencyRow("Allocate", connection, Latencies(allocate_times)))
    rows.append(LatencyRow("Delete", connection, Latencies(delete_times)))
    if not args.plain:
        return rows
    # What omni and GENI's acceptance tests send: one node, no time (booked from now), then Delete of its sliver.
    held = {s["geni_sliver_urn"] for s in calls.status(calls.client.proxy())["geni_slivers"]}
    plain_times: list[float] = []
    plain_delete_times: list[float] = []

    def plain_pair() -> None:
        node = len(plain_times) % calls.client.nodes
        started = time.perf_counter()
        allocated = calls.allocate_plain(proxy_for(), node)
        plain_times.append(time.perf_counter() - started)
        new = [s["geni_sliver_urn"] for s in allocated["geni_slivers"] if s["geni_sliver_urn"] not in held]
        if len(new) != 1:
            raise SystemExit(f"Allocate with no time answered {len(new)} new slivers, 1 expected")
        started = time.perf_counter()
        calls.delete(proxy_for(), new)
        plain_delete_times.append(time.perf_counter() - started)

    time_calls(plain_pair, args)
    rows.append(LatencyRow("Allocate no time", connection, Latencies(plain_times)))
    rows.append(LatencyRow("Delete (after)", connection, Latencies(plain_delete_times)))
    return rows


def measure_throughput(
    server: Server, calls: Calls, method: str, call: Callable[[Any], object], clients: int, args: argparse.Namespace
) -> ThroughputRow:
    """``clients`` threads, each with its own kept-alive proxy (connected and warmed up before the clock starts)."""
    stop_at = [0.0]
    cpu_at_start = [0.0, 0.0]

    def start_clock() -> None:  # run by the last thread to reach the barrier, before any is released
        cpu_at_start[:] = [server.cpu_seconds(), time.process_time()]
        stop_at[0] = time.perf_counter() + args.seconds

    barrier = threading.Barrier(clients + 1, action=start_clock)
    per_thread: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def worker(times: list[float]) -> None:
        try:
            proxy = calls.client.proxy()
            call(proxy)  # connect and warm up, untimed
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        barrier.wait()
        try:
            while time.perf_counter() < stop_at[0] and len(times) < args.max_rounds:
                started = time.perf_counter()
                call(proxy)
                times.append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(times,), daemon=True) for times in per_thread]
    for thread in threads:
        thread.start()
    with suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = stop_at[0] - args.seconds
    for thread in threads:
        thread.join(timeout=args.seconds + CALL_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    cpu_server, cpu_client = server.cpu_seconds() - cpu_at_start[0], time.process_time() - cpu_at_start[1]
    if errors:
        raise SystemExit(f"{method} with {clients} clients failed: {errors[0]!r}")
    times = [t for thread_times in per_thread for t in thread_times]
    return ThroughputRow(
        method, clients, len(times), elapsed, Latencies(times), cpu_server / elapsed, cpu_client / elapsed
    )


def measure_list(server: Server, calls: Calls, nodes: int, bookings: int, args: argparse.Namespace) -> ListRow:
    proxy = calls.client.proxy()
    document = calls.list_resources(proxy)
    check_advertisement(document, nodes, bookings)
    cpu = server.cpu_seconds()
    times = time_calls(lambda: calls.list_resources(proxy), args)
    cpu_ms = 1000.0 * (server.cpu_seconds() - cpu) / len(times)
    return ListRow(nodes, bookings, Latencies(times), len(document.encode("utf-8")), cpu_ms)


# -- checks --------------------------------------------------------------------------------------------------------
def check_advertisement(document: str, nodes: int, bookings: int) -> None:
    advertised = document.count("<node ")
    if advertised != nodes or node_urn(nodes - 1) not in document:
        raise SystemExit(f"ListResources advertised {advertised} nodes, {nodes} expected")
    shown = document.count("<ol:lease ")
    if shown != bookings:
        raise SystemExit(f"ListResources shows {shown} bookings (ol:lease elements), {bookings} held")


def check_calls(calls: Calls, nodes: int) -> str:
    """Every call once, its answer checked; leaves the demo slice with one allocated sliver (for Status, Describe)."""
    proxy = calls.client.proxy()
    version = calls.get_version(proxy)
    if version.get("geni_api") != 3:
        raise SystemExit(f"GetVersion: geni_api {version.get('geni_api')!r}, 3 expected")
    check_advertisement(calls.list_resources(proxy), nodes, 0)  # before the first Allocate
    node, window = calls.client.booking()
    allocated = calls.allocate(proxy, [(node, window)])
    kept = new_sliver(allocated, window)
    if [s["geni_allocation_status"] for s in allocated["geni_slivers"]] != ["geni_allocated"]:
        raise SystemExit(f"Allocate: {allocated['geni_slivers']!r}")
    node, window = calls.client.booking()
    second = new_sliver(calls.allocate(proxy, [(node, window)]), window)
    deleted = calls.delete(proxy, [second])
    if [s["geni_sliver_urn"] for s in deleted] != [second]:
        raise SystemExit(f"Delete of {second}: {deleted!r}")
    status = calls.status(proxy)
    if status["geni_urn"] != SLICE_URN or [s["geni_sliver_urn"] for s in status["geni_slivers"]] != [kept]:
        raise SystemExit(f"Status: {status!r}")
    described = calls.describe(proxy)
    if [s["geni_sliver_urn"] for s in described["geni_slivers"]] != [kept]:
        raise SystemExit(f"Describe: {described!r}")
    return kept


def add_bookings(calls: Calls, count: int) -> None:
    """``count`` bookings of the demo slice (one node and one slot each), made with Allocate, 100 a call."""
    proxy = calls.client.proxy()
    for first in range(0, count, BOOKINGS_PER_ALLOCATE):
        wanted = [calls.client.booking() for _ in range(min(BOOKINGS_PER_ALLOCATE, count - first))]
        allocated = calls.allocate(proxy, wanted)
        held = sum(1 for s in allocated["geni_slivers"] if s["geni_allocation_status"] == "geni_allocated")
        if held < first + len(wanted):
            raise SystemExit(f"Allocate of {len(wanted)} bookings: the slice holds {held} allocated slivers")


# -- output --------------------------------------------------------------------------------------------------------
def print_facts(server: Server, args: argparse.Namespace, nodes_s: float, start_s: float) -> None:
    settings = server.settings
    print("Aggregate manager over TLS benchmark (sfa-omf)")
    print(f"  python        {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
    print(f"  cpu count     {os.cpu_count()} (server and clients share them)")
    print(f"  openssl       {ssl.OPENSSL_VERSION} (client)")
    print(f"  server        sfa-omf serve, {settings.threads} worker threads ([sfa_omf] threads), SQLite calendar,")
    print(f"                free_windows {settings.free_windows}, horizon {settings.horizon_days} days")
    print(
        f"  inventory     {args.nodes} nodes added with Inventory.add_node in {nodes_s:.1f} s; "
        f"server up in {start_s:.1f} s"
    )
    print(
        f"  budget        {args.seconds:g} s and >= {args.rounds} calls per measurement (<= {args.max_rounds}); "
        "clients are threads of this process"
    )
    print()


def print_latencies(rows: list[LatencyRow], nodes: int) -> None:
    print(f"Latency per call, one client ({nodes} nodes; the demo slice holds one sliver)")
    by_method: dict[str, dict[str, Latencies]] = {}
    for row in rows:
        by_method.setdefault(row.method, {})[row.connection] = row.latencies
    print(
        f"{'method':<15}{'new TLS: calls':>15}{'median ms':>11}{'p95 ms':>9}{'keep-alive: calls':>19}"
        f"{'median ms':>11}{'p95 ms':>9}{'saved ms':>10}"
    )
    print("-" * 99)
    for method, figures in by_method.items():
        new, kept = figures["new TLS"], figures["keep-alive"]
        print(
            f"{method:<15}{len(new.seconds):>15,}{new.median_ms:>11.2f}{new.p95_ms:>9.2f}{len(kept.seconds):>19,}"
            f"{kept.median_ms:>11.2f}{kept.p95_ms:>9.2f}{new.median_ms - kept.median_ms:>10.2f}"
        )
    print("new TLS: a new ServerProxy per call (TCP + full TLS handshake + request); keep-alive: one ServerProxy.")
    print("Allocate and Delete: pairs, each Allocate one node for one future 30-min slot, then Delete of its sliver.")
    if any(row.method == "Allocate no time" for row in rows):
        print("Allocate no time: a plain request (one node, no lease: booked from now), then Delete (after) of it.")
    print()


def print_throughput(rows: list[ThroughputRow], threads: int) -> None:
    print(
        "Calls per second, concurrent clients (threads, each with its own kept-alive connection; "
        f"server threads {threads})"
    )
    print(
        f"{'method':<12}{'clients':>8}{'calls':>8}{'calls/s':>9}{'median ms':>11}{'p95 ms':>9}{'server cpu':>12}"
        f"{'client cpu':>12}"
    )
    print("-" * 81)
    for row in rows:
        print(
            f"{row.method:<12}{row.clients:>8}{row.calls:>8,}{row.per_second:>9.1f}{row.latencies.median_ms:>11.2f}"
            f"{row.latencies.p95_ms:>9.2f}{100 * row.server_cpu:>11.0f}%{100 * row.client_cpu:>11.0f}%"
        )
    print("cpu: CPU time used during the run / wall time (100 % = one core); server: the sfa-omf process.")
    print()


def print_lists(rows: list[ListRow]) -> None:
    print("ListResources latency, one client, kept-alive connection (GENI v3 advertisement, uncompressed)")
    print(
        f"{'nodes':>8}{'bookings':>10}{'calls':>7}{'median ms':>11}{'p95 ms':>10}{'response KB':>13}"
        f"{'server cpu ms':>15}"
    )
    print("-" * 74)
    for row in rows:
        print(
            f"{row.nodes:>8,}{row.bookings:>10,}{len(row.latencies.seconds):>7}{row.latencies.median_ms:>11.1f}"
            f"{row.latencies.p95_ms:>10.1f}{row.response_bytes / 1024:>13,.0f}{row.server_cpu_ms:>15.1f}"
        )
    print("server cpu ms: the server process's CPU per call; the rest of the latency is the client parsing the reply.")
    print()


# -- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sfa-omf-am-bench-") as workdir:
        directory = os.path.join(workdir, "authority")
        report = init_directory(directory, AUTHORITY, (USER,))
        config_path = os.path.join(directory, "sfa-omf.conf")
        sfi = report.sfi_dirs[USER]
        with open(os.path.join(sfi, f"{AUTHORITY}.{USER}.user.cred"), encoding="utf-8") as handle:
            user_cred = handle.read()
        with open(os.path.join(sfi, f"{AUTHORITY}.{USER}-{AUTHORITY}.demo.slice.cred"), encoding="utf-8") as handle:
            slice_cred = {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": handle.read()}
        server = Server(config_path, os.path.join(workdir, "server.log"), args.threads)
        database = Database(server.settings.calendar_url)
        database.upgrade()
        nodes_s = add_nodes(database, 0, args.nodes)
        base = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        context = make_context(
            os.path.join(sfi, f"{AUTHORITY}.{USER}.user.gid"), os.path.join(sfi, f"{AUTHORITY}.{USER}.pkey")
        )
        client = Client(server.url, context, user_cred, slice_cred, args.nodes, base)
        calls = Calls(client)
        try:
            start_s = server.start()
            print_facts(server, args, nodes_s, start_s)
            check_calls(calls, args.nodes)
            print("Checks before timing: every call answered geni_code 0 with the expected content.", flush=True)
            print()
            print_latencies(measure_latencies(calls, args), args.nodes)
            measured: list[ThroughputRow] = []
            for method, call in (("GetVersion", calls.get_version), ("Status", calls.status)):
                for clients in args.clients:
                    measured.append(measure_throughput(server, calls, method, call, clients, args))
            print_throughput(measured, server.settings.threads)
            lists = [measure_list(server, calls, args.nodes, 1, args)]
            add_bookings(calls, args.bookings)
            lists.append(measure_list(server, calls, args.nodes, args.bookings + 1, args))
            server.stop()
            have = args.nodes
            for count in args.node_counts:
                insert_s = add_nodes(database, have, count)
                have = count
                start_s = server.start()
                print(f"  ({count:,} nodes: bulk insert {insert_s:.1f} s, server up in {start_s:.1f} s)", flush=True)
                # The bookings stay: they only hold the first --nodes nodes.
                lists.append(measure_list(server, calls, count, args.bookings + 1, args))
                server.stop()
            print()
            print_lists(lists)
        finally:
            server.stop()
            database.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
