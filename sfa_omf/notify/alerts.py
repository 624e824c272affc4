"""Events that are not a lease's state, recorded where they happen (see calendar/outbox.py, table notify_event) and
delivered by the notifier like the lease events, exactly once each:

| event | to | recorded by |
|---|---|---|
| renewal_refused | the slice's users and the caller | the AM's Renew, when the calendar or the policy refuses it |
| | | (once per slice, kind of refusal and day: ``renewal_refused_key``) |
| node_down | the operators | the agents' sweep, in the unit of work that puts the node out of service |
| node_maintenance | the operators, and the users of the node's leases | Inventory.set_state, in its unit of work |
| failed (a lease's) | the lease's owner and the slice's users | where the testbed's failure is recorded (OAR |
| | | reconciler: OarJobs.set; agents: a failure report, a node lost during the slot), in that unit of work |
| backend_down | the operators | the server's background loop: a testbed task failed after working (or first) |
| backend_recovered | the operators | the server's background loop: a testbed task worked again after failing |
| reconciler_repaired | the operators | the server's background loop: the testbed's reconciler changed something |
| cancel_reason | (never sent alone) | just before a cancellation not by the lease's users (``slice shutdown``, |
| | | GENI Shutdown): why and by whom, added to the lease's ``cancelled`` message (notifier.py) |

Recording never raises: an event that cannot be written is logged, and the call or loop goes on. Except in a
background task of a process that no longer leads (LeadershipLost: its write refused, cluster/leadership.py): that
goes on up to the task's end, where Leadership says so once and stops leading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from sfa_omf.calendar.database import Database, TransientConflict
from sfa_omf.calendar.outbox import NotifyEvents, RecordedEvent, add_event
from sfa_omf.cluster.leadership import LeadershipLost
from sfa_omf.errors import GeniError
from sfa_omf.times import format_time, utcnow

log = logging.getLogger("sfa_omf.notify")

#: A note, never a message of its own: why a lease is about to be cancelled, and by whom (``Alerts.cancelling``).
CANCEL_REASON = "cancel_reason"
OPERATOR_EVENTS = ("node_down", "node_maintenance", "backend_down", "backend_recovered", "reconciler_repaired")
BACKEND_STATES = ("backend_down", "backend_recovered")
#: What changes between retries of one refused renewal: the times (asked, the credential's expiry) and counts.
_NUMBERS = re.compile(r"[0-9]+(?:[.,][0-9]+)*")
_RULES = re.compile(r"\(policy rule ([^()\s]+)\)")


class Alerts:
    """Records the events of this module's table; safe to call from any thread and any process."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.events = NotifyEvents(database)
        self.clock = clock

    def renewal_refused(
        self, slice_urn: str, caller_urn: str, slivers: Sequence[str], asked: datetime, reason: str
    ) -> None:
        """A Renew of the slice (these slivers; none: all) to ``asked`` was refused: one message per slice, kind of
        refusal and day (``renewal_refused_key``), however often a script retries it to other ends."""
        now = self.clock()
        self._record(
            RecordedEvent(
                key=renewal_refused_key(slice_urn, reason, now),
                event="renewal_refused",
                slice_urn=slice_urn,
                payload={
                    "event": "renewal_refused",
                    "summary": f"renewal of {slice_urn} to {format_time(asked)} refused",
                    "slice": slice_urn,
                    "caller": caller_urn,
                    "slivers": list(slivers),
                    "asked_end": format_time(asked),
                    "reason": reason,
                },
                created=now,
            )
        )

    def cancelling(self, slice_urn: str, lease_ids: Sequence[str], by: str, cause: str, advice: str) -> None:
        """These leases of the slice are about to be cancelled by ``by`` (``the operator of URN``, a caller's URN)
        for ``cause`` (plain words); ``advice``: what their users can do. Recorded before the cancellation, in one unit
        of work: the notifier, which reads the calendar before the notes, never sees the lease cancelled without its
        note. A note whose lease is not cancelled after all is never sent. The first note of a lease is kept."""
        now = self.clock()
        notes = [
            RecordedEvent(
                key=f"{lease_id}:{CANCEL_REASON}",
                event=CANCEL_REASON,
                slice_urn=slice_urn,
                payload={"event": CANCEL_REASON, "lease": lease_id, "by": by, "cause": cause, "advice": advice},
                created=now,
            )
            for lease_id in lease_ids
        ]
        if notes:
            self._record_all(notes)

    def backend_failed(self, backend: str, task: str, error: str) -> None:
        """A testbed task failed: the backend is down, unless that task is already known to fail. Kept per task:
        one task failing while another works (OAR's mirror and reconciler) must not flap down/recovered."""
        last = self.events.last(BACKEND_STATES, _state_prefix(backend, task))
        if last is not None and last.event == "backend_down":
            return
        summary = f"testbed backend {backend} is down ({task}: {' '.join(error.split())})"
        self._backend_event("backend_down", backend, task, last, summary, error=error)

    def backend_worked(self, backend: str, task: str) -> None:
        """A testbed task worked: if it was failing, the backend has recovered."""
        last = self.events.last(BACKEND_STATES, _state_prefix(backend, task))
        if last is not None and last.event == "backend_down":
            summary = f"testbed backend {backend} has recovered ({task} works again)"
            self._backend_event("backend_recovered", backend, task, last, summary)

    def repaired(self, backend: str, task: str, details: Mapping[str, Any]) -> None:
        """The backend's reconciler changed something to make the testbed and the calendar agree. ``details``: plain,
        JSON-able data from the backend (its report's ``alert()``, else ``{"report": its text}``); ``report`` is
        the repairs in one line, an optional ``text`` the e-mail's body."""
        now = self.clock()
        identity = json.dumps(details, sort_keys=True, default=str)
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
        self._record(
            RecordedEvent(
                key=f"reconciler_repaired:{backend}:{int(now.timestamp())}:{digest}",
                event="reconciler_repaired",
                slice_urn=None,
                payload={
                    **details,  # first: the backend's details never replace the event's own fields
                    "event": "reconciler_repaired",
                    "summary": f"{task} repaired a mismatch",
                    "backend": backend,
                    "task": task,
                },
                created=now,
            )
        )

    def _backend_event(
        self, event: str, backend: str, task: str, previous: RecordedEvent | None, summary: str, **details: str
    ) -> None:
        # The key names the state it follows: two processes noticing the same change record it once.
        after = previous.id if previous is not None else 0
        self._record(
            RecordedEvent(
                key=f"{_state_prefix(backend, task)}{event}:after:{after}",
                event=event,
                slice_urn=None,
                payload={"event": event, "summary": summary, "backend": backend, "task": task, **details},
                created=self.clock(),
            )
        )

    def _record(self, event: RecordedEvent) -> None:
        self._record_all([event])

    def _record_all(self, events: Sequence[RecordedEvent]) -> None:
        event = events[0]  # (named in the log: the first, of its kind)
        try:
            try:
                with self.events.database.write() as session:
                    for each in events:
                        add_event(session, each)
            except IntegrityError:  # a racer recorded one of these keys meanwhile: each on its own, theirs kept
                for each in events:
                    self.events.record(each)
        except LeadershipLost:  # another process leads: the task stops, Leadership logs it (no failure of recording)
            raise
        except GeniError as exc:  # the database is down: the event is lost, the caller's work is not
            log.warning("could not record the %s event (%s)", event.event, exc.message)
        except TransientConflict as exc:  # a lock wait of a background task's write reached its bound (fence.py)
            log.warning("could not record the %s event (the calendar was busy: %s)", event.event, exc)
        except Exception:  # recording never replaces the caller's own answer (e.g. Renew's refusal)
            log.exception("could not record the %s event", event.event)


def renewal_refused_key(slice_urn: str, reason: str, refused_at: datetime) -> str:
    """The key of a refused renewal's event: ``renewal_refused:<slice>:<UTC day refused>:<kind>``, ``kind`` a digest
    of the reason's policy rules (PolicyViolation), else of the reason with its numbers left out. Retries of one
    refusal to other ends (the times and counts in its words change, its rule does not) are one event, so one message
    per address, that day; a refusal for another reason (a booking conflict after a policy refusal) or on a later day
    is another. The asked end was in the key: a script retrying "now + 8 days" every minute mailed the slice's users
    every minute."""
    rules = sorted(set(_RULES.findall(reason)))  # a policy refusal: its rules (its words vary with the end asked)
    kind = f"policy rule {', '.join(rules)}" if rules else " ".join(_NUMBERS.sub("#", reason).split())
    digest = hashlib.sha256(kind.encode("utf-8")).hexdigest()[:16]
    return f"renewal_refused:{slice_urn}:{refused_at.astimezone(UTC):%Y-%m-%d}:{digest}"


def operator_of(aggregate_urn: str) -> str:
    """Who cancels when the operator does (``Alerts.cancelling``'s ``by``): ``the operator of <aggregate URN>``."""
    return f"the operator of {aggregate_urn}"


def _state_prefix(backend: str, task: str) -> str:
    """The key prefix of one backend task's down/recovered events."""
    return f"backend_:{backend}:{task}:"
