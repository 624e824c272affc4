"""How long the ``sfa-omf`` command takes to start: ``--help``, ``node list`` and ``credential verify``.

Run from the repository root, with the project's virtualenv:

    python benchmarks/cli_startup.py                          # 15 runs of each command
    python benchmarks/cli_startup.py --baseline ../old-copy   # also another checkout, runs interleaved with ours

Each command runs as a real subprocess (``python -m sfa_omf.cli ...`` with this interpreter and PYTHONPATH set to the
checkout measured, so that checkout's code runs whatever is installed), against an authority directory made in a
temporary directory with ``sfa-omf init`` (SQLite, three nodes). Before timing, each command is run once and its exit
status and output are checked. The table gives the wall-clock time of the whole process (interpreter start, imports,
the work, exit): median, minimum and maximum, and which heavy libraries the command imported (``-X importtime``
output, by top-level module name). With ``--baseline``, each run of ours is followed by one of the baseline, so that
a machine busy with something else slows both alike; the last column is baseline median / our median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("twisted", "sqlalchemy", "alembic", "xmlsec", "lxml", "cryptography", "OpenSSL")
CHECKOUT = os.getcwd()


def _run(checkout: str, argv: list[str], *flags: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": checkout}
    command = [sys.executable, *flags, "-m", "sfa_omf.cli", *argv]
    # cwd too: ``python -m`` puts the current directory first on sys.path
    return subprocess.run(command, env=environment, cwd=checkout, capture_output=True, text=True)


def _heavy_imports(checkout: str, argv: list[str]) -> str:
    seen = set()
    for line in _run(checkout, argv, "-X", "importtime").stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip().split(".")[0]
            if name in HEAVY:
                seen.add(name)
    return ", ".join(sorted(seen)) or "-"


def _timed(checkout: str, argv: list[str]) -> float:
    start = time.perf_counter()
    _run(checkout, argv)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", help="another checkout of sfa-omf to measure too (e.g. an older commit)")
    args = parser.parse_args()
    checkouts = {"this checkout": CHECKOUT}
    if args.baseline:
        checkouts["baseline"] = os.path.abspath(args.baseline)
    with tempfile.TemporaryDirectory() as tmp:
        lab = os.path.join(tmp, "lab")
        config = os.path.join(lab, "sfa-omf.conf")
        assert _run(CHECKOUT, ["init", lab, "--authority", "lab"]).returncode == 0
        for number in (1, 2, 3):
            urn = f"urn:publicid:IDN+lab+node+node{number}"
            assert _run(CHECKOUT, ["node", "add", urn, "--config", config]).returncode == 0
        credential = os.path.join(lab, "users", "alice", "sfi", "lab.alice-lab.demo.slice.cred")
        roots = os.path.join(lab, "trusted_roots")
        commands = {
            "sfa-omf --help": (["--help"], "usage:"),
            "sfa-omf node list": (["node", "list", "--config", config], "node3"),
            "sfa-omf credential verify": (
                ["credential", "verify", "--trusted-roots", roots, credential],
                '"valid": true',
            ),
        }
        print("sfa-omf command start-up (wall clock of the whole process)")
        print(f"  python        {platform.python_implementation()} {platform.python_version()}")
        print(f"  platform      {platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        print(f"  runs          {args.runs} per command and checkout")
        for name, path in checkouts.items():
            print(f"  {name:13} {path}")
        print()
        print(f"{'command':26} {'checkout':13} {'median ms':>9} {'min ms':>7} {'max ms':>7}  heavy imports")
        for label, (argv, expected) in commands.items():
            times: dict[str, list[float]] = {name: [] for name in checkouts}
            for name, path in checkouts.items():
                first = _run(path, argv)
                if first.returncode != 0 or expected not in first.stdout:
                    print(f"{label} ({name}): unexpected answer (exit {first.returncode}): {first.stderr[-300:]}")
                    return 1
            for _ in range(args.runs):
                for name, path in checkouts.items():  # interleaved: a busy machine slows each checkout alike
                    times[name].append(_timed(path, argv))
            for name, path in checkouts.items():
                median = statistics.median(times[name])
                row = f"{label:26} {name:13} {median:9.0f} {min(times[name]):7.0f} {max(times[name]):7.0f}"
                print(f"{row}  {_heavy_imports(path, argv)}")
            if args.baseline:
                ratio = statistics.median(times["baseline"]) / statistics.median(times["this checkout"])
                print(f"{'':26} {'ratio':13} {ratio:8.1f}x  (baseline median / this checkout's)")
        print(f"\n  load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
