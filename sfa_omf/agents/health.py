"""How a running lease on an agent's node is doing, from what its agent said (or did not say)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sfa_omf.am.states import Operational
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.base import SliverHealth

LOST_CONTACT = "node lost contact"

NodeHealth = Callable[[SliverRecord, LeaseRecord, datetime], SliverHealth | None]


def agent_health(agents: Agents) -> NodeHealth:
    """A health check for the aggregate: None for nodes without an agent and outside the slot (the backend
    answers), else geni_failed when the agent was lost ("node lost contact") or reported a failure, geni_ready once
    it reported the lease started, geni_configuring until then."""

    def health(sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth | None:
        if not lease.start <= now < lease.end or sliver.operational_state == Operational.NOTREADY:
            return None
        known = agents.node_health(sliver.node, lease.id)
        if known is None:
            return None
        lost, reported, message = known
        if lost:
            return SliverHealth(Operational.FAILED, LOST_CONTACT)
        if reported == "failed":
            return SliverHealth(Operational.FAILED, f"the node's agent failed to set the lease up: {message}")
        if reported == "started":
            return SliverHealth(Operational.READY)
        return SliverHealth(Operational.CONFIGURING)

    return health
