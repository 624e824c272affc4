"""What the operator commands share: finding the configuration file, command groups."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from sfa_omf.config import CONFIG_FILE_NAME, Settings, read_config
from sfa_omf.errors import BadArgs


def command_group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Add a command group (``sfa-omf node ...``) and return its sub-command parsers; the group alone
    (``sfa-omf node``) prints the group's help."""
    group = commands.add_parser(name, help=help)
    group.set_defaults(group_parser=group)
    return group.add_subparsers(title=f"{name} commands")  # type: ignore[no-any-return]


def command_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``--config FILE``, else $SFA_OMF_CONFIG, else ./sfa-omf.conf."""
    path = args.config or os.environ.get("SFA_OMF_CONFIG") or CONFIG_FILE_NAME
    if not os.path.exists(path):
        raise BadArgs(
            f"no configuration file {path}: give --config FILE (sfa-omf init DIR writes DIR/{CONFIG_FILE_NAME})"
        )
    return read_config(path)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table on standard output: the header, then the rows, columns as wide as their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
