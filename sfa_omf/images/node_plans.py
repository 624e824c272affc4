"""Lease container plans: what the aggregate hands to the node side when a testbed's job runs the containers (the
OAR backend), and what the node side reports back.

The aggregate plans each container (name, address, image, the slice users' keys) and writes the lease's plan, a JSON
file ``<lease id>.plan.json`` signed with its key (sfa_omf/images/plan_signing.py), into the plans directory
(``leases/`` in the image store, which the nodes share as FutureGrid's nodes shared its image repository). The
lease's OAR job runs ``sfa-omf-lease-containers run PLAN`` on its node (sfa_omf/images/node_containers.py), which
creates and starts them and writes what became of each into ``nodes/<node>/<lease id>.state.json``: a directory of
the lease's node's own, which an operator exports to that node alone (docs/images-and-instances.md), so that no other
node's root can report on the lease. The aggregate reads it on its rounds. Plain data both ways.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sfa_omf.images.plan_signing import KIND_ACTION, KIND_PLAN, PlanSigner, PlanVerifier, SignatureError

log = logging.getLogger(__name__)
PLANS_DIR_NAME = "leases"
NODES_DIR_NAME = "nodes"  # leases/nodes/<node>/: what that node reports (states, save archives), and nothing else
PLAN_SUFFIX = ".plan.json"
LOCK_NAME = ".plans.lock"  # the aggregate's lock on plan writes (LeasePlans._locked); the node side never takes it
STATE_SUFFIX = ".state.json"
ACTION_SUFFIX = ".action.json"  # an operational action the aggregate hands the lease's run (LeaseAction)
# A private image a lease's containers use, copied into each of the lease's nodes' directories
# (<lease>.image-<label>.img, mode 600): the store's own file is readable by the aggregate's account alone, so that no
# other node's root (squashed to "other" on the store's export) reads a user's saved container.
HANDED_INFIX = ".image-"
HANDED_SUFFIX = ".img"
HANDED_MODE = 0o600
# What the node side reports for each container (the aggregate's row states of the same names).
NODE_RUNNING, NODE_FAILED, NODE_DESTROYED, NODE_STOPPED = "running", "failed", "destroyed", "stopped"
NODE_STATES = (NODE_RUNNING, NODE_FAILED, NODE_DESTROYED, NODE_STOPPED)
# What a run does on the aggregate's word (PerformOperationalAction geni_start, geni_stop, geni_restart and
# sfa_omf_save_image): start as it is, stop, stop then start, archive one container's root file system.
ACTION_START, ACTION_STOP, ACTION_RESTART, ACTION_SAVE = "start", "stop", "restart", "save"
ACTIONS = (ACTION_START, ACTION_STOP, ACTION_RESTART, ACTION_SAVE)
# _NAME and _NODE are used with fullmatch: with match, "$" would let a trailing newline into a path or a command.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # a lease id, a container's name, a bridge, a login
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")  # a node as OAR reaches it: host name, IPv4 or IPv6
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a repository image's label (store.VALID_LABEL)
_KEY = re.compile(r"^[A-Za-z0-9@._+-]+ [A-Za-z0-9+/=]+( [^\n\r]*)?$")  # one OpenSSH public key line


class PlanError(ValueError):
    """A plan or state file that is not what the aggregate writes (the node side refuses it, saying why)."""


def open_signed(verifier: PlanVerifier, kind: str, text: str) -> str:
    """The plan's or action's own text once its signature is checked; PlanError saying why it is not trusted."""
    try:
        return verifier.open(kind, text)
    except SignatureError as exc:
        raise PlanError(f"not signed by the aggregate: {exc}") from exc


EXIT_PLAN_REFUSED = 2  # the node command's exit status for a plan it refused (nothing made)
LAST_EPOCH_S = 253_402_300_800  # 10000-01-01T00:00:00Z: a slot's times must be writable as dates
COPY_CHUNK = 4 * 1024 * 1024  # a handed image's copy buffer (disk speed)
MAX_FILE_BYTES = 1 << 20  # a plan or a report: a few KB for the largest lease; anything bigger is refused unread


def read_bounded(path: Path) -> str:
    """A plan's or a report's text, refused (PlanError) when larger than MAX_FILE_BYTES: a report comes from a node,
    and neither side reads an unbounded file into memory. Raises OSError as reading does."""
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PlanError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class PlannedContainer:
    """One container of the plan: its LXC name, its address with prefix (``10.217.0.10/24``) and the image file to
    lay over its base ("" for none)."""

    name: str
    address: str
    image: str


@dataclass(frozen=True)
class LeasePlan:
    """Everything the node side needs to make a lease's containers, and nothing it must look up."""

    lease_id: str
    user: str  # the Unix login the lease's job runs as: only that user's job may start them
    bridge: str
    lxc_path: str
    ssh_timeout_s: float
    keys: tuple[str, ...]  # the slice users' SSH public keys, for root inside each container
    containers: tuple[PlannedContainer, ...]
    # This plan, written at Provision; the node side echoes it in its report, so a report from an earlier plan of
    # the same lease (a run before a failed Provision was retried) is told apart and ignored.
    plan_id: str = field(default_factory=lambda: secrets.token_hex(8))
    # The lease's slot, epoch seconds (UTC): the node side runs the plan only while it runs. None: a plan written by
    # an aggregate older than slots, which the node side refuses (Provision again rewrites it).
    slot_start_s: int | None = None
    slot_end_s: int | None = None
    # The lease's nodes as the testbed names them (OAR: their network_address): the node side runs the plan only on
    # one of them (the job's first node), and reports into that node's directory, leases/nodes/<node>/. Empty only
    # in a plan an aggregate older than node directories wrote, which the node side refuses.
    nodes: tuple[str, ...] = ()
    # When this version of the plan was written (microseconds since the epoch, UTC; more than the version it
    # replaced): a run follows a rewritten plan (new keys) only when it is newer than the version it follows, so an
    # earlier signed version put back in its place (a removed user's key) is not taken. Not part of what the plan says
    # (equality ignores it); 0 in a plan an aggregate older than revisions wrote.
    revision: int = field(default=0, compare=False)

    def to_json(self) -> str:
        data = {
            "plan_id": self.plan_id,
            "revision": self.revision,
            "lease_id": self.lease_id,
            "nodes": list(self.nodes),
            "user": self.user,
            "bridge": self.bridge,
            "lxc_path": self.lxc_path,
            "ssh_timeout_s": self.ssh_timeout_s,
            "keys": list(self.keys),
            "containers": [{"name": c.name, "address": c.address, "image": c.image} for c in self.containers],
            "slot_start_s": self.slot_start_s,
            "slot_end_s": self.slot_end_s,
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> LeasePlan:
        """The plan in ``text``; PlanError naming the first thing wrong (the node runs it as root: all is checked)."""
        data = _json_object(text)
        containers = data.get("containers")
        keys = data.get("keys")
        timeout = data.get("ssh_timeout_s")
        if not isinstance(containers, list) or not containers:
            raise PlanError("no containers")
        if not isinstance(keys, list) or not all(isinstance(key, str) and _KEY.match(key) for key in keys):
            raise PlanError("keys must be a list of OpenSSH public key lines")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise PlanError("ssh_timeout_s must be a number of seconds in (0, 600]")
        lxc_path = _text(data, "lxc_path")
        if not os.path.isabs(lxc_path):
            raise PlanError(f"lxc_path {lxc_path!r} is not an absolute path")
        planned = []
        for item in containers:
            if not isinstance(item, dict):
                raise PlanError("each container must be a JSON object")
            image = _text(item, "image", empty=True)
            if image and not os.path.isabs(image):
                raise PlanError(f"image {image!r} is not an absolute path")
            planned.append(PlannedContainer(_named(item, "name"), _address(_text(item, "address")), image))
        if len({c.name for c in planned}) != len(planned):
            raise PlanError("a container name appears twice")
        start, end = _slot(data)
        revision = data.get("revision", 0)
        if isinstance(revision, bool) or not isinstance(revision, int) or not 0 <= revision < LAST_EPOCH_S * 10**6:
            raise PlanError("revision must be a whole number of microseconds since the epoch")
        nodes = data.get("nodes")
        if nodes is None:
            raise PlanError(
                "names no node (an older aggregate wrote it): Delete the lease's slivers and allocate them again"
            )
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) and is_node_name(n) for n in nodes):
            raise PlanError("nodes must be a list of node names (letters, digits, _ . - :)")
        return LeasePlan(
            plan_id=_named(data, "plan_id"),
            lease_id=_named(data, "lease_id"),
            nodes=tuple(nodes),
            user=_named(data, "user"),
            bridge=_named(data, "bridge"),
            lxc_path=lxc_path,
            ssh_timeout_s=float(timeout),
            keys=tuple(keys),
            containers=tuple(planned),
            slot_start_s=start,
            slot_end_s=end,
            revision=revision,
        )


@dataclass(frozen=True)
class LeaseAction:
    """An operational action on the containers of a lease's current plan (``plan_id``), numbered: the run does each
    ``seq`` once, in order, and reports the last it did (ActionDone). ``containers``: the names acted on (all the
    plan's when empty; exactly one for a save)."""

    plan_id: str
    seq: int
    action: str
    containers: tuple[str, ...] = ()

    def to_json(self) -> str:
        data = {"plan_id": self.plan_id, "seq": self.seq, "action": self.action, "containers": list(self.containers)}
        return json.dumps(data, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> LeaseAction:
        """The action in ``text``; PlanError naming the first thing wrong (the node acts on it as root)."""
        data = _json_object(text)
        seq, action, names = data.get("seq"), data.get("action"), data.get("containers")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise PlanError("seq must be a positive whole number")
        if action not in ACTIONS:
            raise PlanError(f"action must be one of {', '.join(ACTIONS)}")
        if not isinstance(names, list) or not all(isinstance(name, str) and _NAME.fullmatch(name) for name in names):
            raise PlanError("containers must be a list of container names")
        if action == ACTION_SAVE and len(names) != 1:
            raise PlanError("a save names exactly one container")
        return LeaseAction(_named(data, "plan_id"), seq, action, tuple(names))


@dataclass(frozen=True)
class ActionDone:
    """What the run reports of the last action it did: its seq and action, an error per container that failed, and
    for a save the archive it wrote (path, size in bytes, sha256; "" and 0 otherwise)."""

    seq: int
    action: str
    errors: dict[str, str] = field(default_factory=dict)
    archive: str = ""
    size: int = 0
    sha256: str = ""
    node: str = ""  # the node whose report said so (the aggregate's reading; not in the report itself)

    def to_data(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "action": self.action, "errors": dict(sorted(self.errors.items())),
            "archive": self.archive, "size": self.size, "sha256": self.sha256,
        }  # fmt: skip

    @staticmethod
    def from_data(data: object) -> ActionDone | None:
        """The report's ``done`` part; None when there is none or it is not one (a report comes from a node)."""
        if not isinstance(data, dict):
            return None
        seq, errors, size = data.get("seq"), data.get("errors"), data.get("size", 0)
        if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(errors, dict):
            return None
        if isinstance(size, bool) or not isinstance(size, int):
            return None
        return ActionDone(
            seq, str(data.get("action") or ""), {str(k): str(v) for k, v in errors.items()},
            str(data.get("archive") or ""), size, str(data.get("sha256") or ""),
        )  # fmt: skip


class LeasePlans:
    """The plans directory: the aggregate writes plans and actions, signed with ``signer``, and reads the reports
    the node side writes into its node's directory."""

    def __init__(self, directory: str | os.PathLike[str], signer: PlanSigner) -> None:
        self.directory = Path(directory)
        self.signer = signer

    def plan_path(self, lease_id: str) -> Path:
        return self.directory / f"{_checked_name(lease_id)}{PLAN_SUFFIX}"

    def action_path(self, lease_id: str) -> Path:
        return self.directory / f"{_checked_name(lease_id)}{ACTION_SUFFIX}"

    def report_path(self, lease_id: str, node: str) -> Path:
        """Where the run on ``node`` reports on the lease's plan: that node's own directory."""
        return report_path_of(self.plan_path(lease_id), node)

    def archive_path(self, lease_id: str, node: str, seq: int) -> Path:
        """Where the run on ``node`` writes the archive of save ``seq`` (the aggregate reads it from there only)."""
        return archive_path_of(self.plan_path(lease_id), node, seq)

    def hand_image(self, lease_id: str, nodes: Sequence[str], source: Path, label: str) -> str:
        """Copy the private image ``source`` (``label``) into the directory of each of the lease's ``nodes`` (mode
        HANDED_MODE: that node's root reads it through its own export, no other node's squashed root can), replacing
        an earlier copy; the path a plan names, in the first node's directory (the run reads its own node's copy:
        image_on_node). A copy, not a link: a node's root writes in its directory, and must not reach the store's
        file. LeasePlans.remove takes the copies away with the lease. Raises OSError as copying does."""
        lease = _checked_name(lease_id)
        name = f"{lease}{HANDED_INFIX}{_checked_label(label)}{HANDED_SUFFIX}"
        handed = [handed_image_path_of(self.plan_path(lease_id), node, label) for node in nodes]
        if not handed:
            raise ValueError(f"lease {lease_id}: no node to hand image {label} to")
        for target in handed:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            # A fresh name (O_EXCL) in the node's directory, renamed over the copy: nothing the node left there (a
            # link) is followed.
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out, source.open("rb") as image:
                    os.fchmod(out.fileno(), HANDED_MODE)
                    shutil.copyfileobj(image, out, COPY_CHUNK)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return str(handed[0])

    def write_action(self, lease_id: str, action: LeaseAction) -> Path:
        """Hand the lease's run an action (replacing the one before: the run does the last seq it finds)."""
        path = self.action_path(lease_id)
        _write_at_once(path, self.signer.sign(KIND_ACTION, action.to_json()))
        return path

    def hand_action(self, lease_id: str, plan_id: str, action: str, containers: Sequence[str] = ()) -> LeaseAction:
        """Hand the lease's run a new action, numbered after the last one handed or done, under the plans' lock: two
        aggregate processes handing actions at once never pick the same number."""
        with self._locked():
            earlier, done = self.action(lease_id), self.done(lease_id)
            seq = max(earlier.seq if earlier else 0, done.seq if done else 0) + 1
            handed = LeaseAction(plan_id, seq, action, tuple(containers))
            self.write_action(lease_id, handed)
            return handed

    def action(self, lease_id: str) -> LeaseAction | None:
        """The action last handed to the lease's run, None when there is none (or it is unreadable or unsigned)."""
        try:
            text = open_signed(self.signer.verifier, KIND_ACTION, read_bounded(self.action_path(lease_id)))
            return LeaseAction.from_json(text)
        except (OSError, PlanError):
            return None

    def done(self, lease_id: str) -> ActionDone | None:
        """The last action the run reported done on the lease's current plan, None when none."""
        found = self._report(lease_id)
        if found is None:
            return None
        done = ActionDone.from_data(found[1].get("done"))
        return replace(done, node=found[0]) if done is not None else None

    def states(self, lease_id: str) -> dict[str, tuple[str, str]]:
        """What the node side reported on the lease's current plan: container name -> (state, error); {} when it
        reported nothing (yet), or only on an earlier plan."""
        found = self._report(lease_id)
        try:
            return report_states(found[1]) if found is not None else {}
        except PlanError:
            return {}

    def _report(self, lease_id: str) -> tuple[str, dict[str, Any]] | None:
        """The node reporting on the lease's current plan and its report, read from the directory of one of the
        plan's nodes (the first that has one); None when none has (a report on an earlier plan of the lease, from a
        run before a failed Provision was retried, does not count)."""
        plan = self.read(lease_id)
        if plan is None:
            return None
        for node in plan.nodes:
            try:
                report = _json_object(read_bounded(self.report_path(lease_id, node)))
            except (OSError, PlanError):
                continue
            if report.get("plan_id") == plan.plan_id:
                return node, report
        return None

    def write(self, plan: LeasePlan) -> Path:
        """Write (replace) the lease's plan at once (a reader sees the old file or the new one, never half), and
        make its node's report directory; a report left there from an earlier plan of the lease goes."""
        with self._locked():
            for node in plan.nodes:
                report = self.report_path(plan.lease_id, node)
                report.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                _remove_file(report)
            return self._write(plan)

    def update(self, lease_id: str, change: Callable[[LeasePlan], LeasePlan]) -> bool:
        """Replace the lease's plan by ``change(plan)``, read and written under the directory's lock so that two
        writers (a Renew and a geni_update_users, a Renew and a Delete, in any thread or process of this host or of
        hosts sharing the directory) never lose each other's change nor bring back a removed plan. False when the
        lease has no plan (any more) or one this aggregate did not sign (never signed over); the plan is not
        written when the change leaves it as it is, and is written as a newer revision otherwise (the runs following
        it take it: new keys reach running containers)."""
        with self._locked():
            plan = self.read(lease_id)
            if plan is None:
                return False
            changed = change(plan)
            if changed != plan:
                self._write(changed)
            return True

    def _write(self, plan: LeasePlan) -> Path:
        """Sign and write ``plan`` as a new revision: later than the one it was made from and than any written
        before now (the clock), so a run following the plan tells it from every earlier version."""
        path = self.plan_path(plan.lease_id)
        stamped = replace(plan, revision=max(plan.revision + 1, time.time_ns() // 1000))
        _write_at_once(path, self.signer.sign(KIND_PLAN, stamped.to_json()))
        return path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The plans directory's write lock (flock on LOCK_NAME): plan writes are rare and quick, one lock is enough."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / LOCK_NAME).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self, lease_id: str) -> LeasePlan | None:
        """The lease's plan as this aggregate signed it, None when there is none, it is unreadable, or its signature
        does not hold (a file a node wrote: nothing of it is believed, nor ever signed over by ``update``)."""
        try:
            text = open_signed(self.signer.verifier, KIND_PLAN, read_bounded(self.plan_path(lease_id)))
            plan = LeasePlan.from_json(text)
        except (OSError, PlanError):
            return None
        return plan if plan.lease_id == lease_id else None

    def drop_archives(self, lease_id: str, node: str, upto_seq: int) -> None:
        """Remove the archives of the lease's saves up to ``upto_seq`` from ``node``'s directory: the one just taken,
        and those of saves whose node answered after their call had given up (no call takes those any more)."""
        lease = _checked_name(lease_id)
        for directory in _real_directories([self.report_path(lease_id, node).parent]):
            for archive in directory.glob(f"{lease}.save-*.tar"):
                seq = archive.name.removeprefix(f"{lease}.save-").removesuffix(".tar")
                if seq.isdigit() and int(seq) <= upto_seq:
                    _remove_file(archive)

    def remove(self, lease_id: str) -> None:
        """The lease is over: its plan, action, report and save archives go."""
        with self._locked():
            plan = self.read(lease_id)
            lease = _checked_name(lease_id)
            nodes = self.directory / NODES_DIR_NAME
            # The directories of the nodes the plan names; every node's when it is unreadable (the lease's files only).
            # Real directories only: one a node replaced by a link is not followed.
            reports = _real_directories([nodes / node for node in plan.nodes] if plan is not None else nodes.glob("*"))
            _remove_file(self.plan_path(lease_id))
            _remove_file(self.action_path(lease_id))
            # The plans directory itself: where reports and archives went before node directories (an upgrade).
            for directory in [*reports, self.directory]:
                # The report, a save's archive, and one the node was still writing (node_containers: ".<archive>.tmp").
                for leftover in [
                    directory / f"{lease}{STATE_SUFFIX}",
                    *directory.glob(f"{lease}.save-*.tar"),
                    *directory.glob(f".{lease}.save-*.tar.tmp"),
                    # A private image handed to the node (hand_image), and a copy interrupted halfway.
                    *directory.glob(f"{lease}{HANDED_INFIX}*{HANDED_SUFFIX}"),
                    *directory.glob(f".{lease}{HANDED_INFIX}*.tmp"),
                ]:
                    _remove_file(leftover)


def plans_directory(store: str | os.PathLike[str]) -> Path:
    """The plans directory of an image store."""
    return Path(store) / PLANS_DIR_NAME


def lease_plans(settings: Any, store: str | os.PathLike[str]) -> LeasePlans:
    """The configured aggregate's plans: the image store's plans directory, signed with ``plan_signing_key``."""
    return LeasePlans(plans_directory(store), PlanSigner(settings.plan_signing_key_path))


def report_path_of(plan_path: Path, node: str) -> Path:
    """Where the node side reports on the plan at ``plan_path``: the directory of the plan's node."""
    lease = plan_path.name.removesuffix(PLAN_SUFFIX)
    return plan_path.parent / NODES_DIR_NAME / _checked_node(node) / f"{lease}{STATE_SUFFIX}"


def handed_image_path_of(plan_path: Path, node: str, label: str) -> Path:
    """Where the aggregate hands ``node`` its copy of the private image ``label`` for the plan at ``plan_path``."""
    lease = plan_path.name.removesuffix(PLAN_SUFFIX)
    name = f"{lease}{HANDED_INFIX}{_checked_label(label)}{HANDED_SUFFIX}"
    return plan_path.parent / NODES_DIR_NAME / _checked_node(node) / name


def image_on_node(image: str, plan_path: Path, plan: LeasePlan, node: str) -> str:
    """The file the run on ``node`` lays over a container the plan gives ``image``: that image, except a private
    image handed to the lease's nodes (the plan names the copy in its first node's directory), read from ``node``'s
    own copy: another node's directory is not readable there."""
    path = Path(image)
    lease = plan_path.name.removesuffix(PLAN_SUFFIX)
    nodes_dir = plan_path.parent / NODES_DIR_NAME
    handed = path.name.startswith(f"{lease}{HANDED_INFIX}") and path.name.endswith(HANDED_SUFFIX)
    if handed and path.parent.parent == nodes_dir and path.parent.name in plan.nodes:
        return str(nodes_dir / _checked_node(node) / path.name)
    return image


def action_path_of(plan_path: Path) -> Path:
    """Where the aggregate hands actions to the run of the plan at ``plan_path``."""
    return plan_path.with_name(plan_path.name.removesuffix(PLAN_SUFFIX) + ACTION_SUFFIX)


def archive_path_of(plan_path: Path, node: str, seq: int) -> Path:
    """Where the run of the plan at ``plan_path`` writes the archive of save ``seq``: its node's directory."""
    lease = plan_path.name.removesuffix(PLAN_SUFFIX)
    return plan_path.parent / NODES_DIR_NAME / _checked_node(node) / f"{lease}.save-{int(seq)}.tar"


def write_states(path: Path, states: dict[str, tuple[str, str]], plan_id: str, done: ActionDone | None = None) -> None:
    """The node side's report on the plan ``plan_id``: each container's state and error, and the last action done."""
    _write_at_once(path, report_text(states, plan_id, done))


def report_text(states: dict[str, tuple[str, str]], plan_id: str, done: ActionDone | None = None) -> str:
    """What write_states writes."""
    containers = {name: {"state": state, "error": error} for name, (state, error) in sorted(states.items())}
    report: dict[str, Any] = {"plan_id": plan_id, "containers": containers}
    if done is not None:
        report["done"] = done.to_data()
    return json.dumps(report, indent=1) + "\n"


def is_node_name(value: str) -> bool:
    """Whether ``value`` can name a node in a plan and its report directory (a host name, an IPv4 or IPv6 address)."""
    return bool(_NODE.fullmatch(value))


def read_states(text: str) -> dict[str, tuple[str, str]]:
    """The containers' states of a report's text (whichever plan it is about); PlanError when it is not a report."""
    return report_states(_json_object(text))


def report_states(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The containers' states of a report (container name -> (state, error)); PlanError when it is not one."""
    containers = report.get("containers")
    if not isinstance(containers, dict):
        raise PlanError("a report names its containers")
    found = {}
    for name, item in containers.items():
        if not isinstance(item, dict) or item.get("state") not in NODE_STATES:
            raise PlanError(f"container {name!r}: no known state")
        found[str(name)] = (str(item["state"]), str(item.get("error") or ""))
    return found


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object in ``text`` (a plan, an action, a report); PlanError when it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # a report comes from a node: nested deep enough, it overflows
        raise PlanError(f"not JSON: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise PlanError("not a JSON object")
    return data


def _write_at_once(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # the job's user may read what is planned for them; only the writer changes it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _text(data: dict[str, Any], key: str, empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or (not value and not empty) or "\n" in value or "\0" in value:
        raise PlanError(f"{key} must be a line of text")
    return value


def _named(data: dict[str, Any], key: str) -> str:
    value = _text(data, key)
    if not _NAME.fullmatch(value):
        raise PlanError(f"{key} {value!r} is not a plain name (letters, digits, _ . -)")
    return value


def _checked_label(value: str) -> str:
    if not _LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is not an image label")
    return value


def _checked_node(value: str) -> str:
    if not is_node_name(value):
        raise ValueError(f"{value!r} is not a node name")
    return value


def _real_directories(paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` that are directories themselves (not links to one), in order."""
    found = []
    for path in sorted(paths):
        try:
            if stat.S_ISDIR(path.lstat().st_mode):
                found.append(path)
        except FileNotFoundError:
            continue
    return found


def _remove_file(path: Path) -> None:
    """Remove ``path`` if it is a regular file or a link (never follows it); leave anything else, which a node's
    root may have put there, saying so."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        path.unlink(missing_ok=True)
    else:
        log.warning("%s is not a file (left there by a node?): left alone", path)


def _checked_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name")
    return value


def _slot(data: dict[str, Any]) -> tuple[int | None, int | None]:
    """The plan's slot (start, end) in epoch seconds; (None, None) when the plan predates slots."""
    start, end = data.get("slot_start_s"), data.get("slot_end_s")
    if start is None and end is None:
        return None, None
    if not all(
        isinstance(value, int) and not isinstance(value, bool) and 0 < value < LAST_EPOCH_S for value in (start, end)
    ):
        raise PlanError("slot_start_s and slot_end_s must be whole epoch seconds before the year 10000")
    assert isinstance(start, int) and isinstance(end, int)
    if start >= end:
        raise PlanError("the slot must end after it starts")
    return start, end


def _address(value: str) -> str:
    try:
        interface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise PlanError(f"address {value!r} is not an IPv4 address with its prefix") from exc
    if "/" not in value:
        raise PlanError(f"address {value!r} has no prefix")
    return str(interface)
