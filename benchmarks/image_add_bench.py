"""Image repository costs: ``sfa-omf image add`` of a large file against ``cp`` of the same file.

Run from the repository root, with the project's virtualenv:

    python benchmarks/image_add_bench.py                 # a 500 MB file, 3 runs per row, median shown
    python benchmarks/image_add_bench.py --mb 100 --runs 5

Rows (each target is deleted between runs; the source stays in the page cache after the first read, so every row
reads from memory and the differences are the copy, the hash and the sync):

* ``cp`` — coreutils cp of the file into the same directory (no checksum, not synced to disk).
* ``cp + sync`` — cp, then ``sync FILE``: the copy on disk, as image add leaves it.
* ``sha256sum`` — coreutils reading the file once for its checksum alone.
* ``image add`` — ``ImageStore.add`` (what the command runs after the group check): one read of the source in 4 MiB
  chunks, SHA-256 of each chunk, write, fsync, one row in the calendar (SQLite).

Standard library only, apart from sfa-omf itself.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.images.store import ImageStore
from sfa_omf.times import utcnow


def make_source(path: Path, size_mb: int) -> None:
    """Random bytes (incompressible), 1 MiB at a time."""
    with open(path, "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(1024 * 1024))


def timed(runs: int, action: Callable[[int], None], cleanup: Callable[[int], None]) -> list[float]:
    times = []
    for run in range(runs):
        start = time.perf_counter()
        action(run)
        times.append(time.perf_counter() - start)
        cleanup(run)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=500, help="size of the image file in MiB (default 500)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="where to work (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        root = Path(work)
        source = root / "source.img"
        make_source(source, args.mb)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        database = Database(sqlite_url(str(root / "calendar.sqlite")))
        database.upgrade()
        store = ImageStore(database, root / "images")
        copy = root / "copy.img"

        def drop_copy(_run: int) -> None:
            copy.unlink(missing_ok=True)

        def remove_image(run: int) -> None:
            store.remove(f"bench{run}", utcnow())

        def cp(_run: int) -> None:
            subprocess.run(["cp", str(source), str(copy)], check=True)

        def cp_sync(run: int) -> None:
            cp(run)
            subprocess.run(["sync", str(copy)], check=True)

        def sha256sum(_run: int) -> None:
            subprocess.run(["sha256sum", str(source)], stdout=subprocess.DEVNULL, check=True)

        def image_add(run: int) -> None:
            store.add(source, f"bench{run}", "bench", utcnow())

        rows = {
            "cp": timed(args.runs, cp, drop_copy),
            "cp + sync": timed(args.runs, cp_sync, drop_copy),
            "sha256sum": timed(args.runs, sha256sum, lambda _: None),
            "image add": timed(args.runs, image_add, remove_image),
        }
        database.dispose()
    print(
        f"# {args.mb} MiB file, {args.runs} runs, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )
    print("| operation | median s | min s | max s | MiB/s (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {min(times):.2f} | {max(times):.2f} | {args.mb / median:.0f} |")


if __name__ == "__main__":
    main()
