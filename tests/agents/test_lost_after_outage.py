"""An outage of the aggregate's own database loses no node: while it lasts the agents' heartbeats answer 503 and go
unrecorded, so that time is not their silence. The leader's sweep of lost agents (server/app.py's, over a real
AgentService and the calendar, SQLite and PostgreSQL) counts silence from the later of an agent's last heartbeat and
the moment it found the database reachable again (after a failed sweep, or at the start of its term). A node that
stays silent once the database is back is still lost, and its running lease's users told.

The clock is the test's; the outage is real: the service's calendar is pointed at a database that cannot be reached
(a closed port; an SQLite file in a directory that does not exist) for its duration, then back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from sfa_omf.agents.node import enrol
from sfa_omf.agents.service import AgentService, AgentSettings
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.errors import GeniError
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.server.app import _lost_agents_sweep
from sfa_omf.trust.gid import GidChain, load_gid_chain_file
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import book_now
from tests.ports import free_port
from tests.sshkeys import ssh_key

HEARTBEAT_S = 50
TIMEOUT_S = 120  # 2 x heartbeat_s + 20: allowed
SWEEP_S = TIMEOUT_S // 3  # the leader's sweep period


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


def service_of(lab: Lab, clock: Clock) -> AgentService:
    return AgentService(
        Agents(lab.aggregate.database, clock=clock),
        LocalAuthority.load(str(lab.directory), "lab"),
        lambda _slice: [],
        AgentSettings(heartbeat_s=HEARTBEAT_S, timeout_s=TIMEOUT_S),
    )


def unreachable(lab: Lab, tmp_path: Path) -> Database:
    """A database like the lab's that cannot be reached: nothing listens on its port (or its file's directory does
    not exist)."""
    if lab.aggregate.database.is_sqlite:
        return Database(sqlite_url(str(tmp_path / "gone" / "calendar.db")))
    closed = make_url(lab.aggregate.database.url).set(host="127.0.0.1", port=free_port())
    return Database(closed.render_as_string(hide_password=False))


def losses(lab: Lab) -> list[str]:
    """The operators' node_down events and the leases' failed news recorded so far."""
    events = NotifyEvents(lab.aggregate.database).since(datetime(2000, 1, 1, tzinfo=UTC))
    return [event.event for event in events if event.event in ("node_down", "failed")]


def enrolled(lab: Lab, tmp_path: Path) -> tuple[str, GidChain]:
    node = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1").node
    return node, load_gid_chain_file(str(tmp_path / "a1" / "node.gid"))


def in_service(lab: Lab, node: str) -> bool:
    ((lost,),) = [(agent.lost,) for agent in lab.agents.list_agents()]
    return not lost and lab.aggregate.inventory.get_node(node).state == "usable"


def test_an_outage_longer_than_the_timeout_loses_no_node_and_fails_no_lease(lab: Lab, tmp_path: Path) -> None:
    node, chain = enrolled(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))  # a lease runs on the node: its users would be told it failed
    (agent,) = lab.agents.list_agents()
    clock = Clock(agent.last_seen)
    service = service_of(lab, clock)
    sweep: Callable[[], None] = _lost_agents_sweep(service)
    sweep()  # the term's first sweep
    clock.advance(HEARTBEAT_S)
    service.heartbeat(chain)  # the agent's last heartbeat before the outage
    clock.advance(1)
    sweep()  # written by the sweep's flush
    assert lab.agents.list_agents()[0].last_seen == agent.last_seen + timedelta(seconds=HEARTBEAT_S)

    reachable, service.agents.database = service.agents.database, unreachable(lab, tmp_path)
    for _ in range(3 * TIMEOUT_S // SWEEP_S):  # the outage: three timeouts long
        clock.advance(SWEEP_S)
        with pytest.raises(GeniError):  # the agent heartbeats meanwhile and gets 503
            service.heartbeat(chain)
        with pytest.raises(GeniError):  # the leader's sweep fails (logged by the leadership, tried again)
            sweep()
    service.agents.database = reachable

    clock.advance(SWEEP_S)
    sweep()  # the database answers again: silence counts from now
    back = clock.now
    clock.advance(TIMEOUT_S)
    sweep()
    assert in_service(lab, node)
    assert losses(lab) == []

    # Silent for longer than the timeout with the database reachable: lost, and its lease's users told.
    clock.now = back + timedelta(seconds=TIMEOUT_S + 1)
    assert service.agents.sweep_lost(TIMEOUT_S) == [node]
    assert not in_service(lab, node)
    assert sorted(losses(lab)) == ["failed", "node_down"]


def test_a_heartbeat_after_the_outage_keeps_the_node_in_service(lab: Lab, tmp_path: Path) -> None:
    node, chain = enrolled(lab, tmp_path)
    (agent,) = lab.agents.list_agents()
    clock = Clock(agent.last_seen)
    service = service_of(lab, clock)
    sweep = _lost_agents_sweep(service)
    sweep()
    reachable, service.agents.database = service.agents.database, unreachable(lab, tmp_path)
    for _ in range(2 * TIMEOUT_S // SWEEP_S):
        clock.advance(SWEEP_S)
        with pytest.raises(GeniError):
            sweep()
    service.agents.database = reachable
    clock.advance(SWEEP_S)
    sweep()
    clock.advance(HEARTBEAT_S)
    service.heartbeat(chain)  # the agent's next heartbeat once the database answers
    for _ in range(2):
        clock.advance(SWEEP_S)
        sweep()
    assert in_service(lab, node)
    assert losses(lab) == []


def test_the_first_sweep_of_a_term_loses_no_node_heard_long_ago(lab: Lab, tmp_path: Path) -> None:
    """Every process restarted (or the database was away, which ended the previous term) after the agent was last
    heard: its heartbeats could not be recorded meanwhile. The new term's first sweep starts the count."""
    node, _chain = enrolled(lab, tmp_path)
    (agent,) = lab.agents.list_agents()
    clock = Clock(agent.last_seen + timedelta(seconds=3 * TIMEOUT_S))
    service = service_of(lab, clock)
    sweep = _lost_agents_sweep(service)
    sweep()
    clock.advance(TIMEOUT_S)
    sweep()
    assert in_service(lab, node)
    assert losses(lab) == []
    clock.advance(SWEEP_S)
    sweep()
    assert not in_service(lab, node)
    assert losses(lab) == ["node_down"]
