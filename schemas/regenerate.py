#!/usr/bin/env python3
"""Generate the .rng schemas from the .rnc sources with trang (Debian package: trang).

    python schemas/regenerate.py              # rewrite schemas/*.rng
    python schemas/regenerate.py --out DIR    # write them to DIR instead (the sync test compares DIR with ours)

trang follows the includes of each top-level schema and writes one .rng per .rnc it reads, flat in the output
folder (so the sources are flat too).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The schemas that are read on their own; every other .rnc is included by one of these.
TOP_LEVEL = (
    "request",
    "advertisement",
    "manifest",
    "geni-v3-request",
    "geni-v3-ad",
    "geni-v3-manifest",
)

INSTALL_HINT = "trang is missing: install the Debian package trang (apt-get install trang)"


def regenerate(out: Path) -> list[Path]:
    """Run trang on every top-level schema into ``out``; return the .rng files written."""
    trang = shutil.which("trang")
    if trang is None:
        raise RuntimeError(INSTALL_HINT)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOP_LEVEL:
        subprocess.run(
            [trang, "-I", "rnc", "-O", "rng", str(HERE / f"{name}.rnc"), str(out / f"{name}.rng")],
            check=True,
            capture_output=True,
            text=True,
        )
    return sorted(out.glob("*.rng"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: schemas/)")
    args = parser.parse_args()
    try:
        written = regenerate(args.out)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"trang failed: {exc.stderr or exc.stdout}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
