"""Node agents against the real server: registrations at once, and heartbeats per second.

Run from the repository root, with the project's virtualenv:

    python benchmarks/agents_bench.py                       # 100 registering at once, 1 000 heartbeating (~2 min)
    python benchmarks/agents_bench.py --register 20 --heartbeat-agents 100 --seconds 5    # a quick look

The server is ``sfa-omf serve --config DIR/sfa-omf.conf`` (this checkout's code, ``python -m sfa_omf.cli``) in a
subprocess, after ``init_directory`` in a temporary directory, on free ports; the calendar is its SQLite file, or
``--database-url`` (PostgreSQL; the database is emptied first). The agents are threads of this process using the
agent's own client (sfa_omf/agents/node.py: a new TLS connection per call with the node's certificate, the server
verified against the root), so clients and server share the machine's cores.

1. register — ``--register`` agents, each with its own token and its own RSA key (made before timing), call
   ``enrol`` at the same moment (a barrier); timed until every one of them is answered and their nodes are all
   bookable (in the inventory, state usable: checked in the database afterwards), and until every name resolves to
   the right address in bind9 (``named`` from Debian on 127.0.0.1, a free port, the zone the aggregate writes and
   reloads with rndc; asked with one ``dig`` for all names, again and again). Latency of each registration.
2. heartbeat — ``--heartbeat-agents`` enrolled agents (one key shared among them to save key generation; each has
   its own certificate, which is what the server looks up), ``--processes`` client processes of ``--threads``
   threads each sending heartbeats round-robin over them for ``--seconds``; requests per second the server
   sustained, latency percentiles, server CPU.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serving import free_port  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
from sqlalchemy import text  # noqa: E402

from sfa_omf.agents.node import KEY, Client, enrol  # noqa: E402
from sfa_omf.calendar.agents import Agents  # noqa: E402
from sfa_omf.calendar.database import Database  # noqa: E402
from sfa_omf.calendar.inventory import Inventory  # noqa: E402
from sfa_omf.config import read_config  # noqa: E402
from sfa_omf.registry.bootstrap import init_directory  # noqa: E402
from sfa_omf.trust.pki import new_private_key, private_key_pem  # noqa: E402
from tests.agents.named import Named  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ZONE = "nodes.bench"


class Server:
    def __init__(self, directory: Path, database_url: str, extra: dict[str, str]) -> None:
        self.config = str(directory / "sfa-omf.conf")
        self.environ = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            SFA_AGGREGATE_PORT=str(free_port()),
            SFA_REGISTRY_PORT=str(free_port()),
            **extra,
        )
        if database_url:
            self.environ["SFA_OMF_DATABASE_URL"] = database_url
        self.settings = read_config(self.config, self.environ)
        database = Database(self.settings.calendar_url)
        database.upgrade()  # serve refuses an empty calendar
        database.dispose()
        self.log = open(directory / "server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sfa_omf.cli", "serve", "--config", self.config],
            env=self.environ,
            stdout=self.log,
            stderr=self.log,
        )
        for _ in range(600):
            try:
                with socket.create_connection(("127.0.0.1", self.settings.aggregate_port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"the server exited; see {directory / 'server.log'}") from None
                time.sleep(0.1)
        raise SystemExit("the server did not listen within 60 s")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.settings.aggregate_port}/"

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def register_at_once(server: Server, directory: Path, root: str, count: int, named: Named | None) -> None:
    agents = Agents(Database(server.settings.calendar_url))
    tokens = [agents.create_token("default", 3600)[0] for _ in range(count)]
    for number in range(count):  # each agent's own key, made before timing (the node's work, not the server's)
        state = directory / "reg" / f"a{number}"
        state.mkdir(parents=True)
        (state / KEY).write_bytes(private_key_pem(new_private_key()))
    barrier = threading.Barrier(count + 1)
    latencies: list[float] = [0.0] * count
    errors: list[str] = []

    def one(number: int) -> None:
        barrier.wait()
        began = time.perf_counter()
        try:
            state = str(directory / "reg" / f"a{number}")
            # Local addresses 10.1.x.y: what the DNS's "local" view (asked from 127.0.0.1) answers.
            enrol(server.url, tokens[number], root, state, f"reg{number}", f"10.1.{number // 250}.{number % 250 + 1}")
        except Exception as exc:
            errors.append(f"reg{number}: {exc}")
        latencies[number] = time.perf_counter() - began

    threads = [threading.Thread(target=one, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    cpu = server.cpu_seconds()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    nodes = Inventory(Database(server.settings.calendar_url)).list_nodes()
    bookable = sum(1 for node in nodes if node.state == "usable" and node.component_name.startswith("reg"))
    elapsed = time.perf_counter() - began
    if errors or bookable != count:
        raise SystemExit(f"registrations failed ({bookable}/{count} bookable): {errors[:5]}")
    resolvable = "-"
    if named is not None:
        expected = [f"10.1.{number // 250}.{number % 250 + 1}" for number in range(count)]
        while named.resolve([f"reg{number}" for number in range(count)]) != expected:
            if time.perf_counter() - began > 120:
                raise SystemExit("the names did not all resolve within 120 s")
            time.sleep(0.05)
        resolvable = f"{time.perf_counter() - began:.2f}"
    cpu = server.cpu_seconds() - cpu
    print(f"\n1. {count} agents registering at once (each its own key and token; new TLS connection each)")
    print(
        "   | agents | all bookable after (s) | all resolvable after (s) | registration p50 (s) | p95 (s) | max (s) "
        "| server CPU (s) |"
    )
    print("   |---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"   | {count} | {elapsed:.2f} | {resolvable} | {statistics.median(latencies):.2f} "
        f"| {percentile(latencies, 0.95):.2f} "
        f"| {max(latencies):.2f} | {cpu:.1f} |"
    )


def _heartbeat_process(
    url: str, root: str, paths: list[tuple[str, str]], threads: int, seconds: float
) -> tuple[list[float], list[str]]:
    """One client process: ``threads`` threads sending heartbeats round-robin over its agents for ``seconds``."""
    calls = [Client(url, cert, key, root) for cert, key in paths]
    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def loop(worker: int) -> None:
        position = worker
        while not stop.is_set():
            started = time.perf_counter()
            try:
                calls[position % len(calls)].call("POST", "heartbeat", {})
            except Exception as exc:
                errors.append(str(exc))
                return
            latencies.append(time.perf_counter() - started)
            position += threads

    workers = [threading.Thread(target=loop, args=(worker,)) for worker in range(threads)]
    for thread in workers:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in workers:
        thread.join()
    return latencies, errors


def heartbeats(
    server: Server, directory: Path, root: str, count: int, processes: int, threads_per_process: int, seconds: float
) -> None:
    agents = Agents(Database(server.settings.calendar_url))
    shared_key = private_key_pem(new_private_key())
    began = time.perf_counter()
    for number in range(count):
        state = directory / "hb" / f"a{number}"
        state.mkdir(parents=True)
        (state / KEY).write_bytes(shared_key)
        enrol(server.url, agents.create_token("default", 3600)[0], root, str(state), f"hb{number}")
    enrolled_in = time.perf_counter() - began
    paths = [
        (str(directory / "hb" / f"a{n}" / "node.gid"), str(directory / "hb" / f"a{n}" / KEY)) for n in range(count)
    ]
    cpu = server.cpu_seconds()
    began = time.perf_counter()
    # Client processes, not threads: one Python process cannot make TLS handshakes fast enough to load the server.
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.starmap(
            _heartbeat_process,
            [(server.url, root, paths[worker::processes], threads_per_process, seconds) for worker in range(processes)],
        )
    elapsed = time.perf_counter() - began
    cpu = server.cpu_seconds() - cpu
    errors = [error for _, worker_errors in results for error in worker_errors]
    if errors:
        raise SystemExit(f"heartbeats failed: {errors[:3]}")
    clients = processes * threads_per_process
    every = [value for worker_latencies, _ in results for value in worker_latencies]
    print(f"\n2. heartbeats of {count} enrolled agents (enrolled one after another in {enrolled_in:.1f} s)")
    print("   | agents | client threads | heartbeats | seconds | heartbeats/s | p50 (ms) | p95 (ms) | server CPU % |")
    print("   |---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"   | {count} | {clients} | {len(every)} | {elapsed:.1f} | {len(every) / elapsed:.0f} "
        f"| {1000 * statistics.median(every):.1f} | {1000 * percentile(every, 0.95):.1f} "
        f"| {100 * cpu / elapsed:.0f} |"
    )
    per_agent = len(every) / elapsed / count
    print(
        f"   each of the {count} agents was heard {per_agent:.2f} times per second; at the default heartbeat_s = 30 "
        f"this server would carry about {int(len(every) / elapsed * 30)} agents"
    )


def oar_joins(oar_url: str, count: int) -> None:
    """``count`` agents' nodes joining the real OAR at once (what a registration adds with the OAR backend), timed until
    every one is an Alive resource OAR books (one reservation over all of them is accepted); all removed afterwards."""
    import secrets
    from datetime import UTC, datetime, timedelta

    from sfa_omf.testbed.base import AgentNode
    from sfa_omf.testbed.oar.agent_nodes import OarAgentNodes
    from sfa_omf.testbed.oar.client import OarClient

    client = OarClient(oar_url, timeout_s=120)
    members = OarAgentNodes(client)
    tag = secrets.token_hex(3)
    nodes = [AgentNode(f"bench{tag}n{number}", 900000 + number, f"127.2.0.{number + 1}") for number in range(count)]
    latencies = [0.0] * count
    barrier = threading.Barrier(count + 1)
    errors: list[str] = []

    def one(number: int) -> None:
        barrier.wait()
        began = time.perf_counter()
        try:
            members.join(nodes[number], lambda: None)  # one process: its own lock keeps the creations apart
        except Exception as exc:
            errors.append(f"{nodes[number].hostname}: {exc}")
        latencies[number] = time.perf_counter() - began

    threads = [threading.Thread(target=one, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    job_id = None
    try:
        for thread in threads:
            thread.join()
        joined = time.perf_counter() - began
        if errors:
            raise SystemExit(f"OAR joins failed: {errors[:3]}")
        start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=400 + secrets.randbelow(300))
        job_id = client.submit_reservation(
            user="alice",
            nodes=[node.hostname for node in nodes],
            start=start,
            walltime_s=3599,
            job_type="noop",
            name="sfa-omf-bench",
        )
        booked = time.perf_counter() - began
    finally:
        if job_id is not None:
            client.delete_job(job_id, user="alice")
        cleanup = time.perf_counter()
        for node in nodes:
            try:
                members.remove(node.hostname, node.number)
            except Exception as exc:  # the others are still removed; this one is named for the operator
                print(f"   could not remove {node.hostname} from OAR ({exc}): remove it by hand", file=sys.stderr)
        cleanup = time.perf_counter() - cleanup
    print(f"\n3. {count} agents' nodes joining OAR at once ({oar_url}; removed afterwards in {cleanup:.1f} s)")
    print("   | nodes | all Alive in OAR after (s) | booked by OAR after (s) | join p50 (s) | p95 (s) | max (s) |")
    print("   |---:|---:|---:|---:|---:|---:|")
    print(
        f"   | {count} | {joined:.2f} | {booked:.2f} | {statistics.median(latencies):.2f} "
        f"| {percentile(latencies, 0.95):.2f} | {max(latencies):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--register", type=int, default=100)
    parser.add_argument("--heartbeat-agents", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per client process")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--no-dns", action="store_true", help="do not run bind9 (names are then not measured)")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (emptied first); default SQLite")
    parser.add_argument("--oar-url", default="", help="a real OAR's API: also time agents' nodes joining it")
    parser.add_argument("--oar-agents", type=int, default=20, help="how many nodes join OAR at once")
    parser.add_argument("--oar-only", action="store_true", help="only the OAR part (needs --oar-url)")
    args = parser.parse_args()
    if args.oar_only:
        oar_joins(args.oar_url, args.oar_agents)
        return
    if args.database_url:
        database = Database(args.database_url)
        with database.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        database.dispose()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        init_directory(str(directory / "lab"), "lab", ("ann",))
        named = None
        if shutil.which("named") and not args.no_dns:
            named = Named(directory, directory / "lab" / "dns", ZONE)
        dns = {"SFA_AGENTS_DNS_ZONE": ZONE, "SFA_AGENTS_DNS_RELOAD": named.reload_command} if named else {}
        server = Server(directory / "lab", args.database_url, dns)
        root = str(directory / "lab" / "authority" / "lab.gid")
        print("Node agents benchmark (sfa-omf)")
        print(f"  python      {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
        print(f"  cpu count   {os.cpu_count()} (server and agents share them); load average {os.getloadavg()[0]:.1f}")
        kind = server.settings.calendar_url.split(":")[0]
        print(f"  server      sfa-omf serve, {server.settings.threads} worker threads, calendar {kind}")
        try:
            register_at_once(server, directory, root, args.register, named)
            heartbeats(server, directory, root, args.heartbeat_agents, args.processes, args.threads, args.seconds)
            if args.oar_url:
                oar_joins(args.oar_url, args.oar_agents)
        finally:
            server.stop()
            if named is not None:
                named.stop()


if __name__ == "__main__":
    main()
