"""Containers inside a booking: a lease's ``<sliver_type name="lxc">`` slivers ask for N containers of a repository
image on their node; this module records them in the calendar's database (table ``lease_instance``), starts them at
the slot's start, acts on them (start, stop, restart, save as an image) and destroys them when the lease is over.

The database is the memory: a server restarted mid-lease finds the live rows and destroys their containers at the
slot's end (``tick``), and containers of ours that no live row names are destroyed too. LXC itself is ``LxcHost``
(sfa_omf/images/lxc.py); addresses come from ``[sfa_omf] instance_network`` and are unique while held.

Two ways to run them. The embedded backend: this host runs them (``tick`` starts and destroys them). A testbed whose
jobs run them (OAR, ``plans`` given): at Provision this aggregate writes the lease's plan (names, addresses, image,
keys: sfa_omf/images/node_plans.py) for the lease's job, whose command makes them on the job's node
(sfa_omf/images/node_containers.py); ``tick`` only follows what the node side reports and the job's state, and never
touches LXC here.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError

from sfa_omf.calendar.database import Database, TransientConflict
from sfa_omf.calendar.fence import fence_of_this_thread, fenced_as
from sfa_omf.calendar.models import Lease, LeaseInstance, Node, Slice
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import network_address
from sfa_omf.cluster.leadership import LeadershipLost
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.images.archives import (
    MAX_ARCHIVE_BYTES,
    ArchiveError,
    ArchiveTooLarge,
    check_archive,
    save_rootfs,
    take,
)
from sfa_omf.images.archives import SECRETS as SECRETS
from sfa_omf.images.lxc import InstanceSpec, LxcHost, wait_for_ssh
from sfa_omf.images.node_plans import (
    ACTION_SAVE,
    EXIT_PLAN_REFUSED,
    NODE_STATES,
    ActionDone,
    LeasePlan,
    LeasePlans,
    PlannedContainer,
    is_node_name,
    lease_plans,
)
from sfa_omf.images.store import ImageStore, SaveQuota, check_label
from sfa_omf.testbed.base import SliverHealth

log = logging.getLogger("sfa_omf.instances")

PLANNED, RUNNING, STOPPED, FAILED, DESTROYED = "planned", "running", "stopped", "failed", "destroyed"
STARTING = "starting"  # claimed by one start (a conditional update): no other start touches it meanwhile
NOT_RUNNING = ("STOPPED", "")  # what LxcHost.state says of a container that stopped by itself, or of one gone
LIVE = (PLANNED, STARTING, RUNNING, STOPPED, FAILED)  # rows whose container may exist (or is still to come)
LOGIN = "root"  # the slice users' keys go to root's authorized_keys inside the container
ADDRESS_ATTEMPTS = 3  # starts of other leases racing for the same free addresses (PostgreSQL)
LAUNCH_WORKERS = 4  # containers of one lease launched at once (LXC's own work is mostly waiting)
assert set(NODE_STATES) == {RUNNING, FAILED, DESTROYED, STOPPED}  # the node side reports in the rows' own words
# A live start renews its rows' claim this often, however long it takes (a lease's containers go LAUNCH_WORKERS at a
# time); a row still starting STALE_START_S after its claim was last renewed was claimed by a start that died with
# its process (a crash or a restart mid-start).
CLAIM_RENEWAL_S = 60.0
STALE_START_S = 600
DEFAULT_QUOTA = SaveQuota()  # [sfa_omf] max_saved_images, max_saved_image_bytes, image_min_free_bytes as by default


@dataclass(frozen=True)
class InstanceRequest:
    """What a request asks on one of its slivers: ``count`` containers of repository image ``image``."""

    sliver_urn: str
    node: str
    image: str
    count: int


@dataclass(frozen=True)
class Instance:
    """One container of a lease, as recorded."""

    name: str
    lease_id: str
    sliver_urn: str  # the node's sliver
    node: str
    position: int
    image: str
    address: str  # "" until started (and once destroyed)
    state: str
    error: str

    @property
    def urn(self) -> str:
        """The container's own sliver URN (its node sliver's, with ``-c<position>``)."""
        return f"{self.sliver_urn}-c{self.position}"

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]


@dataclass(frozen=True)
class _LeaseOfRow:
    lease_id: str
    slice_urn: str
    state: str
    start_s: int
    end_s: int


class Instances:
    """The containers of every lease: recorded in ``database``, run by ``host`` (None: this aggregate runs none and
    refuses requests for containers) or, with ``plans``, by the testbed's jobs on their nodes (``host`` then only
    says the bridge, LXC directory and names the nodes use)."""

    def __init__(
        self,
        database: Database,
        host: LxcHost | None,
        network: str,
        images: ImageStore,
        ssh_timeout_s: float = 30.0,
        plans: LeasePlans | None = None,
        action_timeout_s: float = 60.0,
        max_image_bytes: int = MAX_ARCHIVE_BYTES,
        quota: SaveQuota = DEFAULT_QUOTA,
    ) -> None:
        self.database = database
        self.host = host
        self.network = ipaddress.ip_network(network, strict=False)
        self.images = images
        self.ssh_timeout_s = ssh_timeout_s
        self.plans = plans
        self.action_timeout_s = action_timeout_s  # how long an operational action waits for the node's report
        self.max_image_bytes = max_image_bytes  # what a save here may write (the image store's disk)
        self.quota = quota  # what one user may keep of saved images, and the store's free-space reserve

    # -- Allocate ---------------------------------------------------------------------------------------------------
    def plan(self, lease_id: str, wanted: Sequence[InstanceRequest], now: datetime) -> list[Instance]:
        """Record the containers a lease asked for (state planned); nothing runs yet."""
        if not wanted:
            return []
        if self.host is None:
            raise GeniError(Reason.UNSUPPORTED, "this aggregate runs no containers: ask for raw-pc slivers")
        rows = [
            LeaseInstance(
                name=self.host.name_for(lease_id, index),
                lease_id=lease_id,
                sliver_urn=request.sliver_urn,
                node=request.node,
                position=position,
                image=request.image,
                address=None,
                state=PLANNED,
                error="",
                updated_s=to_s(now),
            )
            for index, (request, position) in enumerate(
                (request, position) for request in wanted for position in range(request.count)
            )
        ]
        with self.database.write() as session:
            session.add_all(rows)
        return self.of_lease(lease_id)

    # -- reading ----------------------------------------------------------------------------------------------------
    def of_leases(self, lease_ids: Iterable[str]) -> dict[str, list[Instance]]:
        """The recorded containers of these leases (destroyed ones too), by lease, in order."""
        wanted = set(lease_ids)
        found: dict[str, list[Instance]] = {}
        if not wanted:
            return found
        with self.database.read() as session:
            rows = session.execute(_COLUMNS.where(LeaseInstance.lease_id.in_(wanted)).order_by(LeaseInstance.name))
            for row in rows:
                found.setdefault(row.lease_id, []).append(_record(row))
        return found

    def of_lease(self, lease_id: str) -> list[Instance]:
        return self.of_leases([lease_id]).get(lease_id, [])

    def listing(self, live_only: bool = True) -> list[Instance]:
        """Every recorded container (the live ones by default), by name: ``sfa-omf instance list``."""
        query = _COLUMNS.order_by(LeaseInstance.name)
        if live_only:
            query = query.where(LeaseInstance.state.in_(LIVE))
        with self.database.read() as session:
            return [_record(row) for row in session.execute(query)]

    # -- the slot's clock -------------------------------------------------------------------------------------------
    def tick(
        self,
        now: datetime,
        keys_of: Callable[[str], Sequence[str]],
        testbed_state: Callable[[str, str], SliverHealth | None] = lambda slice_urn, lease_id: SliverHealth(
            "geni_ready"
        ),
    ) -> tuple[list[str], list[str]]:
        """The containers follow their lease and the testbed's reservation. Destroyed: those of leases that are
        over (ended, deleted, expired, slot past), those whose reservation the testbed ended inside the slot (an OAR
        job killed), and containers of ours no live row names. Started: those of provisioned leases whose slot runs
        once the testbed holds the nodes. ``keys_of(slice_urn)``: the SSH keys to put in; ``testbed_state(slice_urn,
        lease_id)``: the lease's operational state on the testbed (geni_ready, geni_failed, ... with the testbed's
        words; None: the experimenter stopped it, leave it be). Returns (names started, names destroyed). Run
        periodically by the server (once cluster-wide). With ``plans`` the nodes make and destroy them: the rows
        follow their reports (a job that ended before its node reported fails them, saying so)."""
        if self.host is None:
            return [], []
        over, due, provisioned = self._round(now, testbed_state)
        destroyed: list[str] = []
        for lease_id in sorted(over):
            try:
                destroyed += self.destroy_lease(lease_id, now)
            except GeniError as exc:  # the rest still go; this lease's live rows are retried next round
                log.warning("lease %s: a container could not be destroyed: %s", lease_id, exc.message)
        if self.plans is not None:
            self.sync_plans(provisioned, keys_of)
            return self._follow_nodes([lease_id for lease_id, _, _ in due], now), destroyed
        records = self.listing()
        live = {record.name for record in records}
        on_host = self.host.instances()
        for orphan in on_host:  # ours by name, but no live row: left by a crash
            if orphan.name not in live:
                log.warning("destroying container %s: no current lease has it", orphan.name)
                self.host.destroy(orphan.name)
                destroyed.append(orphan.name)
        lxc_says = {record.name: record.state for record in on_host}
        self._note_stopped([record for record in records if lxc_says.get(record.name, "") in NOT_RUNNING], now)
        started: list[str] = []
        for lease_id, slice_urn, states in due:
            if PLANNED not in states:
                continue
            try:
                records = self.start_lease(lease_id, keys_of(slice_urn), now)
            except Exception as exc:  # one lease's failure must not stop the others, nor come first every round
                reason = exc.message if isinstance(exc, GeniError) else f"{type(exc).__name__}: {exc}"
                log.warning("lease %s: its containers could not be started: %s", lease_id, reason)
                self._fail_planned(lease_id, reason, now)
                continue
            started += [record.name for record in records if record.state == RUNNING]
        return started, destroyed

    def _note_stopped(self, candidates: Sequence[Instance], now: datetime) -> None:
        """Rows that say running whose container LXC found stopped (its processes ended: poweroff inside, a crash,
        the kernel's OOM killer) or gone: recorded stopped, saying so and what to do (Status shows it; geni_start
        starts it again, keeping its disk). Asked again of LXC just before (a geni_restart may have stopped it
        meanwhile, and started it again), and written only over running (a start claims its rows first)."""
        assert self.host is not None
        changes = []
        for record in candidates:
            if record.state != RUNNING:
                continue
            state = self.host.state(record.name)
            if state in NOT_RUNNING:
                changes.append((record.name, STOPPED, stopped_by_itself(record.name, gone=not state)))
                log.warning("container %s is %s: recorded stopped", record.name, "gone" if not state else "stopped")
        self._set_states(changes, now, expected=RUNNING)

    def _round(
        self, now: datetime, testbed_state: Callable[[str, str], SliverHealth | None]
    ) -> tuple[set[str], list[tuple[str, str, set[str]]], dict[str, tuple[str, int, int]]]:
        """The leases whose containers must go (over, or their reservation ended on the testbed), those whose
        slot runs on a testbed that holds the nodes (lease id, slice URN, its containers' states), and the
        provisioned leases with live containers that are not over (lease id -> slice URN, slot start, slot end)."""
        moment = to_s(now)
        self._recover_interrupted_starts(now)
        with self.database.read() as session:
            rows = session.execute(
                select(LeaseInstance.lease_id, Slice.urn, Lease.state, Lease.start_s, Lease.end_s, LeaseInstance.state)
                .join(Lease, Lease.id == LeaseInstance.lease_id)
                .join(Slice, Slice.id == Lease.slice_id)
                .where(LeaseInstance.state.in_(LIVE))
            ).all()
        over: set[str] = set()
        running: dict[str, tuple[str, set[str]]] = {}  # lease id -> (slice, its containers' states): slot runs
        provisioned: dict[str, tuple[str, int, int]] = {}
        for lease_id, slice_urn, lease_state, start_s, end_s, state in rows:
            if lease_state not in ("allocated", "provisioned") or end_s <= moment:
                over.add(lease_id)
            elif lease_state == "provisioned":
                provisioned[lease_id] = (slice_urn, int(start_s), int(end_s))
                if start_s <= moment:
                    running.setdefault(lease_id, (slice_urn, set()))[1].add(state)
        due: list[tuple[str, str, set[str]]] = []
        for lease_id, (slice_urn, states) in sorted(running.items()):
            health = testbed_state(slice_urn, lease_id)
            testbed = None if health is None else health.operational_state
            has_run = bool(states & {RUNNING, STOPPED})
            ended = testbed == "geni_failed" or (health is not None and health.ended)
            if ended and health is not None and self._unreported(lease_id, states):
                if PLANNED not in states:
                    continue  # said and recorded at an earlier round (a write every round would renew every cache)
                # The job ended (OAR's Error, Terminated: its command exited, or gone) before the node side said
                # anything: the rows say so, and stay (failed, with why) until the slot ends, not "planned" all along.
                said = health.error or str(testbed)
                refused = f"exited with status {EXIT_PLAN_REFUSED}" in said  # (OAR's words, testbed/oar/backend.py)
                reason = (
                    f"the lease's OAR job ended ({said}) before its node reported the containers: see the job's "
                    "stderr on the node"
                    + (
                        " (exit status 2: the node command refused the lease's plan, and says why there)"
                        if refused
                        else ""
                    )
                )
                log.warning("lease %s: %s", lease_id, reason)
                self._fail_planned(lease_id, reason, now)
            elif testbed == "geni_failed" or (testbed == "geni_notready" and has_run):
                log.info(
                    "lease %s: the testbed ended its reservation (%s): destroying its containers", lease_id, testbed
                )
                over.add(lease_id)
            elif testbed == "geni_ready":
                due.append((lease_id, slice_urn, states))
        return over, due, provisioned

    # -- containers made by the testbed's jobs (plans) --------------------------------------------------------------
    def _unreported(self, lease_id: str, states: set[str]) -> bool:
        """The testbed's job runs the lease's containers and its node side has reported nothing on them yet."""
        return self.plans is not None and states <= {PLANNED, FAILED} and not self.plans.states(lease_id)

    def prepare(self, lease_id: str, user: str, keys: Sequence[str], now: datetime) -> bool:
        """Before the lease's job is submitted: give its live containers their addresses and write its plan for the
        node side (the job runs as ``user``; ``keys`` go to root in each container). False when the lease has no
        containers (its job is then an ordinary reservation). Provision again rewrites it (new keys)."""
        if self.plans is None:
            return False
        records = [record for record in self.of_lease(lease_id) if record.state in LIVE]
        if not records:
            return False
        removed = sorted({record.image for record in records if record.image and self.images.get(record.image) is None})
        if removed:  # never a plan naming something that is not an image file: refused before anything is written
            raise GeniError(
                Reason.NOT_FOUND,
                f"image {removed[0]} was removed from the repository since Allocate: Delete these slivers and "
                "allocate again with an image sfa-omf image list shows",
            )
        unaddressed = [record for record in records if not record.address]
        addressed = {record.name: record for record in self._assign_addresses(unaddressed, now)}
        records = [addressed.get(record.name, record) for record in records]
        host = self._host()
        start_s, end_s = self._slot_of(lease_id) or (None, None)
        nodes = self._network_addresses(sorted({record.node for record in records}))
        images = {label: self._planned_image(lease_id, label, nodes) for label in sorted({r.image for r in records})}
        self.plans.write(
            LeasePlan(
                lease_id=lease_id,
                nodes=nodes,
                user=user,
                bridge=host.bridge,
                lxc_path=str(host.lxc_path),
                ssh_timeout_s=self.ssh_timeout_s,
                keys=plan_keys(keys),
                containers=tuple(
                    PlannedContainer(record.name, record.address, images[record.image]) for record in records
                ),
                slot_start_s=start_s,
                slot_end_s=end_s,
            )
        )
        return True

    def rewrite_keys(self, lease_ids: Iterable[str], keys: Sequence[str]) -> list[str]:
        """The slice's users changed (geni_update_users, Provision again with more users): ``keys`` (the whole new
        set) reach the containers. With plans, the plans of these leases get them (a job that has not started yet
        reads them; a run already running follows its plan and puts them into its containers at its next poll:
        node_containers._follow_plan. The plan stays the same plan, its id kept so a run's report still counts, and
        its slot: the lease's as recorded, which also gives one to a plan an aggregate older than slots wrote). On
        this host, every container of these leases that exists (running, stopped, failed to start) gets them as
        root's authorized_keys at once: a key left out is refused from the next login on (planned ones start with
        the slice's keys of their start). A container whose file cannot be rewritten is logged and the others go on.
        Returns the leases whose plan, or whose containers, were rewritten."""
        if self.plans is not None:
            return self._rewrite(lease_ids, lambda plan: replace(plan, keys=plan_keys(keys)))
        rewritten: list[str] = []
        if self.host is None:
            return rewritten
        for lease_id, records in sorted(self.of_leases(lease_ids).items()):
            # Made: create() finished (its own keys are written), so a rewrite now is the last word on the file.
            made = [record for record in records if record.state in LIVE and self.host.made(record.name)]
            for record in made:
                try:
                    self.host.write_keys(record.name, keys)
                except GeniError as exc:
                    log.warning("lease %s: the keys left out may still open %s: %s", lease_id, record.name, exc.message)
            if made:
                rewritten.append(lease_id)
        return rewritten

    def refresh_slots(self, lease_ids: Iterable[str]) -> list[str]:
        """Renewed leases: their plans get the new slot (a job the reconciler submits again after the old end must
        still be let run). Returns the leases whose plan was rewritten."""
        return self._rewrite(lease_ids, lambda plan: plan)

    def _rewrite(self, lease_ids: Iterable[str], change: Callable[[LeasePlan], LeasePlan]) -> list[str]:
        """Rewrite the existing plans of these leases with ``change`` and the lease's slot as recorded, each read and
        written under the plans' lock (LeasePlans.update). A plan that cannot be written (a full disk, a stale NFS
        handle) is logged and left: the call's change is recorded, and the rounds bring the plan to the calendar's
        slot and keys (sync_plans)."""
        rewritten: list[str] = []
        if self.plans is None:
            return rewritten
        for lease_id in lease_ids:

            def rewrite(plan: LeasePlan, lease_id: str = lease_id) -> LeasePlan:
                start_s, end_s = self._slot_of(lease_id) or (plan.slot_start_s, plan.slot_end_s)
                return replace(change(plan), slot_start_s=start_s, slot_end_s=end_s)

            try:
                if self.plans.update(lease_id, rewrite):
                    rewritten.append(lease_id)
            except OSError as exc:
                log.warning("lease %s: its plan could not be rewritten (the rounds retry): %s", lease_id, exc)
        return rewritten

    def sync_plans(self, slots: Mapping[str, tuple[str, int, int]], keys_of: Callable[[str], Sequence[str]]) -> None:
        """Bring the plans of provisioned leases (lease id -> slice URN, slot start, slot end) to the calendar: the
        slot and the slice users' keys as recorded. Repairs what a failed rewrite left (or an earlier signed version
        of the plan put back). Writes only a plan that differs, and never one this aggregate did not sign."""
        if self.plans is None:
            return
        keys: dict[str, tuple[str, ...]] = {}  # by slice: a slice's leases share its users (read once a round)
        for lease_id, (slice_urn, start_s, end_s) in sorted(slots.items()):
            if slice_urn not in keys:
                keys[slice_urn] = plan_keys(keys_of(slice_urn))
            try:
                self.plans.update(lease_id, _plan_with(start_s, end_s, keys[slice_urn]))
            except OSError as exc:
                log.warning("lease %s: its plan could not be brought up to date: %s", lease_id, exc)

    def _planned_image(self, lease_id: str, label: str, nodes: Sequence[str]) -> str:
        """The image file the plan names for ``label``: a public image's file in the store (every node reads the
        store), a private one's copy handed to the lease's nodes alone (its store file is the aggregate's only:
        LeasePlans.hand_image). TESTBED, nothing provisioned, when the copy cannot be made."""
        image = self.images.get(label) if label else None
        if image is None or not image.private:
            return self._image_path(label)
        assert self.plans is not None
        try:
            return self.plans.hand_image(lease_id, nodes, Path(image.path), label)
        except (OSError, ValueError) as exc:
            raise GeniError(
                Reason.TESTBED,
                f"private image {label!r} could not be handed to the lease's node(s) {', '.join(nodes)}: {exc}. "
                "Nothing was provisioned",
            ) from exc

    def _network_addresses(self, node_urns: Sequence[str]) -> tuple[str, ...]:
        """How the testbed names these nodes (their network_address, else their name: what a node side matches
        against its own names), in this order."""
        found = self.database.fetch_all(
            select(Node.component_id, Node.component_name, Node.properties).where(Node.component_id.in_(node_urns))
        )
        names = {str(urn): network_address(str(name), properties) for urn, name, properties in found}
        for urn, name in sorted(names.items()):
            if not is_node_name(name):
                raise GeniError(
                    Reason.TESTBED,
                    f"node {urn} is reached as {name!r}, which cannot name its report directory (letters, digits, "
                    "and _ . - :, at most 253): the operator must fix its network_address. Nothing was provisioned",
                )
        return tuple(names[urn] for urn in node_urns if urn in names)

    def _slot_of(self, lease_id: str) -> tuple[int, int] | None:
        """The lease's slot as recorded (start, end in epoch seconds), None when the lease is not recorded."""
        found = self.database.fetch_all(select(Lease.start_s, Lease.end_s).where(Lease.id == lease_id))
        return (int(found[0][0]), int(found[0][1])) if found else None

    def unprepare(self, lease_ids: Sequence[str], now: datetime) -> None:
        """Undo ``prepare`` for leases whose Provision failed: their plans go and their containers, still planned,
        give their addresses back."""
        if self.plans is None or not lease_ids:
            return
        for lease_id in lease_ids:
            self.plans.remove(lease_id)
        with self.database.write() as session:
            session.execute(
                update(LeaseInstance)
                .where(LeaseInstance.lease_id.in_(lease_ids), LeaseInstance.state == PLANNED)
                .values(address=None, updated_s=to_s(now))
            )

    def _follow_nodes(self, lease_ids: Sequence[str], now: datetime) -> list[str]:
        """The rows of leases whose job runs take what the node side reported: running, stopped, failed (with its
        reason). Returns the names now running. A node's word never destroys a row nor frees its address: the root
        of a node, or an earlier tenant of it, can write a report, and an address freed while its container still
        runs would be handed out twice; rows go when the aggregate itself ends them (the job's end, Delete, the
        slot's end)."""
        started: list[str] = []
        assert self.plans is not None
        for lease_id in lease_ids:
            reported = self.plans.states(lease_id)
            outcomes: dict[str, list[tuple[str, str, str]]] = {}  # row state expected -> (name, state, error)
            for record in self.of_lease(lease_id):
                state, error = reported.get(record.name, (record.state, record.error))
                if record.state in LIVE and state != record.state and state != DESTROYED:
                    outcomes.setdefault(record.state, []).append((record.name, state, error))
            for expected, changes in outcomes.items():
                missed = self._set_states(changes, now, expected=expected)
                started += [name for name, state, _ in changes if state == RUNNING and name not in missed]
        return started

    def check_operable(self, what: str, lease_ids: Iterable[str]) -> None:
        """BUSY when ``what`` (an operational action) would act on containers the testbed's jobs run whose node has
        not reported them yet (its run is still making them, or has not begun: there is nothing to act on yet);
        BADARGS when they failed without any report (the job ended first: no run is there to act)."""
        if self.plans is None:
            return
        for lease_id, found in self.of_leases(lease_ids).items():
            waiting = [record.name for record in found if record.state in (PLANNED, STARTING)]
            if waiting:
                raise GeniError(
                    Reason.BUSY,
                    f"{what}: the containers of lease {lease_id} ({', '.join(waiting)}) are still being made by the "
                    "lease's job on its node; nothing was changed. Try again once Status shows them ready or failed",
                )
            if any(record.state in LIVE for record in found) and not self.plans.states(lease_id):
                # Failed without a word from the node (its job ended first): no run is there to act.
                raise GeniError(
                    Reason.BAD_ARGS,
                    f"{what}: the lease's job on its node never reported the containers of lease {lease_id} (Status "
                    "says why they failed); nothing was changed. Delete the slivers and allocate again",
                )

    def act_on_nodes(
        self,
        lease_id: str,
        action: str,
        now: datetime,
        containers: Sequence[str] = (),
        deadline: float | None = None,
    ) -> ActionDone | None:
        """Hand the lease's run on its node an action (sfa_omf/images/node_plans.py LeaseAction: start, stop,
        restart, save) and wait, at most ``action_timeout_s`` and holding no database transaction, for its report of
        that action; the rows take the states it reports. None when the node did not answer in time (the action
        stays handed: later rounds take its report, and Status says it is in progress meanwhile). ``deadline``
        (time.monotonic()): one call's bound for all its leases, instead of ``action_timeout_s`` from now."""
        if self.plans is None:
            raise GeniError(Reason.UNSUPPORTED, "this aggregate runs the containers itself")
        plan = self.plans.read(lease_id)
        if plan is None:
            raise GeniError(Reason.NOT_FOUND, f"lease {lease_id} has no plan for its node: Provision it first")
        seq = self.plans.hand_action(lease_id, plan.plan_id, action, containers).seq
        done = self.plans.done(lease_id)
        if deadline is None:
            deadline = time.monotonic() + self.action_timeout_s
        while (done is None or done.seq < seq) and time.monotonic() < deadline:
            time.sleep(0.25)
            done = self.plans.done(lease_id)
        if done is None or done.seq < seq:
            log.info("lease %s: action %d (%s) not reported by its node yet", lease_id, seq, action)
            return None
        self._follow_nodes([lease_id], now)
        return done

    def pending_actions(self, lease_ids: Iterable[str]) -> dict[str, str]:
        """The actions handed to the nodes of these leases that their runs have not reported done: lease -> action."""
        pending: dict[str, str] = {}
        if self.plans is None:
            return pending
        for lease_id in lease_ids:
            action = self.plans.action(lease_id)
            if action is not None:
                done = self.plans.done(lease_id)
                if done is None or done.seq < action.seq:
                    pending[lease_id] = action.action
        return pending

    def _refuse_on_nodes(self, what: str) -> None:
        if self.plans is not None:
            raise GeniError(
                Reason.UNSUPPORTED,
                f"{what}: on this testbed the lease's job runs its containers on the job's node: the aggregate "
                "hands the action to it (act_on_nodes) and never runs LXC itself",
            )

    # -- acting on a lease's containers -----------------------------------------------------------------------------
    def start_lease(self, lease_id: str, keys: Sequence[str], now: datetime) -> list[Instance]:
        """Launch every container of the lease that does not exist (planned, or failed to launch, or gone); start
        those that exist and do not run (stopped, failed to start). Each ends running, or failed with LXC's reason; one
        failing does not stop the others. Each row is
        first claimed (its state as read -> starting, one conditional update): a start running meanwhile (the
        leader's round, another request, another worker) leaves the rows it did not claim alone."""
        self._refuse_on_nodes("geni_start")
        host = self._host()
        wanted = [
            record
            for record in self.of_lease(lease_id)
            if record.state in LIVE
            and record.state != STARTING
            and (record.state != RUNNING or host.state(record.name) in NOT_RUNNING)  # stopped by itself, or gone
        ]
        claimed = self._claim(wanted, now)
        mine = [record for record in wanted if record.name in claimed]
        try:
            # Only now, the rows being ours. A planned row's container can only be left by a start that died (its row
            # recovered), a failed row's by a launch whose clean-up failed: half made, it is destroyed and made again.
            # Any other container is started as it is, keeping its disk (stopped, or its start failed).
            for record in mine:
                if record.state in (PLANNED, FAILED) and host.state(record.name) and not host.made(record.name):
                    log.warning("container %s was left half made by an interrupted start: making it again", record.name)
                    host.destroy(record.name)
            to_start = [record for record in mine if host.state(record.name)]
            to_launch = [record for record in mine if record not in to_start]
            addressed = self._assign_addresses(to_launch, now)
        except BaseException:
            self._release(mine, now)  # as they were: nothing half-started
            raise
        specs = [InstanceSpec(r.name, r.address, tuple(keys), LOGIN) for r in addressed]
        images = {r.name: self._image_path(r.image) for r in addressed}
        outcomes: list[tuple[str, str, str]] = []
        try:
            with self._renewing_claims([record.name for record in mine], now):
                with ThreadPoolExecutor(max_workers=LAUNCH_WORKERS) as pool:
                    outcomes += pool.map(lambda spec: self._launch(spec, images[spec.name]), specs)
                for record in to_start:
                    if host.state(record.name) == "RUNNING":  # left running by an interrupted start: only SSH is left
                        state, error = RUNNING, ""
                    else:
                        state, error = self._attempt(functools.partial(host.start, record.name), record.name)
                    if state == RUNNING and not wait_for_ssh(record.host, self.ssh_timeout_s):
                        state, error = FAILED, f"container {record.name} started but its SSH server did not answer"
                    outcomes.append((record.name, state, error))
        except Exception as exc:
            # Never left starting until the stale-start recovery (which would only try, and fail, again): what
            # this start did not finish is failed with why; geni_start tries again.
            log.exception("lease %s: its containers' start failed", lease_id)
            reason = unexpected_failure(f"the start of the containers of lease {lease_id} failed", exc)
            done = {name for name, _, _ in outcomes}
            self._set_states(
                outcomes + [(r.name, FAILED, reason) for r in mine if r.name not in done], now, expected=STARTING
            )
            raise
        gone = self._set_states(outcomes, now, expected=STARTING)
        for name in gone & {name for name, state, _ in outcomes if state == RUNNING}:
            log.warning("container %s: its lease's containers were destroyed while it started: destroying it", name)
            host.destroy(name)  # ours (we claimed the row and made it), and no longer wanted
        return self.of_lease(lease_id)

    def stop_lease(self, lease_id: str, now: datetime) -> list[Instance]:
        """Stop the lease's running containers (they keep their disk and address)."""
        self._refuse_on_nodes("geni_stop")
        host = self._host()
        outcomes = []
        for record in self.of_lease(lease_id):
            if record.state == RUNNING:
                done, error = self._attempt(functools.partial(host.stop, record.name), record.name)
                outcomes.append((record.name, STOPPED if done == RUNNING else FAILED, error))
        self._set_states(outcomes, now, expected=RUNNING)
        return self.of_lease(lease_id)

    def destroy_lease(self, lease_id: str, now: datetime) -> list[str]:
        """Stop and destroy every container of the lease; their rows say destroyed and give their address back."""
        names: list[str] = []
        failures: list[GeniError] = []
        for record in self.of_lease(lease_id):
            if record.state not in LIVE:
                continue
            try:
                if self.host is not None and self.plans is None:  # with plans, the job's end destroys them
                    self.host.destroy(record.name)
                names.append(record.name)
            except GeniError as exc:  # the others still go; this one stays live and the next round retries it
                failures.append(exc)
        if names:
            with self.database.write() as session:
                session.execute(
                    update(LeaseInstance)
                    .where(LeaseInstance.name.in_(names))
                    .values(state=DESTROYED, address=None, updated_s=to_s(now))
                )
        if self.plans is not None:
            self.plans.remove(lease_id)  # a job still to start finds no plan: it makes nothing
        if failures:
            raise failures[0]
        return names

    def save(self, instance: Instance, label: str, owner: str, now: datetime) -> str:
        """Snapshot a container's file system into the repository as image ``label``, private to ``owner`` (no keys,
        passwords, SSH host keys nor device files in it; at most ``max_image_bytes``; links followed nowhere:
        archives.save_rootfs), and checked as an archive from a node is (check_archive: no link leading out); returns
        the label. A running container is frozen while it is archived. BADARGS or ALREADY_EXISTS before anything is
        written; so are TOO_BIG (the owner's quota of saved images: ``quota``) and UNAVAILABLE (the image store's
        filesystem at its reserve), and an archive that outgrows the room left is removed, nothing recorded. With
        ``plans`` the lease's run archives it on its node (``_save_on_node``)."""
        check_label(label)
        if self.images.get(label) is not None:
            raise GeniError(Reason.ALREADY_EXISTS, f"image label {label!r} is already taken: choose another label")
        if instance.state not in (RUNNING, STOPPED):
            raise BadArgs(f"container {instance.name} is {instance.state}: only a running or stopped one can be saved")
        room = self.images.room_for_save(owner, label, self.quota)  # before anything is written, or a node asked
        if self.plans is not None:
            return self._save_on_node(instance, label, owner, now, room)
        host = self._host()
        rootfs = host.lxc_path / instance.name / "rootfs"
        bound = min(self.max_image_bytes, room)  # the archive never outgrows the owner's quota nor the reserve
        self.images.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.images.directory, prefix=".save-") as scratch:
            archive = Path(scratch) / "image.tar"
            # Archived as root while the container's root may act: frozen meanwhile (LxcHost.frozen, the node side's
            # save too), it cannot swap a directory for a link to a host path under the walk (which follows no link
            # anyway: save_rootfs).
            try:
                with host.frozen(instance.name):
                    save_rootfs(rootfs, archive, bound)
            except ArchiveError as exc:
                if isinstance(exc, ArchiveTooLarge) and exc.max_bytes < self.max_image_bytes:
                    self.images.refuse_save(owner, label, self.quota, exc.max_bytes + 1)  # the quota's or reserve's
                raise GeniError(Reason.TESTBED, f"container {instance.name} was not saved: {exc}") from exc
            except (OSError, tarfile.TarError) as exc:
                raise GeniError(Reason.TESTBED, f"container {instance.name} could not be archived: {exc}") from exc
            try:
                check_archive(archive, self.max_image_bytes)  # what every launch of it would refuse, refused now
            except ArchiveError as exc:
                raise GeniError(
                    Reason.TESTBED,
                    f"container {instance.name} was not saved: {exc}. Remove what makes it unfit (a link climbing "
                    "out of the root file system with '..') and save again",
                ) from exc
            self.images.add(
                archive,
                label,
                owner,
                now,
                description=f"saved from container {instance.name} ({instance.image})",
                private=True,  # only its owner may use it until an operator publishes it
                quota=self.quota,  # again, with its size
            )
        return label

    def _save_on_node(self, instance: Instance, label: str, owner: str, now: datetime, room: int) -> str:
        """The lease's run archives the container on its node; the archive, untrusted (the node is the experimenter's
        for the slot), is copied, checked (sfa_omf/images/archives.py) and only then imported. ``room``: the bytes
        the owner's quota and the store's reserve left when the save began (the node writes its archive whole: an
        archive past it is refused and removed, the copy never made past it)."""
        assert self.plans is not None
        done = self.act_on_nodes(instance.lease_id, ACTION_SAVE, now, [instance.name])
        if done is None:
            raise GeniError(
                Reason.TIMEDOUT,
                f"the node of container {instance.name} did not archive it within {self.action_timeout_s:g} s: "
                "nothing was saved; try again later",
            )
        archive = self.plans.archive_path(instance.lease_id, done.node, done.seq)
        try:
            if done.action != ACTION_SAVE or done.errors:
                problem = done.errors.get(instance.name) or f"its node did {done.action!r} instead"
                raise GeniError(Reason.TESTBED, f"container {instance.name} could not be archived: {problem}")
            if done.size > room:  # the node's word: spares the copy (which is bounded and checked all the same)
                self.images.refuse_save(owner, label, self.quota, done.size, at_least=False)
            self.images.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.images.directory, prefix=".save-") as scratch:
                copy = os.path.join(scratch, "image.tar")
                try:
                    if done.archive != str(archive):
                        raise ArchiveError(f"the node reported its archive at {done.archive!r}, not at {archive}")
                    digest = take(archive, Path(copy), min(MAX_ARCHIVE_BYTES, room))
                    if digest != done.sha256:
                        raise ArchiveError("it is not the file the node reported (its sha256 differs)")
                    check_archive(Path(copy))
                except ArchiveError as exc:
                    if isinstance(exc, ArchiveTooLarge) and exc.max_bytes < MAX_ARCHIVE_BYTES:
                        self.images.refuse_save(owner, label, self.quota, exc.max_bytes + 1)
                    raise GeniError(
                        Reason.TESTBED,
                        f"the archive of container {instance.name} made on its node was refused: {exc}. Nothing was "
                        "saved: remove what makes it unfit (device files, links leading out) and save again",
                    ) from exc
                self.images.add(
                    copy,
                    label,
                    owner,
                    now,
                    description=f"saved from container {instance.name} ({instance.image})",
                    private=True,
                    quota=self.quota,
                )
        finally:
            # This save's archive, and those of earlier saves whose node answered after their call gave up.
            try:
                self.plans.drop_archives(instance.lease_id, done.node, upto_seq=done.seq)
            except OSError as exc:  # the save's outcome stands: what is left goes with the lease
                log.warning("lease %s: the node's save archives could not be removed: %s", instance.lease_id, exc)
        return label

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _host(self) -> LxcHost:
        if self.host is None:
            raise GeniError(Reason.UNSUPPORTED, "this aggregate runs no containers")
        return self.host

    def _image_path(self, label: str) -> str:
        if not label:
            return ""
        image = self.images.get(label)
        return image.path if image is not None else f"(image {label} was removed)"

    def _launch(self, spec: InstanceSpec, image: str) -> tuple[str, str, str]:
        host = self._host()
        state, error = self._attempt(lambda: host.launch(spec, self.ssh_timeout_s, image=image), spec.name)
        return spec.name, state, error

    @staticmethod
    def _attempt(action: Callable[[], object], name: str = "") -> tuple[str, str]:
        """(RUNNING, "") when ``action`` on container ``name`` went through, else (FAILED, why): LXC's words, or
        for anything else it raised (a bug, an image tarfile cannot lay out) its kind and words, logged with where it
        came from: one container's failure is that container's, never its lease's start's."""
        try:
            action()
        except GeniError as exc:
            return FAILED, exc.message
        except Exception as exc:
            log.exception("container %s: unexpected failure", name)
            return FAILED, unexpected_failure(f"container {name} failed", exc)
        return RUNNING, ""

    def _assign_addresses(self, records: Sequence[Instance], now: datetime) -> list[Instance]:
        """Give each container a free address of the network (the first is the bridge's own), recorded at once."""
        if not records:
            return []
        for attempt in range(ADDRESS_ATTEMPTS):
            try:
                return self._assign_addresses_once(records, now)
            except IntegrityError as exc:  # another lease's start took one of these addresses meanwhile: read again
                if attempt == ADDRESS_ATTEMPTS - 1:
                    raise GeniError(
                        Reason.TESTBED,
                        f"addresses for the containers of lease {records[0].lease_id} were taken by "
                        "other starts at the same moment: try again",
                    ) from exc
        return []  # not reached

    def _assign_addresses_once(self, records: Sequence[Instance], now: datetime) -> list[Instance]:
        names = {record.name for record in records}
        with self.database.write() as session:
            held = {
                str(address).split("/", 1)[0]
                for address, name in session.execute(
                    select(LeaseInstance.address, LeaseInstance.name).where(LeaseInstance.address.is_not(None))
                )
                if name not in names
            }
            free = (str(ip) for ip in list(self.network.hosts())[1:] if str(ip) not in held)
            given = {}
            for record in records:
                address = next(free, None)
                if address is None:
                    raise GeniError(
                        Reason.TESTBED, f"no free address left in {self.network} for container {record.name}"
                    )
                given[record.name] = f"{address}/{self.network.prefixlen}"
                session.execute(
                    update(LeaseInstance)
                    .where(LeaseInstance.name == record.name)
                    .values(address=given[record.name], updated_s=to_s(now))
                )
        return [_with_address(record, given[record.name]) for record in records]

    def _fail_planned(self, lease_id: str, reason: str, now: datetime) -> None:
        """The lease's containers still planned are failed, with why (the tick does not retry them: geni_start does)."""
        with self.database.write() as session:
            session.execute(
                update(LeaseInstance)
                .where(LeaseInstance.lease_id == lease_id, LeaseInstance.state == PLANNED)
                .values(state=FAILED, error=reason, updated_s=to_s(now))
            )

    @contextmanager
    def _renewing_claims(self, names: Sequence[str], now: datetime) -> Iterator[None]:
        """While a start works, its claimed rows' ``updated_s`` moves on every CLAIM_RENEWAL_S (in the frame of the
        start's ``now``): only the claim of a start whose process died grows stale."""
        if not names:
            yield
            return
        done = threading.Event()
        began = time.monotonic()
        fence = fence_of_this_thread()  # the renewals are the start's writes: fenced as its task's (calendar/fence.py)

        def renew() -> None:
            try:
                with fenced_as(fence):
                    while not done.wait(CLAIM_RENEWAL_S):
                        try:
                            with self.database.write() as session:
                                session.execute(
                                    update(LeaseInstance)
                                    .where(LeaseInstance.name.in_(names), LeaseInstance.state == STARTING)
                                    .values(updated_s=to_s(now) + int(time.monotonic() - began))
                                )
                        except GeniError as exc:  # the next renewal tries again; the start goes on
                            log.warning(
                                "the claim of containers %s could not be renewed: %s", ", ".join(names), exc.message
                            )
                        except TransientConflict as exc:  # a lock wait reached its bound (fence.py): the next one
                            log.warning(
                                "the claim of containers %s could not be renewed (the calendar was busy: %s)",
                                ", ".join(names),
                                exc,
                            )
            except LeadershipLost:  # another process leads: its recovery may start them again
                log.warning("the claim of containers %s is no longer renewed: this process no longer leads", names)

        renewer = threading.Thread(target=renew, name="container-claims", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _recover_interrupted_starts(self, now: datetime) -> None:
        """Rows a dead start left claimed go back to planned: the next round starts them (start_lease keeps a whole
        container and makes a half-made one again). A live start renews its claim every CLAIM_RENEWAL_S."""
        stale = (LeaseInstance.state == STARTING, LeaseInstance.updated_s < to_s(now) - STALE_START_S)
        # Read first: an UPDATE, even of no row, is a write that moves the calendar's generation (every cache).
        if not self.database.fetch_all(select(LeaseInstance.name).where(*stale).limit(1)):
            return
        with self.database.write() as session:
            done = session.execute(
                update(LeaseInstance).where(*stale).values(state=PLANNED, error="", updated_s=to_s(now))
            )
        recovered = cast("CursorResult[Any]", done).rowcount
        if recovered:
            log.warning("%d container(s) left starting by an interrupted start: starting them again", recovered)

    def _claim(self, records: Sequence[Instance], now: datetime) -> set[str]:
        """The names of the rows this call moved from the state it read to starting (the others: somebody else's)."""
        claimed: set[str] = set()
        if not records:
            return claimed
        with self.database.write() as session:
            for record in records:
                done = session.execute(
                    update(LeaseInstance)
                    .where(LeaseInstance.name == record.name, LeaseInstance.state == record.state)
                    .values(state=STARTING, updated_s=to_s(now))
                )
                if cast("CursorResult[Any]", done).rowcount == 1:
                    claimed.add(record.name)
        return claimed

    def _release(self, records: Sequence[Instance], now: datetime) -> None:
        """Claimed rows back to the state they had."""
        self._set_states([(r.name, r.state, r.error) for r in records], now, expected=STARTING)

    def _set_states(self, outcomes: Sequence[tuple[str, str, str]], now: datetime, expected: str) -> set[str]:
        """Record each (name, state, error) whose row is still in state ``expected`` (a Delete meanwhile wins);
        returns the names whose row was not."""
        missed: set[str] = set()
        if not outcomes:
            return missed
        with self.database.write() as session:
            for name, state, error in outcomes:
                done = session.execute(
                    update(LeaseInstance)
                    .where(LeaseInstance.name == name, LeaseInstance.state == expected)
                    .values(state=state, error=error, updated_s=to_s(now))
                )
                if cast("CursorResult[Any]", done).rowcount != 1:
                    missed.add(name)
        return missed


def unexpected_failure(what: str, exc: BaseException) -> str:
    """What a person is told of a failure nothing foresaw (``what``: e.g. "container X failed"): the exception's
    kind and words, where its details are, and what to do."""
    return (
        f"{what}: unexpected {type(exc).__name__}: {str(exc) or 'no message'} (the aggregate's log has the details for "
        "its operator; geni_start tries again)"
    )


def stopped_by_itself(name: str, gone: bool = False) -> str:
    """What Status says of a container that was running and no longer runs (``gone``: no longer exists)."""
    if gone:
        return (
            f"container {name} no longer exists on its host (removed there): geni_start makes it again from its "
            "image (what its disk held is lost)"
        )
    return (
        f"container {name} stopped by itself (its processes ended: a poweroff inside it, a crash, out of memory): "
        "geni_start starts it again, with its disk as it was left"
    )


def _plan_with(start_s: int, end_s: int, keys: tuple[str, ...]) -> Callable[[LeasePlan], LeasePlan]:
    """A change of a plan to this slot and these keys (LeasePlans.update)."""
    return lambda plan: replace(plan, slot_start_s=start_s, slot_end_s=end_s, keys=keys)


def plan_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """Keys as a plan holds them: one line each, words separated by one space (the registry accepts tabs or several
    spaces; the node side reads exactly one OpenSSH line per key)."""
    return tuple(" ".join(key.split()) for key in keys if key.strip())


def instances_of(settings: Any, database: Database, images: ImageStore) -> Instances | None:
    """The containers service the configuration asks for: None without ``[sfa_omf] instance_bridge``. On the OAR
    backend the leases' jobs run them on their nodes, from plans in the image store's ``leases/`` directory."""
    if not settings.instance_bridge:
        return None
    host = LxcHost(settings.instance_bridge, lxc_path=settings.instance_lxc_path)
    plans = lease_plans(settings, images.directory) if settings.aggregate_type == "oar" else None
    # Once per start: a store written before image modes were set has its private (saved) images readable by all.
    images.secure_modes()
    return Instances(
        database,
        host,
        settings.instance_network,
        images,
        plans=plans,
        action_timeout_s=float(settings.instance_action_timeout_s),
        quota=SaveQuota.of(settings),
    )


_COLUMNS = select(
    LeaseInstance.name,
    LeaseInstance.lease_id,
    LeaseInstance.sliver_urn,
    LeaseInstance.node,
    LeaseInstance.position,
    LeaseInstance.image,
    LeaseInstance.address,
    LeaseInstance.state,
    LeaseInstance.error,
)


def _record(row: object) -> Instance:
    values: Mapping[str, object] = row._mapping  # type: ignore[attr-defined]
    return Instance(
        name=str(values["name"]),
        lease_id=str(values["lease_id"]),
        sliver_urn=str(values["sliver_urn"]),
        node=str(values["node"]),
        position=int(str(values["position"])),
        image=str(values["image"]),
        address=str(values["address"] or ""),
        state=str(values["state"]),
        error=str(values["error"]),
    )


def _with_address(record: Instance, address: str) -> Instance:
    return Instance(
        record.name, record.lease_id, record.sliver_urn, record.node, record.position, record.image, address,
        record.state, record.error,
    )  # fmt: skip
