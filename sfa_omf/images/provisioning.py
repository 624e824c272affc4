"""Per-job or on-demand provisioning (``[sfa_omf] provisioning_mode``), decided node by node.

- ``perjob``: every lease installs its image on every node it names, whatever the node ran before. The experimenter
  always starts from a clean copy; each lease pays the install time (minutes of the slot on real hardware).
- ``ondemand`` (the default, and what the OAR backend always did): a node whose previous lease left the same image
  on it is not installed again; only the others are. Cheaper, but a node keeps whatever the previous user of the same
  image changed on its disk.

A backend asks ``plan_lease`` with its own knowledge of what each node runs when the lease starts, and acts on the
``NodeDeployment`` of each node (the OAR backend passes the nodes to reprovision to its deploy command).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sfa_omf.am.states import Operational
from sfa_omf.calendar.records import LeaseRecord

PERJOB = "perjob"
ONDEMAND = "ondemand"
PROVISIONING_MODES = (PERJOB, ONDEMAND)


@dataclass(frozen=True)
class NodeDeployment:
    """What happens to one node of a lease at its start: install ``image`` on it or not, and why."""

    node: str
    image: str  # "" : the lease asks for no image on this node
    running: str  # the image the node runs when the lease starts, as far as the backend knows ("" unknown)
    reprovision: bool
    why: str


def decide(mode: str, node: str, image: str, running: str) -> NodeDeployment:
    """The decision for one node; ValueError for a mode that is neither perjob nor ondemand."""
    if mode not in PROVISIONING_MODES:
        raise ValueError(f"provisioning mode {mode!r}: one of {', '.join(PROVISIONING_MODES)}")
    if not image:
        return NodeDeployment(node, image, running, False, "no image asked for: the node runs what it runs")
    if mode == PERJOB:
        return NodeDeployment(node, image, running, True, "perjob: every lease installs its image")
    if running == image:
        return NodeDeployment(node, image, running, False, f"ondemand: the node already runs {image}")
    was = f"runs {running}" if running else "runs an unknown image"
    return NodeDeployment(node, image, running, True, f"ondemand: the node {was}")


def plan_lease(mode: str, lease: LeaseRecord, running_before: Callable[[str], str]) -> tuple[NodeDeployment, ...]:
    """One decision per sliver of ``lease``; ``running_before(node)`` is what the node runs when the lease starts."""
    return tuple(
        decide(mode, sliver.node, sliver.disk_image, running_before(sliver.node) if sliver.disk_image else "")
        for sliver in lease.slivers
    )


def image_left(lease: LeaseRecord, node: str) -> str | None:
    """What ``lease`` leaves on ``node`` for the node's later leases: the image it asks for there when it is
    provisioned or ended (installed at its start, or kept there under ondemand); "" (an unknown image, so the next
    lease reinstalls) for a reservation made outside sfa-omf (mirrored, ``external`` or ``ended``: whatever its user
    installed) and for a lease cancelled after it was provisioned (a Delete, possibly during its slot: its image may
    have been installed, or half installed, and its user may have used the node; the calendar does not record when
    it was cancelled); None when it left nothing: allocated, expired or cancelled without having been provisioned.
    A provisioned lease's slivers keep an operational state other than ``geni_pending_allocation`` when it is
    cancelled (only Allocate writes that one)."""
    sliver = next((sliver for sliver in lease.slivers if sliver.node == node), None)
    if lease.state in ("provisioned", "ended"):
        return sliver.disk_image if sliver is not None else ""
    if lease.state == "external":
        return ""
    if lease.state == "cancelled" and any(
        other.operational_state != Operational.PENDING_ALLOCATION for other in lease.slivers
    ):
        return ""
    return None


def image_left_by_previous_lease(
    leases_before: Callable[[str], Sequence[LeaseRecord]],
    node: str,
    lease: LeaseRecord,
    left_by: Callable[[LeaseRecord, str], str | None] = image_left,
) -> str:
    """The image the node's previous lease that left one (``left_by``, by default ``image_left``) left on it: what
    it runs when ``lease`` starts ("" unknown, or none). ``leases_before(node)`` gives the node's leases of any state
    that start before ``lease`` ends. Leases that start at the same moment and left different images: unknown (the
    safe side: reinstall)."""
    earlier = sorted(
        (other for other in leases_before(node) if other.id != lease.id and other.start < lease.start),
        key=lambda other: other.start,
        reverse=True,
    )
    latest: datetime | None = None
    found: set[str] = set()
    for other in earlier:  # the latest first; ``left_by`` asked only back to the first lease that left something
        if latest is not None and other.start < latest:
            break
        left = left_by(other, node)
        if left is not None:
            latest = other.start
            found.add(left)
    return found.pop() if len(found) == 1 else ""
