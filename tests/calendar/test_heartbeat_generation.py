"""Heartbeats and the calendar's generation: the time an agent was last heard is in no cached answer, so the flushes
of heartbeats (every few seconds while agents report) keep the generation and every process's cached advertisement;
what the advertisement does show, a node out of service because its agent went silent and back in service when it is
heard again, bumps it. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rspec.model import LeaseView
from sfa_omf.am.advertiser import Advertiser
from sfa_omf.calendar.agents import Agents, Enrolment
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.inventory import Inventory
from tests.calendar.conftest import node_urn

NODE = node_urn("a1")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def generation(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


def enrolled(database: Database, clock: Clock) -> Agents:
    agents = Agents(database, clock=clock)
    token, _ = agents.create_token("default", 600)
    agents.register(Enrolment(token, "a1", NODE, "00" * 32), lambda _urn: ("", ""))
    return agents


def last_seen(agents: Agents) -> datetime:
    (agent,) = agents.list_agents()
    return agent.last_seen


def test_heartbeat_flushes_of_a_live_agent_keep_the_generation_and_the_cached_advertisement(
    database: Database,
) -> None:
    clock = Clock()
    agents = enrolled(database, clock)
    advertiser = Advertiser(database, timedelta(days=7), 3, 1800, lambda nodes: ())
    view = next(iter(LeaseView))
    advertiser.document(clock.now, view, False)
    builds, before = advertiser.builds, generation(database)
    for second in range(1, 4):
        heard = int(clock.now.timestamp()) + second
        agents.record_heard({NODE: heard})
        assert last_seen(agents) == datetime.fromtimestamp(heard, UTC)  # written, and committed
        assert generation(database) == before
        advertiser.document(clock.now, view, False)
    assert advertiser.builds == builds, "a heartbeat flush threw the cached advertisement away"
    agents.record_heard({NODE: int(clock.now.timestamp())})  # older than what the database has: kept as it is
    assert last_seen(agents) == datetime.fromtimestamp(int(clock.now.timestamp()) + 3, UTC)


def test_a_node_lost_and_heard_again_bumps_the_generation_as_the_advertisement_shows_it(database: Database) -> None:
    clock = Clock()
    agents = enrolled(database, clock)
    inventory = Inventory(database)
    clock.now += timedelta(seconds=120)
    before = generation(database)
    assert agents.sweep_lost(60) == [NODE]
    assert inventory.get_node(NODE).state == "lost"  # advertised out of service
    lost_at = generation(database)
    assert lost_at > before
    agents.heartbeat(NODE)  # a lost agent's heartbeat is written at once, and puts its node back in service
    assert inventory.get_node(NODE).state == "usable"
    assert generation(database) > lost_at
