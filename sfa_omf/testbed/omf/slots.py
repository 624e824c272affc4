"""Slot boundaries on an OMF 6 testbed, beyond what omf_sfa does (it sends nothing then):

- at a provisioned lease's start, the disk image its slivers name is loaded through the frisbee and cm controllers
  (controllers.py: PXE boot, port, frisbeed, frisbee per node, boot without PXE, in that order), then its nodes are
  powered on. A node whose controller answered an error or nothing keeps the reason: Status shows that sliver
  geni_failed with it, and the booking stays (geni_restart tries the start again);
- at its end (or when it is deleted or shut down), its nodes are powered off and the keys it installed removed:
  each login's authorized_keys keeps only the keys other live leases installed for it, and with the per-slice
  account policy a login no live lease uses any more is closed (user_factory's deluser). A node another lease
  holds now (its slot running and its start done or under way) is left alone: it is that lease's. Each step
  (a node's power, a login's keys) is recorded once done, so an end tried again redoes only the steps that failed.

The server runs ``SlotKeeper.run`` as the backend's background task, in a worker thread, every few seconds. What
was done is recorded per lease (slot_records.py) before and after the work, so a restart neither redoes it nor
loses it; the AMQP broker being down (or a breaker of the FRCP client resting after a time-out: nothing is sent then)
only postpones the work to the next pass (for an end too, however long the broker is away). An end the controllers
refuse is tried again at every pass, then, after ``MAX_END_ATTEMPTS``, with a growing wait between tries and logged
at ERROR each time: it is never given up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sfa_omf.am.states import Operational
from sfa_omf.calendar.outbox import LeaseNews
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.base import SliverHealth
from sfa_omf.testbed.omf.accounts import UserFactory
from sfa_omf.testbed.omf.controllers import POWER_OF_ACTION, Controllers, failures
from sfa_omf.testbed.omf.frcp import FrcpCircuitOpen, FrcpUnavailable
from sfa_omf.testbed.omf.slot_records import (
    END_FAILED,
    END_KEYS,
    END_OFF,
    ENDED,
    FAILED,
    HOLDING,
    MAX_END_ATTEMPTS,
    PROVISIONED,
    READY,
    STARTING,
    SlotRecord,
    SlotRecords,
    SlotState,
    end_due_s,
    end_retry_wait_s,
    end_steps_left,
)
from sfa_omf.testbed.unix_accounts import LocalAccount

log = logging.getLogger("sfa_omf.omf.slots")

#: Leases in these calendar states hold the testbed (until their end).
LIVE_STATES = ("provisioned",)
#: The calendar state of a lease whose Provision is under way (its slot row may already be written).
PROVISIONING_STATE = "allocated"
#: Phases of a lease whose keys are in place (the end has not started).
KEYS_HELD = (PROVISIONED, STARTING, READY, FAILED)
#: Phases of a lease whose start's work is under way or done: during its slot, its nodes are its own.
STARTED = (STARTING, READY, FAILED)


@dataclass
class SlotReport:
    started: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    end_failed: list[str] = field(default_factory=list)
    postponed: list[str] = field(default_factory=list)
    taken_back: int = 0


class SlotKeeper:
    """Does each lease's slot-boundary work once (see the module docstring)."""

    def __init__(
        self,
        records: SlotRecords,
        controllers: Controllers | None,
        user_factory: UserFactory | None,
        account_policy: str,
        clock: Callable[[], datetime],
        stale_after_s: int,
    ) -> None:
        self.records = records
        self.controllers = controllers
        self.user_factory = user_factory
        self.account_policy = account_policy
        self.clock = clock
        self.stale_after_s = stale_after_s
        self._last_read: tuple[LeaseRecord, SlotState | None] | None = None

    # -- what the backend records -----------------------------------------------------------------------------
    def provisioned(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        self.records.provisioned(lease.id, _keys_of(accounts), to_s(self.clock()))

    def users_updated(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """geni_update_users set ``accounts``' keys: each login the lease no longer has loses the keys this lease
        installed (keeping other live leases'), or is closed under per-slice; then the new keys are recorded."""
        record = self.records.get(lease.id)
        if record is not None and record.phase in KEYS_HELD and self.user_factory is not None:
            wanted = {account.login for account in accounts}
            dropped = [login for login in record.accounts if login not in wanted]
            if dropped:
                self._withdraw_logins(lease.id, dropped)
        self.records.set_accounts(lease.id, _keys_of(accounts))

    # -- Status ---------------------------------------------------------------------------------------------
    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth | None:
        """The sliver's state from its lease's slot work; None when there is no record (not provisioned here)."""
        record = self._slot_of(lease)
        if record is None:
            return None
        if record.phase == FAILED and sliver.node in record.failures:
            return SliverHealth(Operational.FAILED, record.failures[sliver.node])
        if not lease.start <= now < lease.end:
            return SliverHealth(Operational.NOTREADY)
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        if record.phase in (PROVISIONED, STARTING):  # the start's work is due or under way
            return SliverHealth(Operational.CONFIGURING, record.message)
        return SliverHealth(Operational.READY)

    def _slot_of(self, lease: LeaseRecord) -> SlotState | None:
        """The lease's slot state, read once per answer: the aggregate hands each sliver of a lease the same
        LeaseRecord, read afresh for every call, so the last read is reused only for that very object."""
        last = self._last_read
        if last is not None and last[0] is lease:
            return last[1]
        found = self.records.state_of(lease.id)
        self._last_read = (lease, found)
        return found

    # -- PerformOperationalAction ---------------------------------------------------------------------------
    def operate(self, leases: Sequence[LeaseRecord], action: str, names: Mapping[str, str]) -> None:
        """geni_start/stop/restart -> cm on/off/reset on the leases' nodes, all or an error naming each node that
        failed. geni_restart of a lease whose start failed does the start again (image and power) in the next
        pass instead. ``names``: component id -> the controllers' name of the node."""
        status = POWER_OF_ACTION.get(action)
        if status is None or self.controllers is None:
            return
        # A lease whose start failed gets the whole start again (next pass) instead of a reset: recorded only
        # once the other leases' nodes are switched, so a call that fails writes nothing.
        again = [lease.id for lease in leases if action == "geni_restart" and self._phase(lease.id) == FAILED]
        nodes = [
            names[sliver.node]
            for lease in leases
            if lease.id not in again
            for sliver in lease.slivers
            if sliver.node in names
        ]
        if nodes:
            self._switch(nodes, status, action)
        for lease_id in again:
            self.records.claim(lease_id, (FAILED,), PROVISIONED, to_s(self.clock()))

    def _switch(self, nodes: Sequence[str], status: str, action: str) -> None:
        assert self.controllers is not None
        try:
            outcomes = self.controllers.power(nodes, status)
        except FrcpCircuitOpen as exc:  # not even asked: its words say when it is tried again
            raise GeniError(Reason.UNAVAILABLE, f"cannot {action} on the testbed: {exc}") from exc
        except FrcpUnavailable as exc:
            raise GeniError(
                Reason.UNAVAILABLE, f"cannot {action} on the testbed: {exc}; nothing was changed, try again"
            ) from exc
        failed = [outcome for outcome in outcomes.values() if not outcome.ok]
        if failed:
            done = [node for node in nodes if outcomes[node].ok]
            raise GeniError(
                Reason.TIMEDOUT if all(outcome.timed_out for outcome in failed) else Reason.TESTBED,
                f"{action} failed on {len(failed)} node(s): "
                + "; ".join(f"{outcome.node}: {outcome.reason}" for outcome in sorted(failed, key=lambda o: o.node))
                + (f" (switched {status}: {', '.join(done)})" if done else " (no node was switched)"),
            )

    def _phase(self, lease_id: str) -> str:
        record = self.records.get(lease_id)
        return record.phase if record is not None else ""

    # -- the background pass ---------------------------------------------------------------------------------
    def run(self) -> SlotReport:
        """One pass: start the leases whose slot began, end those whose slot is over or that were deleted."""
        now = self.clock()
        now_s = to_s(now)
        report = SlotReport(taken_back=self.records.release_stale(now_s - self.stale_after_s, now_s))
        for record in self.records.open_work():
            live = record.lease_state in LIVE_STATES and now_s < record.end_s
            # A lease still allocated is in the middle of its Provision (the row is written before the calendar
            # marks it provisioned): not over unless its end has passed.
            over = now_s >= record.end_s or record.lease_state not in (PROVISIONING_STATE, *LIVE_STATES)
            if live and record.phase == PROVISIONED and record.start_s <= now_s:
                if self.records.claim(record.lease_id, (PROVISIONED,), STARTING, now_s):
                    self._start(record, report)
            elif over and record.phase in HOLDING:
                if record.phase == END_FAILED and not _end_due(record, now_s):
                    continue
                steps = self._end_steps(record)
                if self.records.claim_end(record.lease_id, record.phase, steps, now_s):
                    self._end(record, steps, report)
        return report

    def _start(self, record: SlotRecord, report: SlotReport) -> None:
        by_name = {node.name: node.component_id for node in record.nodes}
        failed: dict[str, str] = {}
        try:
            if self.controllers is not None:
                images: dict[str, list[str]] = {}
                for node in record.nodes:
                    if node.disk_image:
                        images.setdefault(node.disk_image, []).append(node.name)
                for image, names in images.items():
                    failed.update(failures(self.controllers.load_image(image, names)))
                on = [node.name for node in record.nodes if node.name not in failed]
                if on:
                    failed.update(failures(self.controllers.power(on, "on")))
        except FrcpUnavailable as exc:  # the broker is down: the next pass tries again
            self.records.finish(record.lease_id, PROVISIONED, self._now_s(), f"waiting for the testbed: {exc}")
            report.postponed.append(record.lease_id)
            return
        if failed:
            reasons = {by_name.get(name, name): reason for name, reason in failed.items()}
            message = "; ".join(f"{name}: {reason}" for name, reason in sorted(failed.items()))
            # Told to the lease's users once per failed start (claimed by one pass; a geni_restart starts again).
            now_s = self._now_s()
            news = LeaseNews("failed", f"{record.lease_id}:failed:omf-start:{now_s}", message)
            self.records.finish(record.lease_id, FAILED, now_s, message, reasons, news=news)
            log.warning("lease %s: the start of its slot failed: %s", record.lease_id, message)
            report.failed.append(record.lease_id)
        else:
            self.records.finish(record.lease_id, READY, self._now_s(), "", {})
            report.started.append(record.lease_id)

    def _end_steps(self, record: SlotRecord) -> dict[str, str]:
        """The end's steps to do (step -> why it is not done yet): those a failed end left, else all of them."""
        if record.phase == END_FAILED:
            left = end_steps_left(record.failures)
            if left:
                return left
        steps: dict[str, str] = {}
        if self.controllers is not None:
            steps.update({END_OFF + node.name: "not done yet" for node in record.nodes})
        if self.user_factory is not None:
            steps.update({END_KEYS + login: "not done yet" for login in record.accounts})
        return steps

    def _end(self, record: SlotRecord, steps: Mapping[str, str], report: SlotReport) -> None:
        """Do the end's ``steps``; record those left (and why) for the next pass, or the end as done."""
        left: dict[str, str] = {}
        refused = False  # a controller refused or did not answer (counted), not only the broker away (postponed)
        unavailable = ""
        off = [step[len(END_OFF) :] for step in steps if step.startswith(END_OFF)]
        logins = [step[len(END_KEYS) :] for step in steps if step.startswith(END_KEYS)]
        # At the boundary the next lease's start follows in the same pass and powers its nodes on again; an end tried
        # again later must leave alone a node whose next lease's slot has begun, started or not yet.
        held = self._nodes_held_by_others(record.lease_id, unstarted_too=record.phase == END_FAILED)
        for name in off:
            if name in held:  # its next lease has it now: switching it off would cut that slot short
                log.info("lease %s: %s is left on: lease %s holds it now", record.lease_id, name, held[name])
        off = [name for name in off if name not in held]
        if off and self.controllers is not None:
            resting = ""
            try:
                problems = failures(self.controllers.power(off, "off"))
            except FrcpCircuitOpen as exc:
                # Not asked: cm_factory (or the broker) timed out moments ago. Postponed as if the broker were away,
                # but the keys are still withdrawn now if user_factory answers (its breaker refuses at once if not).
                resting = str(exc)
                problems = dict.fromkeys(off, resting)
            except FrcpUnavailable as exc:
                unavailable = str(exc)
                problems = dict.fromkeys(off, unavailable)
            refused = bool(problems) and not (unavailable or resting)
            left.update({END_OFF + name: reason for name, reason in problems.items()})
        for login in logins:
            if self.user_factory is None:
                continue  # no user_factory any more (the settings changed): nothing to withdraw the keys with
            if unavailable:  # the broker is away: no use trying each login
                left[END_KEYS + login] = unavailable
                continue
            try:
                self._withdraw_logins(record.lease_id, [login])
            except GeniError as exc:
                left[END_KEYS + login] = exc.message
                if exc.reason == Reason.UNAVAILABLE:
                    unavailable = exc.message
                else:
                    refused = True
        if not left:
            self.records.finish(record.lease_id, ENDED, self._now_s(), "", {})
            report.ended.append(record.lease_id)
            return
        message = "; ".join(_describe_step(step, reason) for step, reason in sorted(left.items()))
        if not refused:  # only the broker was away: the next pass tries again, as for a start
            self.records.finish(record.lease_id, END_FAILED, self._now_s(), f"waiting for the testbed: {message}", left)
            log.warning("lease %s: the end of its slot waits for the testbed: %s", record.lease_id, message)
            report.postponed.append(record.lease_id)
            return
        self.records.finish(record.lease_id, END_FAILED, self._now_s(), message, left, count_attempt=True)
        attempts = record.attempts + 1
        if attempts >= MAX_END_ATTEMPTS:
            log.error(
                "lease %s: the end of its slot failed %d times, the operator must see to it (tried again in %d s): %s",
                record.lease_id,
                attempts,
                end_retry_wait_s(attempts),
                message,
            )
        else:
            log.warning("lease %s: the end of its slot is not complete (will try again): %s", record.lease_id, message)
        report.end_failed.append(record.lease_id)

    def _nodes_held_by_others(self, lease_id: str, unstarted_too: bool = False) -> dict[str, str]:
        """Node name -> the other lease that holds it now: provisioned, in its slot, its start under way or done (or,
        ``unstarted_too``, still to do)."""
        now_s = self._now_s()
        phases = (PROVISIONED, *STARTED) if unstarted_too else STARTED
        held: dict[str, str] = {}
        for other in self.records.open_work():
            if other.lease_id == lease_id or other.phase not in phases or other.lease_state not in LIVE_STATES:
                continue
            if other.start_s <= now_s < other.end_s:
                for node in other.nodes:
                    held.setdefault(node.name, other.lease_id)
        return held

    def with_others_keys(self, lease_id: str, accounts: Sequence[LocalAccount]) -> list[LocalAccount]:
        """``accounts`` with, for each login, the keys other live leases installed for it too: user_factory's
        auth_keys overwrites authorized_keys, and a login shared by several slices must keep every slice's keys."""
        others = self._keys_of_other_leases(lease_id)
        return [
            LocalAccount(
                account.login,
                account.user_urns,
                (*account.ssh_keys, *(key for key in others.get(account.login, ()) if key not in account.ssh_keys)),
            )
            for account in accounts
        ]

    def _keys_of_other_leases(self, lease_id: str) -> dict[str, list[str]]:
        """Login -> the keys the live leases other than ``lease_id`` installed for it."""
        now_s = self._now_s()
        others: dict[str, list[str]] = {}
        for other in self.records.open_work():
            if other.lease_id == lease_id or other.phase not in KEYS_HELD:
                continue
            if other.lease_state in LIVE_STATES and now_s < other.end_s:
                for login, keys in other.accounts.items():
                    kept = others.setdefault(login, [])
                    kept += [key for key in keys if key not in kept]
        return others

    def _withdraw_logins(self, lease_id: str, logins: Sequence[str]) -> None:
        assert self.user_factory is not None
        others = self._keys_of_other_leases(lease_id)
        closing = [login for login in logins if self.account_policy == "per-slice" and login not in others]
        keeping = [LocalAccount(login, (), tuple(others.get(login, ()))) for login in logins if login not in closing]
        if keeping:
            self.user_factory.set_keys(keeping)
        if closing:
            self.user_factory.close(closing)

    def _now_s(self) -> int:
        return to_s(self.clock())


def _end_due(record: SlotRecord, now_s: int) -> bool:
    """Whether a failed end is to be tried in this pass."""
    return now_s >= end_due_s(record.updated_s, record.attempts, record.retry_due_s)


def _describe_step(step: str, reason: str) -> str:
    """An end step left, in words: ``node1: <reason>`` or ``alice's keys: <reason>``."""
    if step.startswith(END_OFF):
        return f"{step[len(END_OFF) :]}: {reason}"
    return f"{step[len(END_KEYS) :]}'s keys: {reason}"


def _keys_of(accounts: Sequence[LocalAccount]) -> dict[str, list[str]]:
    return {account.login: list(account.ssh_keys) for account in accounts}
