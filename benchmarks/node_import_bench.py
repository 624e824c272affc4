"""Filling the inventory: ``import_nodes`` from a CSV file (sfa-omf node import --from-file) against adding nodes one
by one with ``Inventory.add_node`` and with the ``sfa-omf node add`` command, measured in the same run.

Run from the repository root, with the project's virtualenv:

    python benchmarks/node_import_bench.py                       # SQLite, 10 000 nodes
    python benchmarks/node_import_bench.py --postgres-url URL    # also PostgreSQL (its public schema is dropped)

Rows: *import* — ``read_node_file`` + ``import_nodes`` of N nodes into an empty calendar; *re-run* — the same file
again (every node unchanged: read and compared, nothing written); *update* — the file with every node's properties
changed (N updates); *add_node* — ``Inventory.add_node`` for the first ``--sample`` nodes, one unit of work each;
*cli* — ``sfa-omf node add`` for ``--cli-sample`` nodes (a process each, as an operator's script would run it).
Per-node figures of the sampled rows are extrapolated to N. Before reporting, the script checks that the import made
exactly N nodes with the file's fields, that the re-run changed nothing and the update changed every node.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from sfa_omf.calendar.bulk_import import import_nodes, read_node_file
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Node
from sfa_omf.calendar.records import NodeSpec

HEADER = "component_id,component_name,hardware_type,disk_images,room"


def node_urn(index: int) -> str:
    return f"urn:publicid:IDN+testbed+node+imp{index:05d}"


def write_file(path: Path, count: int, room: str) -> None:
    rows = [f"{node_urn(i)},imp{i:05d},icarus,ubuntu:Linux:24.04;debian,{room}{i % 50}" for i in range(count)]
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")


def fresh(backend: str, url: str) -> Database:
    if backend == "postgresql":
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    database = Database(url)
    database.upgrade()
    return database


def timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(backend: str, url: str, args: argparse.Namespace, tmp: Path) -> list[tuple[str, int, float]]:
    nodes = args.nodes
    tmp.mkdir(parents=True)
    path = tmp / "nodes.csv"
    write_file(path, nodes, "B")
    database = fresh(backend, url)
    rows: list[tuple[str, int, float]] = []
    try:
        report = None

        def run_import() -> None:
            nonlocal report
            report = import_nodes(database, read_node_file(path))

        rows.append(("import", nodes, timed(run_import)))
        assert report is not None and report.added == nodes, report
        with database.read() as session:
            count = session.scalar(select(func.count()).select_from(Node))
        sample = Inventory(database).get_node(node_urn(7))
        if count != nodes or sample.properties != {"room": "B7"} or len(sample.disk_images) != 2:
            raise SystemExit(f"{backend}: the import did not make the file's nodes")
        rows.append(("re-run", nodes, timed(run_import)))
        assert report is not None and (report.added, report.updated, report.unchanged) == (0, 0, nodes), report
        write_file(path, nodes, "C")
        rows.append(("update", nodes, timed(run_import)))
        assert report is not None and report.updated == nodes, report
        inventory = Inventory(database)
        started = time.perf_counter()
        for index in range(args.sample):
            inventory.add_node(
                NodeSpec(f"urn:publicid:IDN+testbed+node+one{index:05d}", f"one{index:05d}", hardware_type="icarus")
            )
        rows.append(("add_node", args.sample, time.perf_counter() - started))
    finally:
        database.dispose()
    config = tmp / "tb" / "sfa-omf.conf"
    if args.cli_sample and backend == "sqlite":  # the command's own configuration: the embedded SQLite calendar
        command = [sys.executable, "-m", "sfa_omf.cli"]
        subprocess.run([*command, "init", str(tmp / "tb")], check=True, capture_output=True)
        started = time.perf_counter()
        for index in range(args.cli_sample):
            subprocess.run(
                [*command, "node", "add", f"urn:publicid:IDN+testbed+node+cli{index}", "--config", str(config)],
                check=True,
                capture_output=True,
            )
        rows.append(("cli", args.cli_sample, time.perf_counter() - started))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", help="also measure PostgreSQL (its public schema is dropped)")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=300, help="nodes added one by one with Inventory.add_node")
    parser.add_argument("--cli-sample", type=int, default=5, help="nodes added with sfa-omf node add")
    args = parser.parse_args(argv)
    print("Node import benchmark (sfa-omf)")
    print(f"  python        {platform.python_implementation()} {platform.python_version()}, cpu count {os.cpu_count()}")
    print(f"  nodes         {args.nodes:,} (add_node sample {args.sample}, sfa-omf node add sample {args.cli_sample})")
    results: list[tuple[str, str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        backends = [("sqlite", sqlite_url(str(Path(tmp) / "import.sqlite")))]
        if args.postgres_url:
            backends.append(("postgresql", args.postgres_url))
        for backend, url in backends:
            for name, count, seconds in measure(backend, url, args, Path(tmp) / backend):
                results.append((backend, name, count, seconds))
                print(f"  {backend:<11}{name:<9}{count:>7,} nodes {seconds:9.2f} s", flush=True)
    print()
    projected_title = f"{args.nodes:,} nodes (s)"
    header = (
        f"{'backend':<11}{'method':<10}{'nodes':>7}{'seconds':>10}{'ms/node':>10}{projected_title:>18}{'vs import':>11}"
    )
    print(header)
    print("-" * len(header))
    for backend, name, count, seconds in results:
        per_node = seconds / count
        projected = per_node * args.nodes
        base = next(s / c for b, n, c, s in results if b == backend and n == "import")
        cli_base = next((s / c for b, n, c, s in results if b == "sqlite" and n == "import"), base)
        ratio = per_node / (cli_base if name == "cli" else base)
        figures = f"{seconds:>10.2f}{per_node * 1000:>10.3f}{projected:>18.1f}{ratio:>10.0f}x"
        print(f"{backend:<11}{name:<10}{count:>7,}{figures}")
    print(
        "ms/node = seconds / nodes; the last columns extrapolate to the file's size and compare the cost per node with "
        "the import's (same backend)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
