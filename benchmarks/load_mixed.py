"""A mixed load on the aggregate over TLS: N clients for D seconds, all racing for a few nodes, then a check of the
calendar for double bookings.

Run from the repository root, with the project's virtualenv:

    python benchmarks/load_mixed.py                          # 64 clients, 180 s, SQLite
    python benchmarks/load_mixed.py --clients 8 --seconds 20 # a quick look
    python benchmarks/load_mixed.py --postgres-url postgresql+psycopg://user@127.0.0.1/emptydb

The server is the real one, as an operator runs it: ``sfa-omf serve --config DIR/sfa-omf.conf`` in a subprocess, after
``init_directory`` (authority ``testbed``, user alice) in a temporary directory, listening on free ports of 127.0.0.1
(``SFA_AGGREGATE_PORT``, ``SFA_REGISTRY_PORT``); with ``--postgres-url`` its calendar is that (empty) PostgreSQL
database (``SFA_OMF_DATABASE_URL``), else the embedded SQLite. ``--nodes`` nodes (default 4) are added first.

Each client is a thread of this process with its own kept-alive ``xmlrpc.client`` connection over TLS (alice's GID
chain, the server not verified, as sfi.py and omni do) and its own slice (``testbed.load<N>``, a slice credential
issued to alice by the authority). It makes calls in a random mix until the time is up or it has made
``--max-calls`` calls: ListResources, Allocate (one random node for one random 30-min slot among the next
``--slots``, so that clients race for the same node and slot), Provision, Status, Describe, Renew (one of its
slivers, 30 min longer) and Delete (one of its slivers). A refusal with a GENI code such as 7 (the slot is taken)
or 12 (nothing to act on) is the aggregate doing its job and is counted as a refusal. An error is what must never
happen: geni_code 5, an XML-RPC fault, or a transport error (connection reset, HTTP error, timeout).

Afterwards the calendar is read directly: a double booking is two active slivers of one node whose windows overlap.
The server's log is searched for tracebacks. The run is bounded in time and in calls, and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from serving import free_port, sfa_omf_command  # benchmarks/ is sys.path[0] when run as a script

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import create_gid, new_private_key

AUTHORITY = "testbed"
USER = "alice"
GENI_V3 = {"type": "GENI", "version": "3"}
SLOT = timedelta(minutes=30)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 60.0  # a call that takes longer is counted as a transport error
METHODS = ("ListResources", "Allocate", "Provision", "Status", "Describe", "Renew", "Delete")
WEIGHTS = (15, 30, 10, 15, 10, 10, 10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the load runs (default 180)")
    parser.add_argument("--max-calls", type=int, default=20_000, help="calls per client at most (default 20000)")
    parser.add_argument("--nodes", type=int, default=4, help="nodes the clients race for (default 4)")
    parser.add_argument("--slots", type=int, default=24, help="30-min slots the clients race for (default 24)")
    parser.add_argument("--threads", type=int, default=None, help="server worker threads (default: the config's)")
    parser.add_argument("--postgres-url", default="", help="an empty PostgreSQL database for the calendar")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the call mix")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.max_calls < 1 or args.nodes < 1 or args.slots < 1:
        parser.error("need --clients, --max-calls, --nodes, --slots >= 1 and --seconds > 0")
    return args


# -- the server ----------------------------------------------------------------------------------------------------
class Server:
    """``sfa-omf serve`` in a subprocess on free ports of 127.0.0.1; its output goes to a log file."""

    def __init__(self, config_path: str, log_path: str, environ: dict[str, str]) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.environ = environ
        self.port = int(environ["SFA_AGGREGATE_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sfa_omf_command(), "serve", "--config", self.config_path],
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with code {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"the server did not listen within {START_TIMEOUT_S:g} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""


# -- the clients ---------------------------------------------------------------------------------------------------
def node_urn(index: int) -> str:
    return f"urn:publicid:IDN+{AUTHORITY}+node+load{index}"


def request(node: int, window: tuple[str, str]) -> str:
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>'
        f'<node client_id="n" component_id="{node_urn(node)}" exclusive="true"><ol:lease_ref id_ref="l"/></node>'
        "</rspec>"
    )


@dataclass
class Tally:
    """What one client saw, per method: calls, successes, refusals by code, errors by kind."""

    calls: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    refused: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)  # geni_code 5
    faults: Counter[str] = field(default_factory=Counter)
    transport: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def error(self, kind: Counter[str], method: str, what: str) -> None:
        kind[method] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{method}: {what[:300]}")


@dataclass
class LoadClient:
    number: int
    url: str
    context: ssl.SSLContext
    slice_urn: str
    credentials: list[dict[str, str]]
    user_cred: str
    base: datetime
    nodes: int
    slots: int
    rng: random.Random
    tally: Tally = field(default_factory=Tally)
    slivers: list[str] = field(default_factory=list)
    ends: dict[str, datetime] = field(default_factory=dict)  # sliver URN -> end of its slot

    def proxy(self) -> Any:
        return xmlrpc.client.ServerProxy(self.url, context=self.context, allow_none=True)

    def run(self, stop_at: float, max_calls: int) -> None:
        proxy = self.proxy()
        made = 0
        while made < max_calls and time.monotonic() < stop_at:
            method = self.rng.choices(METHODS, WEIGHTS)[0]
            made += 1
            self.tally.calls[method] += 1
            try:
                answer = self.call(proxy, method)
            except xmlrpc.client.Fault as fault:
                self.tally.error(self.tally.faults, method, f"fault {fault.faultCode}: {fault.faultString}")
                proxy = self.proxy()
                continue
            except (
                OSError,
                xmlrpc.client.ProtocolError,
                xmlrpc.client.ResponseError,
                http.client.HTTPException,
            ) as exc:
                self.tally.error(self.tally.transport, method, repr(exc))
                proxy = self.proxy()
                continue
            code = answer["code"]["geni_code"]
            if code == 0:
                self.tally.ok[method] += 1
                self.remember(method, answer["value"])
            elif code == 5:
                self.tally.error(self.tally.server_errors, method, str(answer.get("output")))
            else:
                self.tally.refused[(method, code)] += 1

    def call(self, proxy: Any, method: str) -> Any:
        urns = [self.slice_urn]
        if method == "ListResources":
            return proxy.ListResources([self.user_cred], {"geni_rspec_version": GENI_V3, "list_leases": "all"})
        if method == "Allocate":
            node = self.rng.randrange(self.nodes)
            start = self.base + SLOT * self.rng.randrange(self.slots)
            window = (format_time(start), format_time(start + SLOT))
            return proxy.Allocate(self.slice_urn, self.credentials, request(node, window), {})
        if method == "Provision":
            return proxy.Provision(urns, self.credentials, {"geni_rspec_version": GENI_V3})
        if method == "Status":
            return proxy.Status(urns, self.credentials, {})
        if method == "Describe":
            return proxy.Describe(urns, self.credentials, {"geni_rspec_version": GENI_V3})
        sliver = self.rng.choice(self.slivers) if self.slivers else ""
        if method == "Renew":
            if not sliver:
                return proxy.Renew(urns, self.credentials, format_time(self.base + SLOT), {})
            return proxy.Renew([sliver], self.credentials, format_time(self.ends[sliver] + SLOT), {})
        return proxy.Delete([sliver] if sliver else urns, self.credentials, {})

    def remember(self, method: str, value: Any) -> None:
        """The slice's slivers (and their ends) as the last answer listing them told."""
        if method in ("Allocate", "Provision", "Status", "Describe"):
            slivers = value["geni_slivers"]
        elif method in ("Renew", "Delete"):
            slivers = value
        else:
            return
        for sliver in slivers:
            urn = sliver.get("geni_sliver_urn")
            if not urn:
                continue
            if sliver["geni_allocation_status"] == "geni_unallocated":
                self.ends.pop(urn, None)
            else:
                self.ends[urn] = datetime.fromisoformat(sliver["geni_end_time"].replace("Z", "+00:00"))
        self.slivers = sorted(self.ends)


# -- the check afterwards --------------------------------------------------------------------------------------------
def double_bookings(database: Database) -> tuple[int, int, list[str]]:
    """(active slivers, overlapping pairs, examples): two active slivers of one node whose windows overlap."""
    by_node: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for lease in Bookings(database).leases():
        for sliver in lease.slivers:
            by_node[sliver.node].append((sliver.start, sliver.end, sliver.urn))
    pairs = 0
    examples = []
    for node, windows in by_node.items():
        windows.sort()
        for index, (start, end, urn) in enumerate(windows):
            for other_start, _other_end, other_urn in windows[index + 1 :]:
                if other_start >= end:
                    break
                pairs += 1
                if len(examples) < 5:
                    examples.append(f"{node}: {urn} [{start}, {end}) and {other_urn} from {other_start}")
    return sum(len(windows) for windows in by_node.values()), pairs, examples


# -- main ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    socket.setdefaulttimeout(CALL_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="sfa-omf-load-") as workdir:
        directory = os.path.join(workdir, "authority")
        report = init_directory(directory, AUTHORITY, (USER,))
        config_path = os.path.join(directory, "sfa-omf.conf")
        environ = dict(
            os.environ, SFA_AGGREGATE_PORT=str(free_port()), SFA_REGISTRY_PORT=str(free_port()), SFA_OMF_LOG_FILE=""
        )
        if args.postgres_url:
            environ["SFA_OMF_DATABASE_URL"] = args.postgres_url
        if args.threads is not None:
            environ["SFA_OMF_THREADS"] = str(args.threads)
        # Every client is 127.0.0.1 here, where a deployment sees many peers: the per-peer cap (64 by default)
        # would count the whole load as one peer's, and a client's new connection can arrive before its last one's
        # close is seen.
        environ["SFA_OMF_MAX_CONNECTIONS_PER_PEER"] = str(max(64, 4 * args.clients))
        settings = read_config(config_path, environ)
        database = Database(settings.calendar_url)
        database.upgrade()
        inventory = Inventory(database)
        if inventory.list_nodes():
            raise SystemExit(f"the calendar at {settings.calendar_url} holds nodes already: give an empty database")
        for index in range(args.nodes):
            inventory.add_node(NodeSpec(node_urn(index), f"load{index}", hardware_type="demo"))

        sfi = report.sfi_dirs[USER]
        authority = LocalAuthority.load(directory, AUTHORITY)
        alice = load_gid_chain_file(os.path.join(sfi, f"{AUTHORITY}.{USER}.user.gid"))
        with open(os.path.join(sfi, f"{AUTHORITY}.{USER}.user.cred"), encoding="utf-8") as handle:
            user_cred = handle.read()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(
            os.path.join(sfi, f"{AUTHORITY}.{USER}.user.gid"), os.path.join(sfi, f"{AUTHORITY}.{USER}.pkey")
        )
        slice_key = new_private_key()  # one key for every load slice: their GIDs differ by URN
        base = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        url = f"https://127.0.0.1:{settings.aggregate_port}/"
        clients = []
        for number in range(args.clients):
            urn = f"urn:publicid:IDN+{AUTHORITY}+slice+load{number}"
            slice_gid = create_gid(urn, slice_key.public_key(), authority.key, authority.chain[0])
            credential = authority.credential(alice, (slice_gid, *authority.chain))
            clients.append(
                LoadClient(
                    number,
                    url,
                    context,
                    urn,
                    [{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": credential}],
                    user_cred,
                    base,
                    args.nodes,
                    args.slots,
                    random.Random(rng.random()),
                )
            )

        server = Server(config_path, os.path.join(workdir, "server.log"), environ)
        server.start()
        try:
            print("Mixed load over TLS (sfa-omf)")
            print(
                f"  python     {platform.python_implementation()} {platform.python_version()} on {platform.platform()}"
            )
            print(f"  cpu count  {os.cpu_count()} (server and clients share them)")
            print(
                f"  server     sfa-omf serve, {settings.threads} worker threads, "
                f"{'PostgreSQL' if args.postgres_url else 'SQLite'} calendar"
            )
            print(
                f"  load       {args.clients} clients x {args.seconds:g} s (<= {args.max_calls} calls each), "
                f"{args.nodes} nodes x {args.slots} slots of 30 min raced for"
            )
            print(flush=True)
            started = time.monotonic()
            stop_at = started + args.seconds
            threads = [
                threading.Thread(target=client.run, args=(stop_at, args.max_calls), daemon=True) for client in clients
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=args.seconds + 2 * CALL_TIMEOUT_S)
            elapsed = time.monotonic() - started
            still_running = sum(thread.is_alive() for thread in threads)
        finally:
            server.stop()
        active, overlaps, overlap_examples = double_bookings(database)
        database.dispose()
        tracebacks = server.log_text().count("Traceback")
        return report_run(clients, elapsed, still_running, active, overlaps, overlap_examples, tracebacks)


def report_run(
    clients: list[LoadClient],
    elapsed: float,
    still_running: int,
    active: int,
    overlaps: int,
    overlap_examples: list[str],
    tracebacks: int,
) -> int:
    total = Tally()
    for client in clients:
        for name in ("calls", "ok", "refused", "server_errors", "faults", "transport"):
            getattr(total, name).update(getattr(client.tally, name))
        total.examples += client.tally.examples
    print(
        f"{'method':<15}{'calls':>8}{'ok':>8}{'refused':>9}  {'refusal codes':<22}{'code 5':>8}{'faults':>8}"
        f"{'transport':>11}"
    )
    print("-" * 89)
    for method in METHODS:
        codes = ", ".join(f"{code}: {count}" for (name, code), count in sorted(total.refused.items()) if name == method)
        refused = sum(count for (name, _), count in total.refused.items() if name == method)
        print(
            f"{method:<15}{total.calls[method]:>8,}{total.ok[method]:>8,}{refused:>9,}  {codes:<22}"
            f"{total.server_errors[method]:>8}{total.faults[method]:>8}{total.transport[method]:>11}"
        )
    calls = sum(total.calls.values())
    errors = sum(total.server_errors.values()) + sum(total.faults.values()) + sum(total.transport.values())
    print("-" * 89)
    print(f"{'all':<15}{calls:>8,}{sum(total.ok.values()):>8,}{sum(total.refused.values()):>9,}")
    print()
    print(f"calls/s            {calls / elapsed:.1f} ({calls:,} calls in {elapsed:.1f} s)")
    print(f"errors             {errors} (geni_code 5, XML-RPC faults, transport errors)")
    print(f"clients still busy {still_running} at the end (a hung call)")
    print(f"active slivers     {active} in the calendar afterwards")
    print(f"double bookings    {overlaps} (two active slivers of one node overlapping)")
    print(f"server tracebacks  {tracebacks} (in its log)")
    for example in total.examples[:5]:
        print(f"  error: {example}")
    for example in overlap_examples:
        print(f"  double booking: {example}")
    return 0 if errors == 0 and overlaps == 0 and tracebacks == 0 and still_running == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
