"""Operator commands of the OMF backend's slot work: ``sfa-omf omf slots|retry``.

``slots`` shows what the slot keeper (sfa_omf/testbed/omf/slots.py) did or failed to do at each provisioned lease's
slot boundaries, from the table ``omf_slot``: by default only what needs attention (a start that failed, an end that
failed or waits for the testbed, a start that waits for it), ``--all`` every record. ``retry`` brings the next try of
an end that failed forward to now; the server's next pass does it.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from sfa_omf.cli_common import command_group, command_settings, print_table
from sfa_omf.config import CONFIG_FILE_NAME
from sfa_omf.errors import BadArgs

if TYPE_CHECKING:
    from sfa_omf.calendar.database import Database
    from sfa_omf.testbed.omf.slot_records import SlotSummary

#: NEXT TRY of work a pass does whenever it runs (the server runs one every [sfa_frcp] slot_period_s).
NEXT_PASS = "next pass"


def add_omf_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the ``omf`` command group."""
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    group = command_group(commands, "omf", "the OMF backend's work at slot boundaries")
    slots = group.add_parser(
        "slots",
        parents=[config_option],
        help="leases whose slot start or end failed or waits: nodes, what failed, tries, next try",
    )
    slots.add_argument("--all", action="store_true", help="every lease's slot record, also those done or to come")
    slots.add_argument("--json", action="store_true")
    slots.set_defaults(handler=_slots)
    retry = group.add_parser(
        "retry", parents=[config_option], help="try a failed end again at the next pass instead of after its wait"
    )
    retry.add_argument("lease_id", help="the lease (LEASE of sfa-omf omf slots)")
    retry.set_defaults(handler=_retry)


def _database(args: argparse.Namespace) -> Database:
    from sfa_omf.calendar.database import Database

    database = Database(command_settings(args).calendar_url)
    database.require_current_schema()  # an older schema: "run sfa-omf db upgrade", not a query's traceback
    return database


def _slots(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.queries import from_s, to_s
    from sfa_omf.testbed.omf.slot_records import FAILED, SlotRecords
    from sfa_omf.times import format_time, utcnow

    database = _database(args)
    try:
        summaries = SlotRecords(database).summaries(attention_only=not args.all)
    finally:
        database.dispose()
    now_s = to_s(utcnow())
    if args.json:
        print(json.dumps([_summary_json(summary) for summary in summaries], indent=1))
        return 0
    if not summaries:
        print("no lease's slot work needs attention" if not args.all else "no slot work recorded")
        return 0
    rows = []
    for summary in summaries:
        next_s = _next_try_s(summary)
        if next_s is None:
            next_try = "on geni_restart" if summary.phase == FAILED else "-"
        else:
            next_try = NEXT_PASS if next_s <= now_s else format_time(from_s(next_s))
        rows.append(
            (
                summary.lease_id,
                summary.phase,
                format_time(from_s(summary.end_s)) if summary.lease_state else "(lease gone)",
                " ".join(summary.nodes) or "-",
                str(summary.attempts),
                format_time(from_s(summary.updated_s)),
                next_try,
                summary.message or "-",
            )
        )
    print_table(("LEASE", "PHASE", "LEASE END", "NODES", "TRIES", "LAST TRY", "NEXT TRY", "WHAT FAILED"), rows)
    return 0


def _next_try_s(summary: SlotSummary) -> int | None:
    """From when the slot keeper's passes do the lease's work again: an end that failed after its wait (none for the
    first tries), a start that waits for the testbed from the slot's start; None for a start that failed (only
    geni_restart does it again) and for work under way, done or not due yet."""
    from sfa_omf.testbed.omf.slot_records import END_FAILED, PROVISIONED, end_due_s

    if summary.phase == END_FAILED:
        return end_due_s(summary.updated_s, summary.attempts, summary.retry_due_s)
    if summary.phase == PROVISIONED and summary.message:
        return summary.start_s
    return None


def _summary_json(summary: SlotSummary) -> dict[str, Any]:
    from sfa_omf.calendar.queries import from_s
    from sfa_omf.times import format_time

    next_s = _next_try_s(summary)
    gone = not summary.lease_state  # the calendar no longer holds the lease: no slice, state or window
    return {
        "lease": summary.lease_id,
        "slice": summary.slice_urn or None,
        "lease_state": summary.lease_state or None,
        "start": None if gone else format_time(from_s(summary.start_s)),
        "end": None if gone else format_time(from_s(summary.end_s)),
        "nodes": list(summary.nodes),
        "phase": summary.phase,
        "failures": dict(summary.failures),
        "message": summary.message,
        "attempts": summary.attempts,
        "last_try": format_time(from_s(summary.updated_s)),
        "next_try": None if next_s is None else format_time(from_s(next_s)),
    }


def _retry(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.queries import to_s
    from sfa_omf.testbed.omf.slot_records import END_FAILED, ENDING, FAILED, SlotRecords, end_retry_wait_s
    from sfa_omf.times import utcnow

    database = _database(args)
    try:
        done = SlotRecords(database).make_end_due(args.lease_id, end_retry_wait_s, to_s(utcnow()))
    finally:
        database.dispose()
    if done is None:
        raise BadArgs(
            f"no slot record of lease {args.lease_id!r}: sfa-omf omf slots --all lists the leases that have one"
        )
    if done.phase != END_FAILED:
        hint = {
            FAILED: "a start that failed is done again by geni_restart (PerformOperationalAction)",
            ENDING: "its end is being tried now",
        }.get(done.phase, "there is no failed end to try again")
        raise BadArgs(f"lease {args.lease_id}'s slot is {done.phase}: {hint}; nothing was changed")
    if done.moved:
        print(
            f"lease {args.lease_id}: its end (tried {done.attempts} times) is due now: the server's next pass tries it"
        )
    else:
        print(f"lease {args.lease_id}: its end is due already: the server's next pass tries it; nothing was changed")
    return 0
