"""Calls per second over kept-alive TLS: the real ``sfa-omf serve`` against a trivial Twisted XML-RPC/TLS server
answering the same bytes, measured in the same run (issue 15: Status >= 0.5x, Allocate >= 0.25x).

Run from the repository root, with the project's virtualenv:

    python benchmarks/throughput_bench.py                  # about 40 s
    python benchmarks/throughput_bench.py --clients 1,8 --seconds 3
    python benchmarks/throughput_bench.py --methods Allocate      # the Allocate + Delete rows only
    python benchmarks/throughput_bench.py --clients 8 --seconds 8 --rounds 4   # each row 4 times, and the median

The real server is am_bench.py's (``sfa-omf serve`` in a subprocess on a temporary ``init_directory`` authority,
SQLite calendar, 100 nodes added with ``Inventory.add_node``). The trivial server is this file run with ``--trivial``
in another subprocess: ``twisted.web.xmlrpc.XMLRPC`` on a pyOpenSSL context made by sfa-omf's own ``ServerTls``
(same key and chain, a client certificate asked for), whose methods return, without looking at their arguments, the
answers the real server gave to the same calls before timing; so both marshal the same value into the same bytes,
and the trivial one does nothing else (no credential, no calendar, no thread hand-off). It is the floor: what
Twisted, TLS and XML-RPC cost in one CPython process.

Rows: *Status* of the demo slice (one sliver) and *Allocate* (each client in a slice of its own, as experimenters
booking at once are: each Allocate books one node for one future 30-min slot, every one different among those in
flight, and is followed by the Delete of its sliver; calls/s counts the Allocates of these pairs, so it is also the
pairs' rate), by 1 and 8 concurrent clients (threads of this process, each with its own kept-alive
connection, connected before the clock starts). Every timed answer's geni_code is checked. *vs trivial* is the
real server's calls/s divided by the trivial server's for the same method and clients, measured one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from am_bench import (  # benchmarks/ is sys.path[0] when run as a script
    AUTHORITY,
    SLICE_URN,
    USER,
    Calls,
    Client,
    Server,
    add_nodes,
    check_calls,
    make_context,
    new_sliver,
    request_rspec,
    value,
)
from calendar_bench import check_database_url
from serving import free_port
from sqlalchemy import text

from sfa_omf.calendar.database import Database
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import utcnow

CALL_TIMEOUT_S = 120.0
GOALS = {"Status": 0.5, "Allocate": 0.25}


@dataclass(frozen=True)
class Row:
    server: str
    method: str
    clients: int
    calls: int
    elapsed: float
    server_cpu: float  # fraction of one core
    round: int = 1  # (--rounds) which of the rounds measured it

    @property
    def per_second(self) -> float:
        return self.calls / self.elapsed

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000.0 * self.server_cpu * self.elapsed / self.calls


# -- the trivial server (run in its own process) --------------------------------------------------------------------
def run_trivial(port: int, key: str, chain: str, answers_path: str) -> None:
    """twisted.web.xmlrpc.XMLRPC answering each method with a recorded value, TLS by sfa-omf's ServerTls."""
    from twisted.internet import reactor
    from twisted.web import server, xmlrpc

    from sfa_omf.server.tls import ServerTls

    with open(answers_path, encoding="utf-8") as handle:
        answers: dict[str, Any] = json.load(handle)

    class Trivial(xmlrpc.XMLRPC):
        def lookupProcedure(self, procedurePath: str) -> Callable[..., Any]:
            answer = answers[procedurePath]
            return lambda *_: answer

    reactor.listenSSL(port, server.Site(Trivial(allowNone=True)), ServerTls(key, chain), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


class Trivial:
    """This script with ``--trivial`` in a subprocess; cpu_seconds like am_bench's Server."""

    def __init__(self, key: str, chain: str, answers_path: str, log_path: str) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/"
        command = [sys.executable, __file__, "--trivial", str(self.port), key, chain, answers_path]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the trivial server exited with {self.process.returncode}")
            with suppress(OSError), __import__("socket").create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise SystemExit("the trivial server did not listen")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


# -- measuring ------------------------------------------------------------------------------------------------------
def measure(
    name: str,
    cpu: Callable[[], float],
    method: str,
    call: Callable[[Any, int], int],
    proxy: Callable[[], Any],
    clients: int,
) -> Row:
    """``clients`` threads, each with its own kept-alive proxy (warmed up before the clock); ``call(proxy, index)``
    (index: the client's number) returns the calls made."""
    stop_at = [0.0]
    cpu_at_start = [0.0]

    def start_clock() -> None:
        cpu_at_start[0] = cpu()
        stop_at[0] = time.perf_counter() + ARGS.seconds

    barrier = threading.Barrier(clients + 1, action=start_clock)
    counts = [0] * clients
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            mine = proxy()
            call(mine, index)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        barrier.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                counts[index] += call(mine, index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    with suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = stop_at[0] - ARGS.seconds
    for thread in threads:
        thread.join(timeout=ARGS.seconds + CALL_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{name} {method} with {clients} clients failed: {errors[0]!r}")
    row = Row(name, method, clients, sum(counts), elapsed, (cpu() - cpu_at_start[0]) / elapsed)
    print(f"  {name:<8}{method:<10}{clients:>3} clients {row.per_second:9.1f} calls/s", flush=True)
    return row


@dataclass(frozen=True)
class BenchSlice:
    """A slice of alice's for one client's Allocates, and her credential for it."""

    urn: str
    credential: dict[str, str]


def bench_slices(directory: str, count: int) -> list[BenchSlice]:
    """``count`` slices of their own for the clients' Allocates, as 8 experimenters booking at once have: an
    Allocate answers its whole slice, so clients sharing one would each be answered every other client's slivers
    (not the bytes the trivial server repeats)."""
    authority = LocalAuthority.load(directory, AUTHORITY)
    alice = authority.issued_chain(authority.child_hrn(USER))
    slices = []
    for number in range(count):
        chain, _ = authority.issue_gid(authority.child_hrn(f"bench{number}"), "slice")
        credential = {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": authority.credential(alice, chain)}
        slices.append(BenchSlice(str(chain[0].urn), credential))
    return slices


def allocate_in(proxy: Any, bench_slice: BenchSlice, node: int, window: tuple[str, str]) -> Any:
    """Allocate one node for one slot in the client's slice (its answer; geni_code checked)."""
    return proxy.Allocate(bench_slice.urn, [bench_slice.credential], _rspec(node, window), {})


def real_calls(calls: Calls, slices: list[BenchSlice], lock: threading.Lock) -> dict[str, Callable[[Any, int], int]]:
    def status(proxy: Any, _index: int) -> int:
        calls.status(proxy)
        return 1

    def allocate(proxy: Any, index: int) -> int:
        with lock:
            node, window = calls.client.booking()
        mine = slices[index]
        sliver = new_sliver(value(allocate_in(proxy, mine, node, window), "Allocate"), window)
        value(proxy.Delete([sliver], [mine.credential], {}), "Delete")
        return 1

    return {"Status": status, "Allocate": allocate}


def trivial_calls(calls: Calls, slices: list[BenchSlice]) -> dict[str, Callable[[Any, int], int]]:
    """The same calls (same request bytes shape), against recorded answers; geni_code checked as for the real one."""

    def status(proxy: Any, _index: int) -> int:
        calls.status(proxy)
        return 1

    def allocate(proxy: Any, index: int) -> int:
        mine = slices[index]
        value(allocate_in(proxy, mine, *calls.client.booking_at(0)), "Allocate")
        value(proxy.Delete(["urn:publicid:IDN+testbed+sliver+1"], [mine.credential], {}), "Delete")
        return 1

    return {"Status": status, "Allocate": allocate}


def record_answers(calls: Calls, proxy: Any, first: BenchSlice) -> dict[str, Any]:
    """What the real server answers to Status, and to Allocate and Delete in a client's slice (the trivial server
    repeats these)."""
    node, window = calls.client.booking()
    allocated = allocate_in(proxy, first, node, window)
    sliver = new_sliver(allocated["value"], window)
    deleted = proxy.Delete([sliver], [first.credential], {})
    status = proxy.Status([SLICE_URN], [calls.client.slice_cred], {})
    return {"Allocate": allocated, "Delete": deleted, "Status": status}


def _rspec(node: int, window: tuple[str, str]) -> str:
    return request_rspec([(node, window)])


def mean_row(first: Row, second: Row) -> Row:
    """Two measurements of the same thing as one (their calls and times added)."""
    elapsed = first.elapsed + second.elapsed
    cpu = (first.server_cpu * first.elapsed + second.server_cpu * second.elapsed) / elapsed
    return Row(first.server, first.method, first.clients, first.calls + second.calls, elapsed, cpu, first.round)


CYCLE_SLOTS = 20 * 48  # the 30-min slots of 20 days: bookings stay inside the slice credential's 30 days
KEPT_SLOTS = 16  # never booked again: more than the bookings made before timing (check_calls, record_answers)


# -- main -----------------------------------------------------------------------------------------------------------
class BenchClient(Client):
    def booking(self) -> tuple[int, tuple[str, str]]:
        """A node and a 30-min slot no other sliver of the slice holds: am_bench.py's bookings (the next slot on
        every booking) over the first ``CYCLE_SLOTS`` slots, then over them again but the first ``KEPT_SLOTS``
        (each timed booking is deleted right after it is made; the checks before timing keep one in the first
        slots): thousands of calls would otherwise book past the slice credential's 30 days."""
        from sfa_omf.times import format_time

        index = self.next_booking
        self.next_booking += 1
        slot = index if index < CYCLE_SLOTS else KEPT_SLOTS + (index - KEPT_SLOTS) % (CYCLE_SLOTS - KEPT_SLOTS)
        start = self.base + timedelta(minutes=30) * slot
        return index % self.nodes, (format_time(start), format_time(start + timedelta(minutes=30)))

    def booking_at(self, index: int) -> tuple[int, tuple[str, str]]:
        """A fixed booking (the trivial server does not look at it)."""
        from sfa_omf.times import format_time

        start = self.base + timedelta(minutes=30) * index
        return index % self.nodes, (format_time(start), format_time(start + timedelta(minutes=30)))


def print_table(rows: list[Row]) -> None:
    print()
    header = (
        f"{'method':<10}{'clients':>8}{'trivial/s':>11}{'sfa-omf/s':>11}{'vs trivial':>12}{'goal':>7}"
        f"{'trivial cpu':>13}{'sfa-omf cpu':>13}{'cpu ms/call':>13}{'trivial':>9}{'cpu ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    rounds = max(row.round for row in rows)
    ratios: dict[tuple[str, int], list[float]] = {}
    for real in (row for row in rows if row.server == "sfa-omf"):
        floor = next(
            r
            for r in rows
            if r.server == "trivial" and (r.method, r.clients, r.round) == (real.method, real.clients, real.round)
        )
        ratios.setdefault((real.method, real.clients), []).append(real.per_second / floor.per_second)
        print(
            f"{real.method:<10}{real.clients:>8}{floor.per_second:>11.1f}{real.per_second:>11.1f}"
            f"{real.per_second / floor.per_second:>11.2f}x{GOALS[real.method]:>6.2f}x"
            f"{100 * floor.server_cpu:>12.0f}%{100 * real.server_cpu:>12.0f}%"
            f"{real.cpu_ms_per_call:>13.2f}{floor.cpu_ms_per_call:>9.2f}"
            f"{floor.cpu_ms_per_call / real.cpu_ms_per_call:>10.2f}x"
        )
    if rounds > 1:
        print()
        for (method, clients), measured in ratios.items():
            met = sum(1 for ratio in measured if ratio >= GOALS[method])
            print(
                f"{method} with {clients} clients, {len(measured)} rounds: median {statistics.median(measured):.2f}x "
                f"the trivial server (goal {GOALS[method]:.2f}x, met in {met} of {len(measured)})"
            )
    print("calls/s over kept-alive TLS connections; Allocate: Allocate + Delete pairs, counted once per pair.")
    print("cpu: the server process's CPU time / wall time (100 % = one core); cpu ms/call: its CPU time per call")
    print("(sfa-omf, then trivial); cpu ratio: trivial's CPU per call / sfa-omf's (what the calls/s ratio would be")
    print("if both servers were limited by their own CPU alone, not by waits such as the database's commits).")


ARGS = argparse.Namespace(seconds=2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    parser.add_argument("--clients", default="1,8", help="concurrent clients (default 1,8)")
    parser.add_argument("--methods", default="Status,Allocate", help="rows to measure (default Status,Allocate)")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, in turns, and print the median ratio (default 1): single runs on a "
        "shared machine vary by a third",
    )
    parser.add_argument("--threads", type=int, default=None, help="the real server's worker threads")
    parser.add_argument(
        "--postgres-url", help="the real server's calendar in this PostgreSQL database (its public schema is dropped)"
    )
    args = parser.parse_args(argv)
    if args.postgres_url:
        check_database_url(args.postgres_url)
        os.environ["SFA_OMF_DATABASE_URL"] = args.postgres_url  # the server's environment is a copy of this one
        empty = Database(args.postgres_url)
        with empty.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        empty.dispose()
    ARGS.seconds = args.seconds
    clients = [int(part) for part in args.clients.split(",")]
    print("Status and Allocate calls/s: sfa-omf serve against a trivial Twisted XML-RPC/TLS server (sfa-omf)")
    print(f"  python        {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cpus")
    load = os.getloadavg()[0]
    print(f"  budget        {args.seconds:g} s per row; clients are threads of this process; load {load:.1f}")
    with tempfile.TemporaryDirectory(prefix="sfa-omf-throughput-") as workdir:
        directory = os.path.join(workdir, "authority")
        report = init_directory(directory, AUTHORITY, (USER,))
        sfi = report.sfi_dirs[USER]
        with open(os.path.join(sfi, f"{AUTHORITY}.{USER}.user.cred"), encoding="utf-8") as handle:
            user_cred = handle.read()
        with open(os.path.join(sfi, f"{AUTHORITY}.{USER}-{AUTHORITY}.demo.slice.cred"), encoding="utf-8") as handle:
            slice_cred = {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": handle.read()}
        server = Server(os.path.join(directory, "sfa-omf.conf"), os.path.join(workdir, "server.log"), args.threads)
        # One serving process against the trivial server's one: on PostgreSQL ``serve`` would otherwise fork a worker
        # per core, and the CPU read from the master's /proc entry would be none of theirs.
        server.environ["SFA_OMF_WORKERS"] = "1"
        database = Database(server.settings.calendar_url)
        database.upgrade()
        add_nodes(database, 0, args.nodes)
        database.dispose()
        base = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        context = make_context(
            os.path.join(sfi, f"{AUTHORITY}.{USER}.user.gid"), os.path.join(sfi, f"{AUTHORITY}.{USER}.pkey")
        )
        client = BenchClient(server.url, context, user_cred, slice_cred, args.nodes, base)
        calls = Calls(client)
        rows: list[Row] = []
        with server.running():
            check_calls(calls, args.nodes)
            slices = bench_slices(directory, max(clients))
            answers = record_answers(calls, client.proxy(), slices[0])
            backend = "PostgreSQL" if args.postgres_url else "SQLite"
            print(f"  server        sfa-omf serve, {server.settings.threads} worker threads, {backend} calendar")
            answers_path = os.path.join(workdir, "answers.json")
            with open(answers_path, "w", encoding="utf-8") as handle:
                json.dump(answers, handle)
            # The real server's key and chain, as app.py reads them.
            key = os.path.join(server.settings.data_dir, "aggregate", "am.pkey")
            chain = os.path.join(server.settings.data_dir, "aggregate", "am.gid")
            trivial = Trivial(key, chain, answers_path, server.log_path)
            try:
                trivial_client = BenchClient(trivial.url, context, user_cred, slice_cred, args.nodes, base)
                if trivial_client.proxy().Status([SLICE_URN], [slice_cred], {}) != answers["Status"]:
                    raise SystemExit("the trivial server does not answer what the real one did")
                print("Checks before timing: every call answered geni_code 0 with the expected content.", flush=True)
                real = real_calls(calls, slices, threading.Lock())
                floor = trivial_calls(Calls(trivial_client), slices)
                # Interleaved (trivial, sfa-omf, trivial) so that both see the same load on this shared machine;
                # the trivial figure is the mean of the two around the real one.
                # Several rounds each measure every row again, so that the machine's changing load falls on all.
                for number in range(1, max(1, args.rounds) + 1):
                    for method in [name for name in real if name in args.methods.split(",")]:
                        for count in clients:
                            before = measure(
                                "trivial", trivial.cpu_seconds, method, floor[method], trivial_client.proxy, count
                            )
                            mine = measure("sfa-omf", server.cpu_seconds, method, real[method], client.proxy, count)
                            after = measure(
                                "trivial", trivial.cpu_seconds, method, floor[method], trivial_client.proxy, count
                            )
                            rows.append(replace(mine, round=number))
                            rows.append(replace(mean_row(before, after), round=number))
            finally:
                trivial.stop()
    print_table(rows)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--trivial":
        run_trivial(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        sys.exit(0)
    sys.exit(main())
