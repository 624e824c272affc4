"""Agents' nodes as OAR resources (``[sfa_aggregate] type = oar``): a node that registers through its agent becomes
an OAR resource, is taken out of OAR's pool when its agent is lost, and is put back when it is heard again.

- The resource: ``network_address`` = the node's host name (what the OAR backend reserves, like any node whose name
  is its OAR address), ``vpn_number`` = the node's fixed number (its VPN address is 10.200.0.(number+1)) and
  ``local_ip_address`` = its LAN address, as OAR's desktop-computing seed planned. Both properties must exist in OAR
  (once: ``oarproperty -a local_ip_address -c; oarproperty -a vpn_number``). The agent's free-form properties are not
  copied: OAR writes values into SQL unescaped, and its columns are the operator's to choose.
- Lost is ``Dead``, not ``Absent``: measured on OAR 2.5.9, an advance reservation is still planned on an Absent
  resource (OAR expects it back by its available_upto) while a Dead one is refused. Back is ``Alive``. The state is
  set through the REST API (``POST /resources/<id>/state``), so existing reservations are left as they are: the
  calendar already answers geni_failed "node lost contact" for a running one.
- Only resources whose ``vpn_number`` is the node's are touched: a resource of the same name made otherwise (a node
  OAR had before: no ``vpn_number``) is never taken over, and the registration is refused (TESTBED) rather than
  bind to it. One of the same name with another ``vpn_number`` was left by an agent's registration that failed (or
  a removed node's): a registration deletes it and makes its own.
- OAR calls cost ~0.3-1.5 s each (a CGI): a registration pays one listing and one creation, a sweep one listing
  plus one call per node whose state must change. Creations are made one at a time (OAR's own numbering races):
  across threads by a lock here, across the aggregate's processes by the lock ``exclusive`` takes (the calendar's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.base import AgentNode
from sfa_omf.testbed.oar.client import OarClient, OarError, OarResource, OarTimeout, OarUnavailable

ALIVE, LOST = "Alive", "Dead"
REMOVE_ATTEMPTS = 3


def resource_properties(node: AgentNode) -> dict[str, str]:
    """The properties the node's OAR resource is created with."""
    properties = {"network_address": node.hostname, "vpn_number": str(node.number)}
    if node.local_address:
        properties["local_ip_address"] = node.local_address
    return properties


class OarAgentNodes:
    """Agents' nodes in the OAR behind ``client`` (which must act as OAR's admin user, ``oar``)."""

    def __init__(self, client: OarClient) -> None:
        self.client = client
        # OAR 2.5.9 numbers a new resource max(id) + 1 without a lock that holds on PostgreSQL: two creations at once
        # collide on the id and one fails (measured). This aggregate creates one at a time: this process's threads
        # wait here, other processes on the lock ``exclusive`` takes.
        self._creating = threading.Lock()

    def join(self, node: AgentNode, exclusive: Callable[[], None]) -> Callable[[], None] | None:
        """The node's resource, Alive: created (returns how to remove it again) or put back Alive (returns None).
        A resource of that name made otherwise (no vpn_number) is left alone: TESTBED; one an agent's registration
        left under another number is replaced."""
        # A brief listing first (the properties only when the name is there): it is on every registration's path.
        existing = self._resources(full=False).get(node.hostname, [])
        if existing:
            existing = self._resources().get(node.hostname, [])
        strangers = [resource.id for resource in existing if not _agent_made(resource)]
        if strangers:
            raise GeniError(
                Reason.TESTBED,
                f"OAR already has resources named {node.hostname} that are not this agent's node ({strangers}): "
                "enrol under another host name",
            )
        # An agent's resource of this name under another number is a leftover (a registration rolled back after OAR
        # made it, whose number the database does not give back; a removed node's): the calendar's node of this
        # name is this one, so nothing else can own it. It goes, else the retry would be refused for good.
        with _oar_errors():
            for resource in existing:
                if not _belongs(resource, node.number):
                    self._remove(resource.id)
            existing = [resource for resource in existing if _belongs(resource, node.number)]
            for resource in existing:
                if resource.state != ALIVE:
                    self.client.set_resource_state(resource.id, ALIVE)
            if existing:
                return None
            exclusive()  # first, then this process's lock (always in that order: no deadlock between the two)
            with self._creating:  # (the same host name is never joined twice at once: the calendar's row lock)
                resource_id = self.client.add_resource(resource_properties(node))
        return lambda: self._remove(resource_id)

    def sync(self, nodes: Sequence[AgentNode], exclusive: Callable[[], None]) -> list[str]:
        """Each node's resource Dead when it is lost, else Alive (created when missing); the host names changed."""
        by_address = self._resources()
        changed = []
        with _oar_errors():
            for node in nodes:
                wanted = LOST if node.lost else ALIVE
                named = by_address.get(node.hostname, [])
                resources = [resource for resource in named if _belongs(resource, node.number)]
                if not named and not node.lost:  # (never a second resource beside one made otherwise)
                    exclusive()
                    with self._creating:
                        self.client.add_resource(resource_properties(node))
                    changed.append(node.hostname)
                stale = [resource for resource in resources if resource.state != wanted]
                for resource in stale:
                    self.client.set_resource_state(resource.id, wanted)
                if stale:
                    changed.append(node.hostname)
        return changed

    def set_lost(self, hostname: str, number: int, lost: bool) -> dict[int, str]:
        """Take the node's resources out of OAR's pool (Dead) or put them back (Alive); the state each resource it
        changed had before, by id (for ``restore``)."""
        wanted = LOST if lost else ALIVE
        before = {}
        with _oar_errors():
            for resource in self._resources().get(hostname, []):
                if _belongs(resource, number) and resource.state != wanted:
                    self.client.set_resource_state(resource.id, wanted)
                    before[resource.id] = resource.state
        return before

    def restore(self, states: Mapping[int, str]) -> None:
        """Put resources back in the states ``set_lost`` found them in."""
        with _oar_errors():
            for resource_id, state in states.items():
                self.client.set_resource_state(resource_id, state)

    def remove(self, hostname: str, number: int) -> int:
        """Delete the node's resources from OAR for good (the node was removed); how many there were."""
        resources = [resource for resource in self._resources().get(hostname, []) if _belongs(resource, number)]
        for resource in resources:
            self._remove(resource.id)
        return len(resources)

    def _remove(self, resource_id: int) -> None:
        """Delete a resource; tried again when OAR's API breaks off or is too slow (seen under load: the same call
        then works; a resource already gone is not an error, so trying again is safe)."""
        for _ in range(REMOVE_ATTEMPTS - 1):
            try:
                self.client.delete_resource(resource_id)
                return
            except (OarUnavailable, OarTimeout):
                time.sleep(1)
        with _oar_errors():  # the last attempt: its error is the answer
            self.client.delete_resource(resource_id)

    def _resources(self, full: bool = True) -> dict[str, list[OarResource]]:
        """OAR's resources by network address, with their properties unless not ``full`` (one listing)."""
        by_address: dict[str, list[OarResource]] = {}
        with _oar_errors():
            resources = self.client.resources(full=full)
        for resource in resources:
            by_address.setdefault(resource.network_address, []).append(resource)
        return by_address


def _agent_made(resource: OarResource) -> bool:
    """Whether an agent's registration made the resource (it has a ``vpn_number``), not OAR's operator."""
    return resource.properties.get("vpn_number", "") != ""


def _belongs(resource: OarResource, number: int) -> bool:
    """Whether the resource is the agent's node of this number (and not a node of the same name made otherwise)."""
    return resource.properties.get("vpn_number") == str(number)


@contextmanager
def _oar_errors() -> Iterator[None]:
    """OAR's errors as the aggregate's."""
    try:
        yield
    except OarTimeout as exc:
        raise GeniError(Reason.TIMEDOUT, f"OAR did not answer in time: {exc.message}") from exc
    except OarUnavailable as exc:
        raise GeniError(Reason.UNAVAILABLE, f"the OAR server does not answer: {exc.message}") from exc
    except OarError as exc:
        raise GeniError(Reason.TESTBED, f"OAR refused to add or change the node's resource: {exc.message}") from exc
    except ValueError as exc:
        raise GeniError(Reason.TESTBED, f"the node cannot be an OAR resource: {exc}") from exc
