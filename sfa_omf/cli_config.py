"""Operator commands for the configuration: ``sfa-omf config check [FILE]``.

``check`` prints every effective setting (INI name, shell name, value, where it came from), the SFA settings sfa-omf
does not use, then the problems, one a line: those of the file, then what would fail when the server starts (key and
GID files, trusted roots, the database and its migration, ports that cannot be bound, a hostname that is not this
machine's, a configuration file, trusted roots or key directory others may change, and, on PostgreSQL, settings
that live serving processes of the cluster run with other values; ``--settings-only`` leaves these out, to check a
file meant for another machine). Exit 0 without
problems, 1 with problems, 2 when the file cannot be read. Without FILE it reads $SFA_OMF_CONFIG or ./sfa-omf.conf.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from sfa_omf.cli_common import command_group
from sfa_omf.config import (
    BLOCKING_KINDS,
    CONFIG_FILE_NAME,
    OPTIONS,
    LoadedConfig,
    Option,
    Problem,
    format_value,
    hide_password,
    hide_url_password,
    hide_webhooks,
    load_config,
)


def add_config_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``config check`` on the ``sfa-omf`` sub-command parser."""
    config = command_group(commands, "config", "the configuration file")
    check = config.add_parser(
        "check",
        help="print the effective settings, where each came from, and the problems; "
        "exit 0 when there are none, 1 otherwise, 2 when the file cannot be read",
    )
    check.add_argument("file", nargs="?", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    check.add_argument(
        "--settings-only",
        action="store_true",
        help="check the file alone: not the keys, trusted roots, database, ports and hostname of this machine",
    )
    check.set_defaults(handler=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    path = args.file or os.environ.get("SFA_OMF_CONFIG") or CONFIG_FILE_NAME
    try:
        loaded = load_config(path)
    except FileNotFoundError:
        print(
            f"sfa-omf: cannot read configuration file {path}: it does not exist "
            f"(sfa-omf init DIR writes DIR/{CONFIG_FILE_NAME})",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"sfa-omf: cannot read configuration file {path}: {_reason(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:  # not UTF-8: the message names the file and the byte
        print(f"sfa-omf: {exc}", file=sys.stderr)
        return 2
    blocking = any(problem.kind in BLOCKING_KINDS for problem in loaded.problems)
    if not args.settings_only and not blocking:
        from sfa_omf.preflight import deployment_findings, moved_site_findings, permission_findings

        findings = (
            moved_site_findings(loaded.settings, path)
            + deployment_findings(loaded.settings)
            + permission_findings(loaded.settings, path)
        )
        found = [Problem(finding.check, "", finding.message) for finding in findings]
        found += agreement_problems(loaded)
        loaded = dataclasses.replace(loaded, problems=(*loaded.problems, *found))
    print(format_check(loaded))
    return 0 if loaded.ok else 1


def agreement_problems(loaded: LoadedConfig) -> list[Problem]:
    """PostgreSQL: each setting every host must agree on that a live serving process (another host's, or this
    host's started before the file changed) runs with another value (sfa_omf/cluster/agreement.py). Warnings,
    counted as problems like the others."""
    from sfa_omf.cluster.agreement import live_disagreements

    return [
        Problem(
            "agreement",
            loaded.path,
            f"settings differ between hosts of this cluster: {item}; every host must run with the same value",
        )
        for item in live_disagreements(loaded.settings)
    ]


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def format_check(loaded: LoadedConfig) -> str:
    """The text ``config check`` prints for a loaded configuration."""
    form = "INI" if loaded.form == "ini" else "shell (NAME=value)"
    lines = [f"configuration {loaded.path}, {form} form; precedence: defaults < file < SFA_* environment", ""]
    rows = [("SETTING", "SHELL NAME", "VALUE", "FROM")]
    rows += [
        (option.ini_name, option.shell_name, _shown_value(loaded, option), str(loaded.sources[option.field]))
        for option in OPTIONS
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        lines.append("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]))
    if loaded.unused:
        lines += ["", "SFA settings sfa-omf does not use (accepted, ignored):"]
        lines += [f"  {name}" for name in loaded.unused]
    lines.append("")
    if loaded.problems:
        count = len(loaded.problems)
        lines.append(f"{count} problem{'s' if count > 1 else ''}:")
        lines += [f"problem: {problem}" for problem in loaded.problems]
    else:
        lines.append("no problems")
    return "\n".join(lines)


def _shown_value(loaded: LoadedConfig, option: Option) -> str:
    """The effective value, passwords hidden (those of URLs too: ``https://user:***@host``); empty defaults show what
    they stand for."""
    settings = loaded.settings
    if option.field == "database_url":
        return hide_password(settings.calendar_url)
    if option.field == "frcp_amqp_url" and settings.frcp_amqp_url:
        return hide_password(settings.frcp_amqp_url)
    if option.field in ("db_password", "notify_smtp_password", "notify_webhook_key"):
        return "***" if getattr(settings, option.field) else '""'
    if option.field == "trusted_roots":
        return settings.trusted_roots_dir
    value = format_value(option, getattr(settings, option.field))
    # A webhook's path or query often holds a token: shown as the notifier shows it (origin and a digest).
    value = hide_url_password(hide_webhooks(value) if option.field == "notify_operators" else value)
    return value if value else '""'
