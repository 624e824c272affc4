"""``sfa-omf-lease-containers``: the node side of lease containers on OAR (docs/images-and-instances.md).

A lease with containers is an OAR job whose command is ``sudo -n sfa-omf-lease-containers run PLAN``: on the job's
node, as root (the sudo rule an operator installs, docs/operators.md), it creates and starts the containers the
aggregate planned (sfa_omf/images/node_plans.py), reports what became of each next to the plan, then waits. It
destroys them when it is signalled (SIGTERM, SIGINT, SIGHUP). OAR ends a job (oardel, its walltime) by SIGKILLing the
job's processes, which nothing can catch: ``sfa-omf-lease-containers reap JOB_ID``, run as root by OAR's node
epilogue once the job's processes are gone, destroys the containers of that job's ``run`` (recorded with
$OAR_JOB_ID), and of a few other runs that are no longer alive. Nothing outlives the
job.

Root runs this on behalf of the job's user, so it trusts only a plan that nobody but the aggregate can have written:
signed with a key listed in /etc/sfa-omf/plan-signers (sfa_omf/images/plan_signing.py; during a lease its
experimenter is root on its node, and could write any file the nodes share), naming this node, that user and a slot
that runs now; and, besides, a file owned by root or by an account listed in /etc/sfa-omf/plan-writers (the
aggregate's service account, e.g. ``sfa-omf``), in directories owned likewise that nobody else may change (sticky ones
like /tmp aside). Actions are signed likewise. While it runs, it follows its plan: a newer version (its revision)
trusted likewise, of the same plan, for this node, that user and a slot running now, gives the containers it made
its keys (geni_update_users). Reports and save archives go into the node's own directory, ``nodes/<node>/`` beside
the plans, which an operator exports to that node alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import sys
import tarfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sfa_omf.errors import GeniError
from sfa_omf.images.archives import ArchiveError, save_rootfs, sha256_of
from sfa_omf.images.lxc import InstanceSpec, LxcHost, wait_for_ssh
from sfa_omf.images.node_plans import (
    ACTION_RESTART,
    ACTION_SAVE,
    ACTION_START,
    ACTION_STOP,
    EXIT_PLAN_REFUSED,
    NODE_DESTROYED,
    NODE_FAILED,
    NODE_RUNNING,
    NODE_STOPPED,
    ActionDone,
    LeaseAction,
    LeasePlan,
    PlanError,
    action_path_of,
    archive_path_of,
    image_on_node,
    open_signed,
    read_bounded,
    report_path_of,
    report_text,
    write_states,
)
from sfa_omf.images.plan_signing import KIND_ACTION, KIND_PLAN, PlanVerifier, SignatureError

RUNS_DIR = Path("/run/sfa-omf-lease-containers")  # one record per live `run`, for `reap`
WRITERS_FILE = Path("/etc/sfa-omf/plan-writers")  # accounts besides root whose plans are trusted, one per line
SIGNERS_FILE = Path("/etc/sfa-omf/plan-signers")  # the aggregates' public keys (sfa-omf instance signing-key)
LOGIN = "root"
LAUNCH_WORKERS = 4
REAP_OTHERS = 4  # dead runs of other jobs one reap destroys besides its own job's (an epilogue has little time)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# A plan runs only during its lease's slot. OAR starts an advance reservation's job at its start; this much earlier
# is accepted all the same, for a node's clock a little ahead of the aggregate's.
SLOT_EARLY_S = 120
SLOT_OVER = 0  # what _serve_actions returns when the lease's slot ended (no signal is 0)
ACTION_POLL_S = 1.0  # while it waits for its stop signal, a run looks for the aggregate's action this often
STATE_POLLS = 5  # and every this many polls, whether the containers it reports running still run (_note_stopped)


@dataclass(frozen=True)
class RunRecord:
    """A `run` in progress: its process (pid and start time: a pid is reused) and what it made."""

    pid: int
    started: str  # /proc/<pid>/stat's start time, in clock ticks since boot
    plan: str
    bridge: str
    lxc_path: str
    names: tuple[str, ...]
    plan_id: str = ""  # the plan's own id, echoed in the reports
    job_id: str = ""  # the OAR job that ran it ($OAR_JOB_ID), "" outside OAR
    report: str = ""  # where it reports (its node's directory); "" in a record of a run older than node directories


@dataclass(frozen=True)
class LeaseRun:
    """What a `run` works with once its containers are made: the plan (at ``path``, verified with ``verifier``), the
    name the plan gives this node, the LXC host, the names it made, and each container's state (updated as it acts)."""

    path: Path
    plan: LeasePlan
    verifier: PlanVerifier
    node: str
    host: LxcHost
    made: tuple[str, ...]
    states: dict[str, tuple[str, str]]


def untrusted(path: Path, writers: frozenset[int] = frozenset({0})) -> str:
    """Why root must not act on the file at ``path`` ("" when it may): it and every directory above it must be owned
    by one of ``writers`` (uids) and not writable by others (a sticky directory, like /tmp, may be: nobody replaces
    its owner's entries)."""
    try:
        info = path.lstat()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    for item in [path, *path.parents]:
        info = item.lstat()
        if info.st_uid not in writers:
            return f"{item} is not owned by root or a plan writer ({WRITERS_FILE})"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not (item != path and info.st_mode & stat.S_ISVTX):
            return f"{item} may be changed by others than its owner"
    return ""


def plan_writers() -> frozenset[int]:
    """root and the accounts WRITERS_FILE lists (a file only root may change; unknown names are ignored)."""
    uids = {0}
    if WRITERS_FILE.is_file() and not untrusted(WRITERS_FILE):
        for line in WRITERS_FILE.read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                with contextlib.suppress(KeyError):
                    uids.add(pwd.getpwnam(name).pw_uid)
    return frozenset(uids)


def plan_verifier() -> PlanVerifier:
    """The aggregates' keys from SIGNERS_FILE, a file only root may change; PlanError saying what to install when
    there is none or it is not one (then no plan and no action is trusted)."""
    problem = untrusted(SIGNERS_FILE)
    if problem:
        raise PlanError(
            f"no aggregate key is trusted here ({problem}): install the line `sfa-omf instance signing-key` prints on "
            f"the aggregate into {SIGNERS_FILE}, owned by root"
        )
    try:
        return PlanVerifier.from_lines(read_bounded(SIGNERS_FILE))
    except (OSError, SignatureError) as exc:
        raise PlanError(f"{SIGNERS_FILE}: {exc}") from exc


def is_this_node(name: str) -> bool:
    """Whether ``name`` (a plan's node: OAR's network_address of it) is this host: its host name, or an address
    this host may bind (one of its own; no packet is sent). A name that does not resolve is not this host."""
    hostname = socket.gethostname()
    if name in (hostname, hostname.split(".", 1)[0]):
        return True
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, address in found:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address[0], 0))
            except OSError:
                continue
            return True
    return False


def invoking_user() -> str:
    """The user on whose behalf this runs: sudo's caller, else the process's own user."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def run(plan_path: str) -> int:
    """Create and start the plan's containers, report, wait for a stop signal or the end of the lease's slot, destroy
    them. EXIT_PLAN_REFUSED (2) for a plan refused, 1 when a container failed (the others run until the end all the
    same), 0 otherwise."""
    path = Path(os.path.abspath(plan_path))
    trusted = _trusted_plan(path)
    if trusted is None:
        return EXIT_PLAN_REFUSED
    plan, verifier, node = trusted
    # The action there now is an earlier run's (not done again); read before anything is made, so that one the
    # aggregate hands from now on (while the containers are made, or the instant they are reported) is this run's.
    said: set[str] = set()  # each refusal is said once, not at every poll
    earlier = _trusted_action(action_path_of(path), plan, verifier, plan_writers(), said)
    # Signals wait until the containers are made (and a record names them): none is left half-made by a signal.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    host = LxcHost(plan.bridge, lxc_path=plan.lxc_path)
    # A container of a planned name that exists already is not this run's (another run of the plan, or anything
    # else): left alone, never destroyed at this run's end; only the names this run makes are recorded.
    taken = [c.name for c in plan.containers if (host.lxc_path / c.name).exists()]
    fresh = [c for c in plan.containers if c.name not in taken]
    record = RunRecord(
        os.getpid(), _start_time(os.getpid()), str(path), plan.bridge, plan.lxc_path,
        tuple(c.name for c in fresh), plan.plan_id, os.environ.get("OAR_JOB_ID", ""),
        str(report_path_of(path, node)),
    )  # fmt: skip
    _register(record)
    report = Path(record.report)

    def launch(index: int) -> tuple[str, str, str]:
        container = fresh[index]
        spec = InstanceSpec(container.name, container.address, plan.keys, LOGIN)
        try:
            # A private image is read from this node's own copy (node_plans.LeasePlans.hand_image).
            host.launch(spec, plan.ssh_timeout_s, image=image_on_node(container.image, path, plan, node))
        except GeniError as exc:
            return container.name, NODE_FAILED, exc.message
        except Exception as exc:  # one container's failure, whatever it is: the others still run, all are reported
            print(f"container {container.name}: unexpected failure", file=sys.stderr, flush=True)
            traceback.print_exc()
            return container.name, NODE_FAILED, unexpected_failure(container.name, exc)
        return container.name, NODE_RUNNING, ""

    with ThreadPoolExecutor(max_workers=LAUNCH_WORKERS) as pool:
        outcomes = list(pool.map(launch, range(len(fresh))))
    outcomes += [
        (name, NODE_FAILED, f"a container named {name} exists already on this node: left alone") for name in taken
    ]
    states = {name: (state, error) for name, state, error in outcomes}
    _report(report, states, plan.plan_id)
    for name, state, error in outcomes:
        print(f"container {name}: {state}{f' ({error})' if error else ''}", flush=True)
    lease_run = LeaseRun(path, plan, verifier, node, host, record.names, states)
    received = _serve_actions(lease_run, earlier.seq if earlier is not None else 0, said)
    why = "the lease's slot is over" if received == SLOT_OVER else f"signal {signal.Signals(received).name}"
    print(f"{why}: destroying the containers", flush=True)
    _destroy(record)
    return 1 if any(state == NODE_FAILED for state, _ in states.values()) else 0


def _serve_actions(lease_run: LeaseRun, last: int, said: set[str]) -> int:
    """Until a stop signal (returned) or the slot's end (SLOT_OVER): do each action the aggregate hands next to the
    plan, once (by its seq), on the containers this run made, and report their states and the action done; and
    follow the plan: a newer version the aggregate signed gives those containers its keys (_follow_plan). ``last``:
    the seq of the action that was there when the run began, an earlier run's (not done again). ``said``: the
    refusals said already (each is said once)."""
    path, plan, verifier = lease_run.path, lease_run.plan, lease_run.verifier
    action_path = action_path_of(path)
    writers = plan_writers()
    followed = plan
    slot_end_s = plan.slot_end_s
    report = report_path_of(path, lease_run.node)
    done: ActionDone | None = None
    polls = 0
    while True:
        received = signal.sigtimedwait(STOP_SIGNALS, ACTION_POLL_S)
        if received is not None:
            return received.si_signo
        polls += 1
        if polls % STATE_POLLS == 0 and _note_stopped(lease_run):
            _report(report, lease_run.states, plan.plan_id, done)
        _reassert(report, lease_run.states, plan.plan_id, done)
        if slot_end_s is not None and time.time() >= slot_end_s:
            # The containers are the lease's until its slot's end, whoever started this run (its job, or the plan's
            # user through the sudo rule): a Renew moves the end in the plan; a plan gone or untrusted ends it.
            slot_end_s = _slot_end_now(path, plan, verifier, writers)
            if slot_end_s is None or time.time() >= slot_end_s:
                return SLOT_OVER
        followed = _follow_plan(lease_run, followed, writers, said)
        action = _trusted_action(action_path, plan, verifier, writers, said)
        if action is None or action.seq <= last:
            continue
        last = action.seq
        done = _act(action, lease_run)
        _report(report, lease_run.states, plan.plan_id, done)
        failed = "".join(f"; {name}: {error}" for name, error in sorted(done.errors.items()))
        print(f"action {action.seq} {action.action}: done{failed}", flush=True)


def _note_stopped(lease_run: LeaseRun) -> bool:
    """The containers this run made and reports running that LXC finds stopped (a poweroff inside, a crash, the
    kernel's OOM killer) are reported stopped, saying so and that geni_start starts them again (_operate: as they
    are, their disk kept). True when one was. Actions run in this same loop: none is half done meanwhile."""
    noted = False
    for name in lease_run.made:
        if lease_run.states.get(name, ("", ""))[0] == NODE_RUNNING and lease_run.host.state(name) == "STOPPED":
            lease_run.states[name] = (
                NODE_STOPPED,
                f"container {name} stopped by itself (its processes ended: a poweroff inside it, a crash, out of "
                "memory): geni_start starts it again, with its disk as it was left",
            )
            print(f"container {name}: stopped by itself", flush=True)
            noted = True
    return noted


def _follow_plan(lease_run: LeaseRun, followed: LeasePlan, writers: frozenset[int], said: set[str]) -> LeasePlan:
    """The version of the plan the run follows from now on: the plan file's when it is a newer version of
    ``followed`` that the run may follow (_newer_plan), ``followed`` otherwise. When the newer version's keys differ
    (geni_update_users, Provision again with other users), they become root's whole authorized_keys in every
    container this run made, running or stopped (LxcHost.write_keys: dropbear reads the file at each login, so a key
    left out is refused from the next login on). A container whose file cannot be rewritten is said on stderr, the
    others get the keys all the same."""
    newer = _newer_plan(lease_run.path, followed, lease_run.verifier, writers, lease_run.node, said)
    if newer is None:
        return followed
    if newer.keys != followed.keys:
        written = []
        for name in (name for name in lease_run.made if lease_run.host.made(name)):  # a failed launch left none
            try:
                lease_run.host.write_keys(name, newer.keys)
                written.append(name)
            except GeniError as exc:
                print(f"keys not rewritten: {exc.message}: keys left out still open it", file=sys.stderr, flush=True)
        print(f"keys: {len(newer.keys)} of the plan written into {', '.join(written) or 'no container'}", flush=True)
    return newer


def _newer_plan(
    path: Path, followed: LeasePlan, verifier: PlanVerifier, writers: frozenset[int], node: str, said: set[str]
) -> LeasePlan | None:
    """The plan at ``path`` if the run may follow it instead of ``followed``: trusted as the plan was when the run
    began (the same owners, signed by the aggregate as a plan), the same plan (its plan_id), a newer version of it
    (its revision: an earlier signed version put back in its place, with a key since removed, is refused), for this
    node and the user whose plan the run follows, and its slot running now. None otherwise: silently when it is the
    version followed, else saying once on stderr why it is not followed."""
    problem = untrusted(path, writers)
    plan = None
    if not problem:
        try:
            plan = LeasePlan.from_json(open_signed(verifier, KIND_PLAN, read_bounded(path)))
        except (OSError, PlanError) as exc:
            problem = f"{path}: {exc}"
    if plan is not None:
        if plan.plan_id != followed.plan_id:
            problem = f"{path} is now plan {plan.plan_id}, not plan {followed.plan_id} which this run follows"
        elif plan.revision == followed.revision:
            return None  # the version followed (read again)
        elif plan.revision < followed.revision:
            problem = (
                f"{path} is an earlier version of the plan (written {_utc(plan.revision / 1e6)}) than the one this "
                f"run follows (written {_utc(followed.revision / 1e6)}): the aggregate did not put it there"
            )
        else:
            refusal = plan_refusal(plan, path, followed.user, node if node in plan.nodes else "", time.time())
            problem = f"plan {path} {refusal}" if refusal else ""
    if problem and problem not in said:
        said.add(problem)
        print(f"plan not followed: {problem}; its keys are not taken", file=sys.stderr, flush=True)
    return None if problem else plan


def _reassert(path: Path, states: dict[str, tuple[str, str]], plan_id: str, done: ActionDone | None) -> None:
    """Write the run's report again when the file no longer holds it (removed, or replaced by a report this run did
    not write: one an earlier tenant of the node left there for this lease, say); the aggregate reads the truth within
    a poll."""
    try:
        current = read_bounded(path)
    except (OSError, PlanError):
        current = None
    if current != report_text(states, plan_id, done):
        with contextlib.suppress(OSError):  # a report root may not write was said once, at the run's first one
            _node_directory(path)
            write_states(path, states, plan_id, done)


def _slot_end_now(path: Path, plan: LeasePlan, verifier: PlanVerifier, writers: frozenset[int]) -> int | None:
    """The slot's end the plan at ``path`` says now (Renew moves it), None when it is gone, no longer trusted, or
    another plan now (a plan of another lease or another Provision is not this run's to follow)."""
    if untrusted(path, writers):
        return None
    try:
        now = LeasePlan.from_json(open_signed(verifier, KIND_PLAN, read_bounded(path)))
    except (OSError, PlanError):
        return None
    return now.slot_end_s if now.plan_id == plan.plan_id else None


def _trusted_action(
    path: Path, plan: LeasePlan, verifier: PlanVerifier, writers: frozenset[int], said: set[str]
) -> LeaseAction | None:
    """The action at ``path`` if it is trusted as the plan is (signed, same owners, bounded, about this very
    plan)."""
    if not path.exists():
        return None
    problem = untrusted(path, writers)
    action = None
    if not problem:
        try:
            action = LeaseAction.from_json(open_signed(verifier, KIND_ACTION, read_bounded(path)))
        except (OSError, PlanError) as exc:
            problem = f"{path}: {exc}"
    if action is not None and action.plan_id != plan.plan_id:
        problem, action = f"{path} is about plan {action.plan_id}, not {plan.plan_id}", None
    if problem and problem not in said:
        said.add(problem)
        print(f"action refused: {problem}; actions are written by the aggregate", file=sys.stderr, flush=True)
    return action


def _act(action: LeaseAction, lease_run: LeaseRun) -> ActionDone:
    """Do ``action`` on its containers (those this run made; the others are errors), updating the run's states."""
    plan, host, states = lease_run.plan, lease_run.host, lease_run.states
    addresses = {container.name: container.address.split("/", 1)[0] for container in plan.containers}
    errors: dict[str, str] = {}
    archive, size, digest = "", 0, ""
    for name in action.containers or tuple(c.name for c in plan.containers):
        if name not in lease_run.made:
            errors[name] = f"container {name} was not made by this lease's run: left alone"
            continue
        try:
            if action.action == ACTION_SAVE:
                saved = archive_path_of(lease_run.path, lease_run.node, action.seq)
                _node_directory(saved)
                with host.frozen(name):  # as a save on the aggregate's host: its root changes nothing meanwhile
                    _archive(host.lxc_path / name / "rootfs", saved)
                archive, size, digest = str(saved), saved.stat().st_size, sha256_of(saved)
            else:
                states[name] = _operate(host, name, action.action, addresses[name], plan.ssh_timeout_s)
        except (GeniError, OSError, tarfile.TarError, ArchiveError) as exc:
            message = exc.message if isinstance(exc, GeniError) else f"container {name}: {exc}"
            errors[name] = message
            if action.action in (ACTION_START, ACTION_RESTART):
                states[name] = (NODE_FAILED, message)  # it does not run, and here is why
            elif action.action == ACTION_STOP:
                states[name] = (NODE_RUNNING if host.state(name) == "RUNNING" else NODE_STOPPED, "")
    return ActionDone(action.seq, action.action, errors, archive, size, digest)


def _operate(host: LxcHost, name: str, action: str, address: str, ssh_timeout_s: float) -> tuple[str, str]:
    """Stop, start (as it is, until SSH answers, as a launch) or restart one container; its new state."""
    if action in (ACTION_STOP, ACTION_RESTART) and host.state(name) == "RUNNING":
        host.stop(name)
    if action == ACTION_STOP:
        return NODE_STOPPED, ""
    if host.state(name) != "RUNNING":
        host.start(name)
    if not wait_for_ssh(address, ssh_timeout_s):
        return NODE_FAILED, f"container {name} started but its SSH server at {address}:22 did not answer"
    return NODE_RUNNING, ""


def unexpected_failure(name: str, exc: BaseException) -> str:
    """What the aggregate's Status says of a container whose launch failed in a way nothing foresaw: the exception's
    kind and words, and where its details are."""
    return (
        f"container {name} could not be launched: unexpected {type(exc).__name__}: {str(exc) or 'no message'} (the "
        "details are on the lease job's stderr on its node, for the operator)"
    )


def _archive(rootfs: Path, archive: Path) -> None:
    """The container's root file system, secrets left out, into ``archive`` at once (readable by the aggregate)."""
    partial = archive.with_name(f".{archive.name}.tmp")
    try:
        save_rootfs(rootfs, partial)
        partial.chmod(0o644)
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)


def reap(job_id: str = "") -> int:
    """Destroy the containers of `run`s whose process is gone (OAR SIGKILLed the job); returns 0. The run of OAR
    job ``job_id`` (what the epilogue passes) first, then at most REAP_OTHERS other dead runs (runs whose own
    epilogue failed): OAR gives an epilogue little time, so it never walks a long backlog."""
    if not RUNS_DIR.is_dir():
        return 0
    mine: list[tuple[Path, RunRecord]] = []
    others: list[tuple[Path, RunRecord]] = []
    for entry in sorted(RUNS_DIR.glob("*.json")):
        try:
            record = _read_record(entry)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{entry}: unreadable ({exc}): left alone", file=sys.stderr)
            continue
        if _start_time(record.pid) == record.started:
            continue  # still running: its job has not ended
        (mine if job_id and record.job_id == job_id else others).append((entry, record))
    for entry, record in mine + others[:REAP_OTHERS]:
        print(f"run {record.pid} of {record.plan} is gone: destroying {', '.join(record.names)}", flush=True)
        _destroy(record, entry)
    return 0


def _trusted_plan(path: Path) -> tuple[LeasePlan, PlanVerifier, str] | None:
    """The plan at ``path``, the keys that verified it and the name it gives this node, if root may run it for the
    invoking user here and now; None (saying why on stderr) otherwise."""
    user = invoking_user()
    writers = plan_writers()
    if user != "root" and _uid(user) in writers:
        print(f"refused: {user} writes plans, so no plan is trusted for {user}'s jobs", file=sys.stderr)
        return None
    problem = untrusted(path, writers)
    if problem:
        print(f"refused: {problem}; plans are written by the aggregate", file=sys.stderr)
        return None
    try:
        verifier = plan_verifier()
        plan = LeasePlan.from_json(open_signed(verifier, KIND_PLAN, read_bounded(path)))
    except (OSError, PlanError) as exc:
        print(f"refused: plan {path}: {exc}", file=sys.stderr)
        return None
    node = next((name for name in plan.nodes if is_this_node(name)), "")
    problem = plan_refusal(plan, path, user, node, time.time())
    if problem:
        print(f"refused: plan {path} {problem}", file=sys.stderr)
        return None
    return plan, verifier, node


def plan_refusal(plan: LeasePlan, path: Path, user: str, node: str, now_s: float) -> str:
    """Why a signed plan must not run here (``node``: the name the plan gives this host, "" when it names none of
    its names) for ``user`` at ``now_s``, "" when it may: it is another lease's (a signed plan copied over this
    lease's), for other nodes or another user, or outside its slot."""
    if path.name != f"{plan.lease_id}.plan.json":
        return f"is the plan of lease {plan.lease_id}, not of the lease its file names"
    if not node:
        nodes = ", ".join(plan.nodes)
        return f"is for node {nodes}, not this one ({socket.gethostname()}): it runs on its lease's nodes only"
    if user not in ("root", plan.user):
        return f"is for {plan.user}'s job, not {user}'s"
    return slot_refusal(plan, now_s)


def slot_refusal(plan: LeasePlan, now_s: float) -> str:
    """Why the plan must not run at ``now_s`` (epoch seconds), "" when its slot runs: the containers are the lease's
    only from its slot's start (SLOT_EARLY_S earlier for clock skew) to its end, and a plan without a slot (from an
    aggregate older than slots) runs never."""
    if plan.slot_start_s is None or plan.slot_end_s is None:
        return (
            "names no slot (an older aggregate wrote it): Provision the lease's slivers again (with geni_users) so "
            "that the aggregate rewrites it, or Delete them and allocate again"
        )
    slot = f"{_utc(plan.slot_start_s)} to {_utc(plan.slot_end_s)}"
    if now_s < plan.slot_start_s - SLOT_EARLY_S:
        return f"is for the slot from {slot}, which has not begun (it is {_utc(now_s)}): its OAR job runs it then"
    if now_s >= plan.slot_end_s:
        return f"is for the slot from {slot}, which is over (it is {_utc(now_s)}): nothing is made"
    return ""


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(int(epoch_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _destroy(record: RunRecord, entry: Path | None = None) -> None:
    """Destroy the containers the record names (those its run made), report them destroyed, forget the record
    (kept if one resists)."""
    host = LxcHost(record.bridge, lxc_path=record.lxc_path)
    states: dict[str, tuple[str, str]] = {}
    for name in record.names:
        try:
            host.destroy(name)
            states[name] = (NODE_DESTROYED, "")
        except GeniError as exc:  # the next reap tries again
            print(f"container {name} could not be destroyed: {exc.message}", file=sys.stderr)
    for name in states:
        print(f"container {name}: {NODE_DESTROYED}", flush=True)
    if Path(record.plan).exists() and record.report and states:
        _report(Path(record.report), states, record.plan_id)
    if len(states) == len(record.names):
        (entry or _record_path(record)).unlink(missing_ok=True)


def _report(path: Path, states: dict[str, tuple[str, str]], plan_id: str, done: ActionDone | None = None) -> None:
    """Write the report for the aggregate into the node's directory (made when missing; never through a link);
    when root may not write there (an NFS export squashing root), say so and carry on: the containers still run and
    are still destroyed, and stdout has their states."""
    try:
        _node_directory(path)
        write_states(path, states, plan_id, done)
    except OSError as exc:
        print(
            f"could not write the report {path} ({exc.strerror or exc}): the aggregate does not see these states. "
            "The plans directory must be writable by root on the nodes (NFS: export it with no_root_squash)",
            file=sys.stderr,
            flush=True,
        )


def _node_directory(path: Path) -> None:
    """Make the node's directory that ``path`` is in (and ``nodes/`` above it) when missing; OSError when either is
    not a real directory: root writes nothing through a link a node's root may have put there."""
    for directory in (path.parent.parent, path.parent):
        directory.mkdir(mode=0o755, exist_ok=True)
        if not stat.S_ISDIR(directory.lstat().st_mode):
            raise OSError(f"{directory} is not a directory (a link?): nothing is written through it")


def _record_path(record: RunRecord) -> Path:
    return RUNS_DIR / f"{record.pid}.json"


def _register(record: RunRecord) -> None:
    RUNS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    _record_path(record).write_text(json.dumps(record.__dict__ | {"names": list(record.names)}))


def _read_record(entry: Path) -> RunRecord:
    data = json.loads(entry.read_text())
    return RunRecord(
        int(data["pid"]), str(data["started"]), str(data["plan"]), str(data["bridge"]), str(data["lxc_path"]),
        tuple(str(name) for name in data["names"]), str(data.get("plan_id", "")), str(data.get("job_id", "")),
        str(data.get("report", "")),
    )  # fmt: skip


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/<pid>/stat), "" when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = text.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return "" if fields[0] == "Z" else fields[19]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sfa-omf-lease-containers", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="create and start a lease's containers, destroy them on a signal")
    run_parser.add_argument("plan", help="the lease's plan, written by the aggregate")
    reap_parser = commands.add_parser("reap", help="destroy the containers of runs that are gone (OAR's epilogue)")
    reap_parser.add_argument("job_id", nargs="?", default="", help="the OAR job whose run goes first")
    arguments = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("sfa-omf-lease-containers needs root (LXC): run it through its sudo rule", file=sys.stderr)
        return 2
    return run(arguments.plan) if arguments.command == "run" else reap(arguments.job_id)


if __name__ == "__main__":
    sys.exit(main())
