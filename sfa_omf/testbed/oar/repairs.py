"""The OAR reconciler's report as operators receive it (the ``reconciler_repaired`` event): plain data for webhooks,
sentences for e-mail. The notifier knows nothing of OAR: it sends what ``alert_details`` returns.

| field | holds | told as |
|---|---|---|
| resubmitted | lease ids | its OAR reservation was missing and was made again (as OAR job N) |
| adopted | lease ids | OAR job N held it unrecorded (an interrupted Provision): recorded now |
| deleted | lease ids | its interrupted deletion was finished |
| orphans_deleted | OAR job ids | the job had no live lease here and was deleted |
| failed | lease id -> why (OAR's words) | not repaired: why, and what the operator may do |
| deletes_unconfirmed | lease id -> why (OAR's words) | its users' Delete still unconfirmed: asked next round |

``reasons`` holds the words of both ``failed`` and ``deletes_unconfirmed`` leases.

The leases' slice, nodes, window and current OAR job are read from the calendar at the end of the round that
repaired them (``lease_details``): the message is written later, when the lease may be gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.testbed.oar.jobs import OarJobs, job_name
from sfa_omf.times import format_time

log = logging.getLogger("sfa_omf.testbed.oar")

#: The report's lists of lease ids, in the order they are told (``failed`` is told last).
LEASE_CATEGORIES = ("resubmitted", "adopted", "deleted")


def report_lists(
    resubmitted: Sequence[str],
    adopted: Sequence[str],
    deleted: Sequence[str],
    orphans_deleted: Sequence[int],
    failed: Mapping[str, str],
    deletes_unconfirmed: Mapping[str, str],
) -> dict[str, Any]:
    """The report's categories as JSON-able data: lists of lease ids (``resubmitted``, ``adopted``, ``deleted``,
    ``failed``, ``deletes_unconfirmed``), of OAR job ids (``orphans_deleted``), and ``reasons`` (failed or
    unconfirmed lease id -> why, OAR's words)."""
    return {
        "resubmitted": [str(lease_id) for lease_id in resubmitted],
        "adopted": [str(lease_id) for lease_id in adopted],
        "deleted": [str(lease_id) for lease_id in deleted],
        "orphans_deleted": [int(job_id) for job_id in orphans_deleted],
        "failed": sorted(str(lease_id) for lease_id in failed),
        "deletes_unconfirmed": sorted(str(lease_id) for lease_id in deletes_unconfirmed),
        "reasons": {str(lease_id): str(words) for lease_id, words in {**failed, **deletes_unconfirmed}.items()},
    }


def alert_details(lists: Mapping[str, Any], leases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``reconciler_repaired`` event's details: the lists, the leases' details, the repairs in one line
    (``report``, as webhooks always had it) and in sentences (``text``, the e-mail's body)."""
    return {
        "report": one_line(lists, leases),
        "text": sentences(lists, leases),
        **lists,
        "leases": {lease_id: dict(lease) for lease_id, lease in leases.items()},
    }


def lease_details(database: Database, jobs: OarJobs, lists: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What the calendar knows of the report's leases now: slice, nodes, window, and (made again or adopted) the OAR
    job that holds it. A lease the calendar does not have is left out; a database error leaves them all out (the
    alert still goes, with the lease ids)."""
    lease_ids = sorted(
        {lease_id for name in (*LEASE_CATEGORIES, "failed", "deletes_unconfirmed") for lease_id in lists[name]}
    )
    if not lease_ids:
        return {}
    try:
        details: dict[str, dict[str, Any]] = {}
        for row in Timeline(database).bookings(lease_ids=lease_ids, include_inactive=True):
            lease = details.setdefault(
                row.lease_id,
                {"slice": row.slice_urn, "nodes": [], "start": format_time(row.start), "end": format_time(row.end)},
            )
            lease["nodes"].append(row.node)
        for lease_id in {*lists["resubmitted"], *lists["adopted"]} & details.keys():
            record = jobs.get(lease_id)
            if record is not None and record.job_id is not None:
                details[lease_id]["job"] = record.job_id
    except Exception as exc:  # the alert matters more than its details
        log.warning("the reconciler's leases could not be read for its alert (%s)", getattr(exc, "message", exc))
        return {}
    return details


def one_line(lists: Mapping[str, Any], leases: Mapping[str, Mapping[str, Any]]) -> str:
    """The repairs in one line (the webhook's ``report``), e.g. ``missing OAR reservation made again for 1 lease:
    7768e779-... as OAR job 2800; 1 orphan OAR job deleted: 2805``."""

    def with_job(lease_id: str) -> str:
        job = leases.get(lease_id, {}).get("job")
        return f"{lease_id} as OAR job {job}" if job is not None else lease_id

    parts = []
    if lists["resubmitted"]:
        made = ", ".join(with_job(lease_id) for lease_id in lists["resubmitted"])
        parts.append(
            f"missing OAR reservation made again for {_count(lists['resubmitted'], 'lease', 'leases')}: {made}"
        )
    if lists["adopted"]:
        adopted = ", ".join(with_job(lease_id) for lease_id in lists["adopted"])
        parts.append(f"{_count(lists['adopted'], 'unrecorded OAR job', 'unrecorded OAR jobs')} recorded: {adopted}")
    if lists["deleted"]:
        deleted = ", ".join(lists["deleted"])
        parts.append(f"{_count(lists['deleted'], 'interrupted deletion', 'interrupted deletions')} finished: {deleted}")
    if lists["orphans_deleted"]:
        orphans = ", ".join(str(job_id) for job_id in lists["orphans_deleted"])
        parts.append(f"{_count(lists['orphans_deleted'], 'orphan OAR job', 'orphan OAR jobs')} deleted: {orphans}")
    if lists["failed"]:
        failed = ", ".join(lists["failed"])
        parts.append(f"{_count(lists['failed'], 'lease', 'leases')} not repaired: {failed}")
    if lists["deletes_unconfirmed"]:
        unconfirmed = ", ".join(lists["deletes_unconfirmed"])
        parts.append(
            f"{_count(lists['deletes_unconfirmed'], 'Delete', 'Deletes')} still not confirmed by OAR: {unconfirmed}"
        )
    return "; ".join(parts) if parts else "nothing repaired"


def sentences(payload: Mapping[str, Any], leases: Mapping[str, Mapping[str, Any]]) -> str:
    """The e-mail's text of the report's lists: one paragraph per lease or job, then what the operator may do."""
    reasons: Mapping[str, str] = payload.get("reasons") or {}
    told = []
    for lease_id in payload.get("resubmitted", ()):
        job = leases.get(lease_id, {}).get("job")
        as_job = f" as OAR job {job}" if job is not None else ""
        told.append(
            f"{_lease(lease_id, leases)}: its OAR reservation was missing (or held another window than the "
            f"calendar's) and was made again{as_job}."
        )
    for lease_id in payload.get("adopted", ()):
        job = leases.get(lease_id, {}).get("job")
        which = f"OAR job {job}" if job is not None else "an OAR job"
        told.append(
            f"{_lease(lease_id, leases)}: {which} held it but was not recorded here (a Provision interrupted before "
            "OAR's answer was recorded); it is now recorded as the lease's reservation."
        )
    for lease_id in payload.get("deleted", ()):
        told.append(
            f"{_lease(lease_id, leases)}: its deletion had been interrupted before OAR confirmed it; it is now "
            "finished (an OAR job OAR still has for it is deleted as an orphan)."
        )
    for job_id in payload.get("orphans_deleted", ()):
        told.append(f"OAR job {job_id} had no live lease here (cancelled, expired or ended) and was deleted.")
    repaired = len(told)
    for lease_id in payload.get("deletes_unconfirmed", ()):
        # Not a reservation OAR refuses: the user's own Delete, which the next round asks OAR for again.
        told.append(
            f"{_lease(lease_id, leases)}: its users' Delete, which OAR did not confirm in time, is still not "
            f"confirmed ({reasons.get(lease_id, 'no reason given')}). The lease stays provisioned and is not "
            "reserved again; the reconciler asks OAR again next round and cancels the lease once OAR has ended its "
            "job.\n"
            f"  What you may do: nothing while OAR is only slow or down; if it keeps failing, look at OAR's job named "
            f"{job_name(lease_id)} (oarstat) and delete it as its owner (oardel): the next round cancels the lease."
        )
    for lease_id in payload.get("failed", ()):
        told.append(
            f"{_lease(lease_id, leases)}: not repaired: {reasons.get(lease_id, '(no reason given)')}\n"
            f"  What you may do: the reconciler tries again every round; if OAR keeps refusing, look at OAR's jobs "
            f"named {job_name(lease_id)} (oarstat) and the nodes' state (oarnodes), or ask the slice's users to "
            "Delete the lease and allocate again."
        )
    advice = (
        "The repairs above need nothing from you: the calendar and OAR agree again. If the same leases are repaired "
        "again and again, look in OAR's logs for why their jobs go.\n"
        if repaired
        else ""
    )
    return "".join(f"- {text}\n" for text in told) + ("\n" + advice if advice else "")


def _lease(lease_id: str, leases: Mapping[str, Mapping[str, Any]]) -> str:
    """``Lease ID (slice S, nodes N, START .. END)``, or ``Lease ID`` when the calendar no longer had it."""
    lease = leases.get(lease_id)
    if lease is None:
        return f"Lease {lease_id}"
    nodes = ", ".join(str(node) for node in lease.get("nodes", ()))
    return f"Lease {lease_id} (slice {lease['slice']}, nodes {nodes}, {lease['start']} .. {lease['end']} UTC)"


def _count(items: Sequence[object], one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"
