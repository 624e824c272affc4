"""How a running lease on an agent's node is doing, from what its agent said (or did not say)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sfa_omf.am.states import Operational
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.inventory import NOT_IN_TEXT
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.testbed.base import SliverHealth

LOST_CONTACT = "node lost contact"

NodeHealth = Callable[[SliverRecord, LeaseRecord, datetime], SliverHealth | None]


def shown_agent_message(message: str) -> str:
    """An agent's message as Status shows it: characters XML cannot carry escaped (\\x1b, \\x00, \\ud800). Reports
    are checked when they arrive; one stored by an older version may hold them, and would make every Status of the
    slice unreadable (not well-formed XML-RPC)."""
    return NOT_IN_TEXT.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), message)


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
            return SliverHealth(
                Operational.FAILED, f"the node's agent failed to set the lease up: {shown_agent_message(message)}"
            )
        if reported == "started":
            return SliverHealth(Operational.READY)
        return SliverHealth(Operational.CONFIGURING)

    return health
