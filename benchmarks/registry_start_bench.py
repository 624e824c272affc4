"""What every start of every worker does before the registry listens (server/app.py start_registry): record the GIDs
the authority issued (``Records.import_authority``) and the inventory's nodes (``record_nodes``), on a site of N nodes.

Run from the repository root, with the project's virtualenv:

    python benchmarks/registry_start_bench.py                  # SQLite, 1 000 and 3 000 nodes
    python benchmarks/registry_start_bench.py --nodes 10000

Rows: *first start* — the nodes just imported, none recorded: a GID is issued (one key for every node, as
``record_nodes`` does) and recorded for each; *restart* — everything recorded already, the work of every later start.
The floor, measured in the same run, is what no restart avoids: listing ``gids/`` and reading the recorded names (one
column). Before reporting, the script checks that every node is a record after the first start and that a restart adds
nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sfa_omf.calendar.bulk_import import NodeEntry, import_nodes
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.nodes import record_nodes
from sfa_omf.registry.records import Records


def _start(authority: LocalAuthority, records: Records, inventory: Inventory) -> float:
    began = time.perf_counter()
    records.import_authority(authority)
    record_nodes(authority, records, inventory.list_nodes())
    return time.perf_counter() - began


def _floor(authority: LocalAuthority, records: Records) -> float:
    began = time.perf_counter()
    os.listdir(os.path.join(authority.directory, "gids"))
    records.recorded_hrns()
    return time.perf_counter() - began


def measure(nodes: int, runs: int) -> tuple[float, float, float]:
    """(first start, median restart, median floor), seconds, for a site of ``nodes`` nodes on SQLite."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "tb"
        init_directory(str(directory), "tb", ())
        authority = LocalAuthority.load(str(directory), "tb")
        database = Database(sqlite_url(str(Path(scratch) / "calendar.sqlite")))
        database.upgrade()
        try:
            entries = [
                NodeEntry(f"urn:publicid:IDN+tb+node+n{index:05d}", {"component_name": f"n{index:05d}"}, "bench")
                for index in range(nodes)
            ]
            import_nodes(database, entries)
            records, inventory = Records(database), Inventory(database)
            first = _start(authority, records, inventory)
            if len(records.recorded_hrns("node")) != nodes:
                raise SystemExit("the first start did not record every node")
            restarts = [_start(authority, records, inventory) for _ in range(runs)]
            if records.import_authority(authority) != 0:
                raise SystemExit("a restart recorded something again")
            floors = [_floor(authority, records) for _ in range(runs)]
            return first, statistics.median(restarts), statistics.median(floors)
        finally:
            database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, action="append", help="site sizes (repeatable; default 1000 and 3000)")
    parser.add_argument("--runs", type=int, default=5, help="restarts measured per size")
    args = parser.parse_args()
    print(f"{'nodes':>7}  {'first start s':>13}  {'restart s':>9}  {'floor s':>8}  {'restart/floor':>13}")
    for nodes in args.nodes or [1000, 3000]:
        first, restart, floor = measure(nodes, args.runs)
        print(f"{nodes:>7}  {first:>13.2f}  {restart:>9.3f}  {floor:>8.3f}  {restart / floor:>12.1f}x")


if __name__ == "__main__":
    main()
