"""What the operator commands share: finding the configuration file, command groups, error texts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sfa_omf.config import CONFIG_FILE_NAME, WARNING_KINDS, LoadedConfig, Settings, load_config, usable_settings
from sfa_omf.errors import BadArgs, GeniError

if TYPE_CHECKING:
    from sfa_omf.calendar.database import Database


def os_error_text(exc: OSError) -> str:
    """An OSError as every ``sfa-omf`` error says one: ``path: strerror``."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


def error_text(exc: GeniError | OSError) -> str:
    """What a refusal or a file's failure says, for a line of a command's output."""
    return os_error_text(exc) if isinstance(exc, OSError) else exc.message


def command_group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Add a command group (``sfa-omf node ...``) and return its sub-command parsers; the group alone
    (``sfa-omf node``) prints the group's help."""
    group = commands.add_parser(name, help=help)
    group.set_defaults(group_parser=group)
    return group.add_subparsers(title=f"{name} commands")  # type: ignore[no-any-return]


def command_config(args: argparse.Namespace) -> LoadedConfig:
    """The configuration of ``--config FILE``, else $SFA_OMF_CONFIG, else ./sfa-omf.conf; ValueError when a setting
    has no usable value (as read_config)."""
    path = args.config or os.environ.get("SFA_OMF_CONFIG") or CONFIG_FILE_NAME
    if not os.path.exists(path):
        raise BadArgs(
            f"no configuration file {path}: give --config FILE (sfa-omf init DIR writes DIR/{CONFIG_FILE_NAME})"
        )
    loaded = load_config(path)
    usable_settings(loaded)
    return loaded


def config_warnings(loaded: LoadedConfig) -> list[str]:
    """One line for each setting not taken as written (a misspelt name, a setting given twice)."""
    return [
        f"{problem} (sfa-omf config check lists every problem)"
        for problem in loaded.problems
        if problem.kind in WARNING_KINDS
    ]


def command_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``--config FILE``, else $SFA_OMF_CONFIG, else ./sfa-omf.conf; a setting not taken as written
    (a misspelt name, one given twice) is a warning on standard error, the command goes on."""
    loaded = command_config(args)
    for warning in config_warnings(loaded):
        print(f"sfa-omf: warning: {warning}", file=sys.stderr)
    return loaded.settings


def command_database(settings: Settings) -> Database:
    """The calendar's database for an operator command: its schema must be this sfa-omf's newest migration (an empty
    one is created, an older one refused with "run sfa-omf db upgrade" rather than a query's "no such column")."""
    from sfa_omf.calendar.database import Database

    database = Database(settings.calendar_url)
    try:
        database.require_current_schema()
    except BaseException:
        database.dispose()
        raise
    return database


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table on standard output: the header, then the rows, columns as wide as their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
