"""How long the ``sfa-omf`` command takes to start: ``--help``, ``node list`` and ``credential verify``.

Run from the repository root, with the project's virtualenv:

    python benchmarks/cli_startup.py               # 15 runs of each command
    python benchmarks/cli_startup.py --runs 5

Each command runs as a real subprocess (``python -m sfa_omf.cli ...`` with this interpreter, so the code of this
checkout is measured), against an authority directory made in a temporary directory with ``sfa-omf init`` (SQLite,
three nodes). Before timing, each command is run once and its exit status and output are checked. The table gives the
wall-clock time of the whole process (interpreter start, imports, the work, exit): median, minimum and maximum, and
which heavy libraries the command imported (``-X importtime`` output, looked up by top-level module name).
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


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sfa_omf.cli", *argv], env=env, capture_output=True, text=True)


def _imports(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sfa_omf.cli", *argv], env=env, capture_output=True, text=True
    )
    seen = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        name = line.rsplit("|", 1)[1].strip().split(".")[0]
        if name in HEAVY:
            seen.add(name)
    return ", ".join(sorted(seen)) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with tempfile.TemporaryDirectory() as tmp:
        lab = os.path.join(tmp, "lab")
        config = os.path.join(lab, "sfa-omf.conf")
        assert _run(["init", lab, "--authority", "lab"], env).returncode == 0
        for number in (1, 2, 3):
            assert _run(["node", "add", f"node{number}", "--config", config], env).returncode == 0
        sfi = os.path.join(lab, "users", "alice", "sfi")
        commands = {
            "sfa-omf --help": ["--help"],
            "sfa-omf node list": ["node", "list", "--config", config],
            "sfa-omf credential verify": [
                "credential",
                "verify",
                "--trusted-roots",
                os.path.join(lab, "trusted_roots"),
                os.path.join(sfi, "lab.alice-lab.demo.slice.cred"),
            ],
        }
        checks = {"sfa-omf --help": "usage:", "sfa-omf node list": "node3", "sfa-omf credential verify": '"valid": true'}
        print("sfa-omf command start-up (wall clock of the whole process)")
        print(f"  python        {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
        print(f"  cpu count     {os.cpu_count()}")
        print(f"  runs          {args.runs} per command")
        print()
        print(f"{'command':28} {'median ms':>10} {'min ms':>8} {'max ms':>8}  heavy imports")
        for label, argv in commands.items():
            first = _run(argv, env)
            if first.returncode != 0 or checks[label] not in first.stdout:
                print(f"{label}: unexpected answer (exit {first.returncode}): {first.stdout[-300:]}{first.stderr}")
                return 1
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                _run(argv, env)
                times.append((time.perf_counter() - start) * 1000)
            print(
                f"{label:28} {statistics.median(times):10.0f} {min(times):8.0f} {max(times):8.0f}  {_imports(argv, env)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
