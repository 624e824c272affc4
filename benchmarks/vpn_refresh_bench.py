"""The node VPN's refresh on several hosts sharing one PostgreSQL (sfa_omf/agents/vpn.py, calendar/vpn_records.py):
what every serving process pays every 5 s, with ``--nodes`` nodes holding a certificate.

Run from the repository root, with the project's virtualenv (the database's public schema is dropped):

    python benchmarks/vpn_refresh_bench.py --postgres-url URL [--nodes 1000]

Two hosts (A and B: two data directories with the cluster's CA) and a second worker process of host A (a second
VpnCa on A's directory). Rows (median ms): *version query* — ``VpnRecords.version()`` alone, the floor of a refresh
that finds nothing changed (one statement); *refresh, nothing changed* — ``VpnCa.refresh()`` of each worker of A in
the steady state (its files older than the coarsest timestamp tick); *revoke / issue through B* — the records and B's
own refresh; *refresh after B's change* — A's first worker writing the CRL and the node's files, then its second
worker reading what the first wrote. The last line counts the calendar generation's bumps by the VPN's writes (none:
no cached answer shows VPN rows).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from calendar_bench import check_database_url
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, text

from sfa_omf.agents.vpn import CA_FILES, VpnCa, _leaf, node_address
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.vpn_records import IssuedCertificate, VpnRecords
from sfa_omf.trust.pki import new_private_key

ROUNDS = 20


def timed(call: Callable[[], object], repeat: int = 1) -> list[float]:
    spent = []
    for _ in range(repeat):
        begin = time.perf_counter()
        call()
        spent.append((time.perf_counter() - begin) * 1000)
    return spent


def generation_of(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--postgres-url", required=True, help="an empty PostgreSQL database (its public schema is dropped)"
    )
    parser.add_argument("--nodes", type=int, default=1_000)
    args = parser.parse_args(argv)
    check_database_url(args.postgres_url)
    engine = create_engine(args.postgres_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    database = Database(args.postgres_url)
    database.upgrade()
    root = Path(tempfile.mkdtemp(prefix="vpn-bench-"))
    rows: list[tuple[str, list[float]]] = []
    try:
        a = VpnCa(str(root / "a"), "bench", VpnRecords(database))
        (root / "b").mkdir()
        for name in CA_FILES:
            shutil.copy2(root / "a" / name, root / "b" / name)
        b = VpnCa(str(root / "b"), "bench", VpnRecords(database))
        key = new_private_key().public_key()
        issued = []
        for number in range(1, args.nodes + 1):  # signed here, recorded at once (issuing one by one takes minutes)
            certificate = _leaf(f"n{number}", key, a.ca_key, a.ca, server=False)
            pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
            issued.append(IssuedCertificate(f"n{number}", certificate.serial_number, str(node_address(number)), pem))
        a.records.record_local(set(), issued)
        a.refresh()
        b.refresh()
        second = VpnCa(str(root / "a"), "bench", VpnRecords(database))  # a second worker process of host A
        time.sleep(2.5)  # the files older than the coarsest timestamp tick: the steady state
        a.refresh()
        second.refresh()
        records = VpnRecords(database)
        rows.append(("version query (floor)", timed(records.version, ROUNDS)))
        rows.append(("refresh, nothing changed, worker 1", timed(a.refresh, ROUNDS)))
        rows.append(("refresh, nothing changed, worker 2", timed(second.refresh, ROUNDS)))
        before = generation_of(database)
        revoke: list[float] = []
        issue: list[float] = []
        after_revoke: list[float] = []
        after_revoke_second: list[float] = []
        for number in range(1, 6):
            revoke += timed(lambda hostname=f"n{number}": b.revoke_node(hostname))
            after_revoke += timed(a.refresh)
            after_revoke_second += timed(second.refresh)
            issue += timed(lambda hostname=f"n{number}", node_id=number: b.issue(hostname, node_id, key))
            a.refresh()
            second.refresh()
        rows += [
            ("revoke through host B", revoke),
            ("issue through host B", issue),
            ("refresh after B's change, worker 1", after_revoke),
            ("refresh after B's change, worker 2", after_revoke_second),
        ]
        bumps = generation_of(database) - before
    finally:
        shutil.rmtree(root)
        database.dispose()
    floor = statistics.median(rows[0][1])
    print(f"Node VPN refresh, {args.nodes:,} nodes with a certificate, two hosts on one PostgreSQL")
    header = f"{'measured':<38}{'runs':>6}{'median ms':>11}{'min ms':>9}{'vs floor':>10}"
    print(header)
    print("-" * len(header))
    for name, spent in rows:
        median = statistics.median(spent)
        print(f"{name:<38}{len(spent):>6}{median:>11.2f}{min(spent):>9.2f}{median / floor:>9.1f}x")
    print(f"calendar generation bumps by the 10 VPN writes above: {bumps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
