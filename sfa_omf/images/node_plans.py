"""Lease container plans: what the aggregate hands to the node side when a testbed's job runs the containers (the
OAR backend), and what the node side reports back.

The aggregate plans each container (name, address, image, the slice users' keys) and writes the lease's plan, a JSON
file ``<lease id>.plan.json``, into the plans directory (``leases/`` in the image store, which the nodes share as
FutureGrid's nodes shared its image repository). The lease's OAR job runs ``sfa-omf-lease-containers run PLAN`` on
its node (sfa_omf/images/node_containers.py), which creates and starts them and writes what became of each into
``<lease id>.state.json`` next to the plan; the aggregate reads it on its rounds. Plain data both ways; stdlib only
(the node command imports this).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLANS_DIR_NAME = "leases"
PLAN_SUFFIX = ".plan.json"
LOCK_NAME = ".plans.lock"  # the aggregate's lock on plan writes (LeasePlans._locked); the node side never takes it
STATE_SUFFIX = ".state.json"
ACTION_SUFFIX = ".action.json"  # an operational action the aggregate hands the lease's run (LeaseAction)
# What the node side reports for each container (the aggregate's row states of the same names).
NODE_RUNNING, NODE_FAILED, NODE_DESTROYED, NODE_STOPPED = "running", "failed", "destroyed", "stopped"
NODE_STATES = (NODE_RUNNING, NODE_FAILED, NODE_DESTROYED, NODE_STOPPED)
# What a run does on the aggregate's word (PerformOperationalAction geni_start, geni_stop, geni_restart and
# sfa_omf_save_image): start as it is, stop, stop then start, archive one container's root file system.
ACTION_START, ACTION_STOP, ACTION_RESTART, ACTION_SAVE = "start", "stop", "restart", "save"
ACTIONS = (ACTION_START, ACTION_STOP, ACTION_RESTART, ACTION_SAVE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # a lease id, a container's name, a bridge, a login
_KEY = re.compile(r"^[A-Za-z0-9@._+-]+ [A-Za-z0-9+/=]+( [^\n\r]*)?$")  # one OpenSSH public key line


class PlanError(ValueError):
    """A plan or state file that is not what the aggregate writes (the node side refuses it, saying why)."""


EXIT_PLAN_REFUSED = 2  # the node command's exit status for a plan it refused (nothing made)
LAST_EPOCH_S = 253_402_300_800  # 10000-01-01T00:00:00Z: a slot's times must be writable as dates
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

    def to_json(self) -> str:
        data = {
            "plan_id": self.plan_id,
            "lease_id": self.lease_id,
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
        return LeasePlan(
            plan_id=_named(data, "plan_id"),
            lease_id=_named(data, "lease_id"),
            user=_named(data, "user"),
            bridge=_named(data, "bridge"),
            lxc_path=lxc_path,
            ssh_timeout_s=float(timeout),
            keys=tuple(keys),
            containers=tuple(planned),
            slot_start_s=start,
            slot_end_s=end,
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
        if not isinstance(names, list) or not all(isinstance(name, str) and _NAME.match(name) for name in names):
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
    """The plans directory: the aggregate writes plans and reads states; the node side writes states."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def plan_path(self, lease_id: str) -> Path:
        return self.directory / f"{_checked_name(lease_id)}{PLAN_SUFFIX}"

    def state_path(self, lease_id: str) -> Path:
        return self.directory / f"{_checked_name(lease_id)}{STATE_SUFFIX}"

    def action_path(self, lease_id: str) -> Path:
        return self.directory / f"{_checked_name(lease_id)}{ACTION_SUFFIX}"

    def archive_path(self, lease_id: str, seq: int) -> Path:
        """Where the run writes the archive of save ``seq`` (the aggregate reads it from there, nowhere else)."""
        return archive_path_of(self.plan_path(lease_id), seq)

    def write_action(self, lease_id: str, action: LeaseAction) -> Path:
        """Hand the lease's run an action (replacing the one before: the run does the last seq it finds)."""
        path = self.action_path(lease_id)
        _write_at_once(path, action.to_json())
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
        """The action last handed to the lease's run, None when there is none (or it is unreadable)."""
        try:
            return LeaseAction.from_json(read_bounded(self.action_path(lease_id)))
        except (OSError, PlanError):
            return None

    def done(self, lease_id: str) -> ActionDone | None:
        """The last action the run reported done on the lease's current plan, None when none."""
        try:
            current = json.loads(read_bounded(self.plan_path(lease_id))).get("plan_id")
            data = json.loads(read_bounded(self.state_path(lease_id)))
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(data, dict) or data.get("plan_id") != current:
            return None
        return ActionDone.from_data(data.get("done"))

    def write(self, plan: LeasePlan) -> Path:
        """Write (replace) the lease's plan at once (a reader sees the old file or the new one, never half)."""
        with self._locked():
            return self._write(plan)

    def update(self, lease_id: str, change: Callable[[LeasePlan], LeasePlan]) -> bool:
        """Replace the lease's plan by ``change(plan)``, read and written under the directory's lock so that two
        writers (a Renew and a geni_update_users, a Renew and a Delete, in any thread or process of this host or of
        hosts sharing the directory) never lose each other's change nor bring back a removed plan. False when the
        lease has no plan (any more); the plan is not written when the change leaves it as it is."""
        with self._locked():
            plan = self.read(lease_id)
            if plan is None:
                return False
            changed = change(plan)
            if changed != plan:
                self._write(changed)
            return True

    def _write(self, plan: LeasePlan) -> Path:
        path = self.plan_path(plan.lease_id)
        _write_at_once(path, plan.to_json())
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

    def states(self, lease_id: str) -> dict[str, tuple[str, str]]:
        """What the node side reported on the lease's current plan: container name -> (state, error); {} when it
        reported nothing (yet), or only on an earlier plan."""
        try:
            current = json.loads(read_bounded(self.plan_path(lease_id))).get("plan_id")
            plan_id, states = read_report(read_bounded(self.state_path(lease_id)))
        except (OSError, ValueError, AttributeError):  # PlanError is a ValueError
            return {}
        return states if plan_id in ("", current) else {}  # "": a node command that predates plan ids

    def read(self, lease_id: str) -> LeasePlan | None:
        """The lease's plan as written, None when there is none (or it is unreadable)."""
        try:
            return LeasePlan.from_json(read_bounded(self.plan_path(lease_id)))
        except (OSError, PlanError):
            return None

    def remove(self, lease_id: str) -> None:
        """The lease is over: its plan and state go."""
        with self._locked():
            self.plan_path(lease_id).unlink(missing_ok=True)
            self.state_path(lease_id).unlink(missing_ok=True)
            self.action_path(lease_id).unlink(missing_ok=True)
            lease = _checked_name(lease_id)
            # A save's archive, and one the node was still writing (node_containers: ".<archive>.tmp").
            for archive in [
                *self.directory.glob(f"{lease}.save-*.tar"),
                *self.directory.glob(f".{lease}.save-*.tar.tmp"),
            ]:
                archive.unlink(missing_ok=True)


def plans_directory(store: str | os.PathLike[str]) -> Path:
    """The plans directory of an image store."""
    return Path(store) / PLANS_DIR_NAME


def state_path_of(plan_path: Path) -> Path:
    """Where the node side reports on the plan at ``plan_path``."""
    return plan_path.with_name(plan_path.name.removesuffix(PLAN_SUFFIX) + STATE_SUFFIX)


def action_path_of(plan_path: Path) -> Path:
    """Where the aggregate hands actions to the run of the plan at ``plan_path``."""
    return plan_path.with_name(plan_path.name.removesuffix(PLAN_SUFFIX) + ACTION_SUFFIX)


def archive_path_of(plan_path: Path, seq: int) -> Path:
    """Where the run of the plan at ``plan_path`` writes the archive of save ``seq``."""
    return plan_path.with_name(f"{plan_path.name.removesuffix(PLAN_SUFFIX)}.save-{int(seq)}.tar")


def write_states(path: Path, states: dict[str, tuple[str, str]], plan_id: str, done: ActionDone | None = None) -> None:
    """The node side's report on the plan ``plan_id``: each container's state and error, and the last action done."""
    containers = {name: {"state": state, "error": error} for name, (state, error) in sorted(states.items())}
    report: dict[str, Any] = {"plan_id": plan_id, "containers": containers}
    if done is not None:
        report["done"] = done.to_data()
    _write_at_once(path, json.dumps(report, indent=1) + "\n")


def read_states(text: str) -> dict[str, tuple[str, str]]:
    """The containers' states of a report (whichever plan it is about)."""
    return read_report(text)[1]


def read_report(text: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """The plan a report is about ("" when it does not say) and its containers' states; PlanError when it is not
    a report."""
    data = _json_object(text)
    # A node command older than plan ids reports the containers alone, no plan_id: "" (taken as the current plan's).
    containers = data["containers"] if isinstance(data.get("containers"), dict) else data
    found = {}
    for name, item in containers.items():
        if not isinstance(item, dict) or item.get("state") not in NODE_STATES:
            raise PlanError(f"container {name!r}: no known state")
        found[str(name)] = (str(item["state"]), str(item.get("error") or ""))
    return str(data.get("plan_id") or ""), found


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object in ``text`` (a plan, an action, a report); PlanError when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"not JSON: {exc}") from exc
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
    if not _NAME.match(value):
        raise PlanError(f"{key} {value!r} is not a plain name (letters, digits, _ . -)")
    return value


def _checked_name(value: str) -> str:
    if not _NAME.match(value):
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
