"""`sfa-omf rspec ...`: the operator's RSpec commands.

    sfa-omf rspec validate [--type request|advertisement|manifest] [--geni-base] FILE...

Exit 0 when every file is valid; 1 when one is not, each problem on stderr as FILE:LINE:COL: message; 2 when a
file cannot be read.
"""

from __future__ import annotations

import argparse
import sys

#: rspec.validate.KINDS (a test keeps the two equal).
RSPEC_TYPES = ("request", "advertisement", "manifest")


def add_rspec_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the `rspec` command group on the `sfa-omf` parser's subparsers."""
    rspec = subparsers.add_parser("rspec", help="check RSpecs (requests, advertisements, manifests)")
    rspec.set_defaults(group_parser=rspec)
    commands = rspec.add_subparsers(title="rspec commands")
    check = commands.add_parser(
        "validate",
        help="validate RSpecs; exit 0 valid, 1 invalid (problems on stderr as FILE:LINE:COL: message)",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="an RSpec file, or - for standard input")
    # The RSpec library (lxml) is imported when a document is checked, not to build the command line.
    check.add_argument("--type", choices=RSPEC_TYPES, help="the RSpec type (default: the document's type attribute)")
    check.add_argument(
        "--geni-base",
        action="store_true",
        help="check against the GENI v3 base schema alone (no lease or availability extensions)",
    )
    check.add_argument(
        "--max-bytes", type=_byte_count, help="refuse larger documents (default: the RSpec library's limit, 4 MiB)"
    )
    check.set_defaults(handler=_cmd_validate)


def _byte_count(text: str) -> int:
    """``--max-bytes``: a whole number of bytes, at least 1 (0 would otherwise mean the default, silently)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of bytes, at least 1")
    return count


def _cmd_validate(args: argparse.Namespace) -> int:
    from rspec.document import RSpecLimits
    from rspec.validate import validate

    limits = RSpecLimits(max_bytes=args.max_bytes) if args.max_bytes is not None else RSpecLimits()
    verdict = 0
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else _read(name)
        except OSError as exc:
            print(f"sfa-omf: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        problems = validate(data, args.type, limits=limits, geni_base=args.geni_base)
        for problem in problems:
            where = f"{problem.line}:{problem.column}"
            element = f"<{problem.element}>: " if problem.element else ""
            print(f"{name}:{where}: {element}{problem.message}", file=sys.stderr)
        if problems:
            verdict = 1
        else:
            print(f"{name}: valid")
    return verdict


def _read(name: str) -> bytes:
    with open(name, "rb") as handle:
        return handle.read()
