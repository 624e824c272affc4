"""Container slivers in the AM API: what Allocate checks and records of ``<sliver_type name="lxc">``, how each
container appears in Status and in manifests, and the operational actions on them (geni_start, geni_stop,
geni_restart, sfa_omf_save_image). The containers themselves are sfa_omf/images/instances.py's.

A container is a sliver of its own: URN ``<node sliver URN>-c<n>``, client_id ``<node client_id>-c<n>``, sliver type
``lxc`` with its image, and a login (root at its address, port 22, the slice users' keys).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from datetime import datetime
from typing import Any

from rspec.model import CONTAINER_SLIVER_TYPE, Login, ManifestSliver, Request
from sfa_omf.am.states import Event, Operational
from sfa_omf.calendar.records import LeaseRecord
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.images.catalogue import private_refusal
from sfa_omf.images.instances import (
    FAILED,
    LIVE,
    LOGIN,
    PLANNED,
    RUNNING,
    STARTING,
    STOPPED,
    Instance,
    InstanceRequest,
    Instances,
)
from sfa_omf.images.lxc import answering_ssh
from sfa_omf.images.node_plans import ACTION_RESTART, ACTION_SAVE, ACTION_START, ACTION_STOP
from sfa_omf.images.records import ImageRecord
from sfa_omf.testbed.base import SliverHealth
from sfa_omf.times import format_time

SLIVER_TYPES = ("raw-pc", CONTAINER_SLIVER_TYPE)
_CONTAINER_SUFFIX = re.compile(r"-c[0-9]+$")  # node sliver URNs end in a hex UUID, never in this
# The node side's actions (sfa_omf/images/node_plans.py) of the operational actions, and back.
NODE_ACTIONS = {Event.START: ACTION_START, Event.STOP: ACTION_STOP, Event.RESTART: ACTION_RESTART}
ACTION_WORDS = {**{word: event.value for event, word in NODE_ACTIONS.items()}, ACTION_SAVE: Event.SAVE_IMAGE.value}
SSH_PROBE_S = 1.0  # Status asks the running containers' SSH servers, all at once, within this budget per call


def node_sliver_of(urn: str) -> str:
    """The node sliver URN a container's URN (``<node sliver URN>-c<n>``) belongs to; any other URN unchanged."""
    return _CONTAINER_SUFFIX.sub("", urn)


def check_request(
    request: Request,
    instances: Instances | None,
    max_per_node: int,
    repository: Sequence[ImageRecord],
    user: str,
) -> dict[str, tuple[str, int]]:
    """The containers a request asks for, by node client_id: (image, count). BADARGS, before anything is written,
    for an unknown sliver type, a count over the operator's limit, an image not in the repository (naming the
    labels ``user`` may use) or somebody else's private image."""
    usable = [record.label for record in repository if record.usable_by(user)]
    wanted: dict[str, tuple[str, int]] = {}
    for node in request.nodes:
        if node.sliver_type is not None and node.sliver_type not in SLIVER_TYPES:
            raise BadArgs(
                f"node {node.client_id!r}: sliver type {node.sliver_type!r} is not offered here "
                f"(sliver types: {', '.join(SLIVER_TYPES)}). Nothing was booked"
            )
        if node.sliver_type != CONTAINER_SLIVER_TYPE:
            continue
        if instances is None:
            raise GeniError(
                Reason.UNSUPPORTED,
                f"node {node.client_id!r} asks for containers but this aggregate runs none (no [sfa_omf] "
                "instance_bridge): ask for raw-pc slivers. Nothing was booked",
            )
        count = node.instance_count or 1
        if count > max_per_node:
            raise BadArgs(
                f"node {node.client_id!r} asks for {count} containers; at most {max_per_node} per node here "
                "(policy max_instances_per_node). Nothing was booked"
            )
        image = node.disk_image or ""
        if image and image not in usable:
            if any(record.label == image for record in repository):
                raise BadArgs(f"node {node.client_id!r}: {private_refusal(image)}")
            known = ", ".join(sorted(usable)) or "none yet"
            raise BadArgs(
                f"node {node.client_id!r}: containers start from repository images, and {image!r} is not one "
                f"(repository images: {known}). Nothing was booked"
            )
        wanted[node.client_id] = (image, count)
    return wanted


def check_one_node_per_lease(request: Request, containers: Mapping[str, tuple[str, int]]) -> None:
    """Where the testbed's jobs run the containers (OAR), a lease's job runs its command on one node, which makes
    the lease's containers: UNSUPPORTED, before anything is written, for a lease asking for containers that books
    more than one node (they would all run on one of them)."""
    for lease in request.leases:
        if len(set(lease.nodes)) > 1 and any(client_id in containers for client_id in lease.nodes):
            raise GeniError(
                Reason.UNSUPPORTED,
                f"a lease books nodes {', '.join(sorted(set(lease.nodes)))} and asks for containers on "
                f"{', '.join(sorted(c for c in set(lease.nodes) if c in containers))}: on this testbed a lease's "
                "containers are made by its job on one node, so a lease with containers books exactly one node. Give "
                "each such node a lease of its own (one <lease> element per node, or one Allocate per node). "
                "Nothing was booked",
            )


def plan(
    instances: Instances | None, leases: Sequence[LeaseRecord], wanted: Mapping[str, tuple[str, int]], now: datetime
) -> None:
    """Record the containers of freshly booked leases (their slivers carry the request's client ids)."""
    if instances is None or not wanted:
        return
    for lease in leases:
        requests = [
            InstanceRequest(sliver.urn, sliver.node, *wanted[sliver.client_id])
            for sliver in lease.slivers
            if sliver.client_id in wanted
        ]
        instances.plan(lease.id, requests, now)


def ssh_answering(found: Iterable[Instance]) -> set[str]:
    """The hosts of the running containers among ``found`` whose SSH server answers now (one SSH_PROBE_S budget for
    them all, probed at once)."""
    hosts = {(instance.host, 22) for instance in found if instance.state == RUNNING and instance.host}
    return {host for host, _ in answering_ssh(hosts, SSH_PROBE_S)}


def health(
    instance: Instance, lease: LeaseRecord, now: datetime, answering: Set[str], pending: str = ""
) -> SliverHealth:
    """A container's GENI operational state: ready only when it runs and its SSH server answered (``answering``: the
    hosts ssh_answering found); not ready when stopped, with why when it stopped by itself (and that geni_start starts
    it again); ``pending``: an action handed to its node that the node has not reported done."""
    if pending in ACTION_WORDS and instance.state in (RUNNING, STOPPED, FAILED):
        word = ACTION_WORDS[pending]
        waiting = f"{word} handed to the lease's job on its node: in progress"
        if pending == ACTION_STOP:
            return SliverHealth(Operational.STOPPING, waiting)
        return SliverHealth(Operational.CONFIGURING, waiting)
    if instance.state == FAILED:
        return SliverHealth(Operational.FAILED, instance.error)
    if instance.state == RUNNING:
        if instance.host in answering:
            return SliverHealth(Operational.READY)
        return SliverHealth(Operational.CONFIGURING, f"container {instance.name} runs but SSH does not answer yet")
    if instance.state == STOPPED and instance.error:  # stopped by itself (Instances.tick found it): says so, and
        return SliverHealth(Operational.NOTREADY, instance.error)  # that geni_start starts it again
    if instance.state in (PLANNED, STARTING) and lease.state == "provisioned" and lease.start <= now < lease.end:
        return SliverHealth(Operational.CONFIGURING)  # the slot began: it is being started
    return SliverHealth(Operational.NOTREADY)


def node_health(found: Sequence[Instance]) -> SliverHealth | None:
    """The node sliver fails when one of its containers failed (the reasons named); None: as the backend says."""
    failed = [f"{instance.name}: {instance.error}" for instance in found if instance.state == FAILED]
    return SliverHealth(Operational.FAILED, "; ".join(failed)) if failed else None


def sliver_dict(
    instance: Instance, lease: LeaseRecord, now: datetime, allocation: str, answering: Set[str], pending: str = ""
) -> dict[str, Any]:
    state = health(instance, lease, now, answering, pending)
    return {
        "geni_sliver_urn": instance.urn,
        "geni_expires": format_time(lease.end),
        "geni_allocation_status": allocation,
        "geni_operational_status": str(state.operational_state),
        "geni_error": state.error,
        "geni_start_time": format_time(lease.start),
        "geni_end_time": format_time(lease.end),
    }


def manifest_sliver(
    instance: Instance, node_client_id: str, component_manager_id: str, node_name: str | None, lease_id: str
) -> ManifestSliver:
    host = instance.host or None
    return ManifestSliver(
        sliver_id=instance.urn,
        client_id=f"{node_client_id}-c{instance.position}",
        component_id=instance.node,
        component_manager_id=component_manager_id,
        component_name=node_name,
        exclusive=False,
        sliver_type=CONTAINER_SLIVER_TYPE,
        disk_image=instance.image or None,
        lease_ids=(lease_id,),
        hostname=host,
        logins=(Login(username=LOGIN, hostname=host, port=22),) if host else (),
    )


def act(
    instances: Instances, event: Event, leases: Sequence[LeaseRecord], keys_of_slice: Sequence[str], now: datetime
) -> None:
    """geni_start, geni_stop, geni_restart on the containers of leases whose slot runs (others have none yet). On a
    testbed whose jobs run them, the call waits for the nodes at most ``action_timeout_s`` in all."""
    deadline = time.monotonic() + instances.action_timeout_s
    for lease in leases:
        live = [instance for instance in instances.of_lease(lease.id) if instance.state in LIVE]
        if not live:
            continue
        if not lease.start <= now < lease.end:
            raise BadArgs(
                f"{event.value}: the containers of lease {lease.id} run during its slot only, "
                f"{format_time(lease.start)} to {format_time(lease.end)}; nothing was changed"
            )
        if instances.plans is not None:  # the lease's job runs them: its node acts (or later, in progress)
            instances.act_on_nodes(lease.id, NODE_ACTIONS[event], now, deadline=deadline)
            continue
        if event in (Event.STOP, Event.RESTART):
            instances.stop_lease(lease.id, now)
        if event in (Event.START, Event.RESTART):
            instances.start_lease(lease.id, keys_of_slice, now)


def save_image(
    instances: Instances, leases: Sequence[LeaseRecord], options: Mapping[str, Any], owner_urn: str, now: datetime
) -> Instance:
    """sfa_omf_save_image: option sfa_omf_label (the new image's label, unique), and sfa_omf_instance (a container's
    name or sliver URN; optional when the slivers named have one container). Returns the container saved."""
    label = options.get("sfa_omf_label")
    if not label:
        raise BadArgs("sfa_omf_save_image needs the option sfa_omf_label: the label of the new image (nothing saved)")
    candidates = [
        instance
        for found in instances.of_leases(lease.id for lease in leases).values()
        for instance in found
        if instance.state in (RUNNING, STOPPED)
    ]
    named = options.get("sfa_omf_instance")
    if named:
        candidates = [instance for instance in candidates if named in (instance.name, instance.urn)]
    if len(candidates) != 1:
        if not candidates:
            raise BadArgs(
                "sfa_omf_save_image: no running or stopped container "
                + (f"named {named!r} " if named else "")
                + "among the slivers named (nothing saved)"
            )
        names = ", ".join(instance.name for instance in candidates)
        raise BadArgs(f"sfa_omf_save_image: say which container with option sfa_omf_instance, one of: {names}")
    instances.save(candidates[0], str(label), owner_urn, now)
    return candidates[0]
