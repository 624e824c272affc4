"""The REST inventory's listings carry recent leases, not a node's whole history: ``GET /resources/nodes?name=`` (the
OMF controllers' question on every request) and ``GET /resources/accounts`` read, in SQL, the leases that have not
ended and those that ended (or were cancelled) within RECENT_LEASES_S of the inventory's clock; the lease listing
lists older ones when asked for history (status=past or cancelled, uuid, account_urn). An in-process inventory over
the aggregate's calendar (type = omf), on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate
from sfa_omf.testbed.omf.inventory import RECENT_LEASES_S, OmfInventory
from sfa_omf.testbed.omf.rest import frcp_account
from sfa_omf.times import format_time, utcnow
from tests.calendar.conftest import fresh_database

N1 = "urn:publicid:IDN+lab+node+node1"
OLD_SLICE = "urn:publicid:IDN+lab+slice+olda"


@dataclass
class Lab:
    aggregate: Aggregate
    inventory: OmfInventory
    moment: list[datetime]  # the inventory's clock: moment[0]
    leases: dict[str, str]  # which lease: its uuid


def book(inventory: OmfInventory, account: str, start: datetime, minutes: int) -> str:
    body = {
        "name": f"{account}-{format_time(start)}",
        "valid_from": format_time(start),
        "valid_until": format_time(start + timedelta(minutes=minutes)),
        "account_attributes": {"name": account},
        "components": [{"name": "node1"}],
    }
    return inventory.book_lease(body).id


@pytest.fixture(params=["sqlite", "postgresql"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """node1 with five leases, booked ahead of time, then the inventory's clock moved to ``now``: one that ended two
    days and an hour ago, one cancelled whose window ended two days ago (account olda, both), one that ended an hour
    ago, one running, one to come (account alice)."""
    directory = tmp_path / "lab"
    calendar = fresh_database(request.param, tmp_path)
    calendar_url = calendar.engine.url.render_as_string(hide_password=False)
    calendar.dispose()
    init_directory(str(directory), "lab", ("ann",))
    settings = replace(read_config(str(directory / "sfa-omf.conf")), aggregate_type="omf", database_url=calendar_url)
    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec(N1, "node1"))
    moment = [utcnow()]
    inventory = OmfInventory(
        aggregate.database,
        aggregate.bookings,
        aggregate.verifier,
        aggregate.backend,
        aggregate.settings.authority_hrn,
        "https://broker",
        account_policy=aggregate.accounts.policy,
        shared_login=aggregate.accounts.shared_login,
        clock=lambda: moment[0],
        frcp_account=frcp_account(aggregate),
    )
    base = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    now = base + timedelta(days=2, hours=2)
    leases = {
        "old": book(inventory, "olda", base, 60),
        "old_cancelled": book(inventory, "olda", base + timedelta(hours=1), 60),
        "recent": book(inventory, "alice", now - timedelta(hours=2), 60),
        "current": book(inventory, "alice", now - timedelta(minutes=30), 60),
        "future": book(inventory, "alice", now + timedelta(hours=2), 60),
    }
    aggregate.bookings.cancel(leases["old_cancelled"])
    moment[0] = now
    yield Lab(aggregate, inventory, moment, leases)
    aggregate.database.dispose()


def resources(answer: dict[str, Any]) -> list[dict[str, Any]]:
    response = answer["resource_response"]
    return list(response["resources"]) if "resources" in response else [response["resource"]]


def which(lab: Lab, leases: list[dict[str, Any]]) -> list[str]:
    names = {uuid: name for name, uuid in lab.leases.items()}
    return [names[lease["uuid"]] for lease in leases]


def lease_selects(lab: Lab, collection: str, query: dict[str, list[str]]) -> tuple[dict[str, Any], list[Any]]:
    """The answer to GET /resources/<collection>?<query>, and the parameters of each SELECT of the lease table."""
    engine = lab.aggregate.database.engine
    seen: list[Any] = []

    def note(connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "lease.end_s" in statement:
            seen.append(list(parameters.values()) if isinstance(parameters, dict) else list(parameters))

    event.listen(engine, "before_cursor_execute", note)
    try:
        answer = lab.inventory.get(collection, query)
    finally:
        event.remove(engine, "before_cursor_execute", note)
    return answer, seen


def test_a_node_carries_its_recent_leases_read_with_the_end_bound_in_sql(lab: Lab) -> None:
    answer, selects = lease_selects(lab, "nodes", {"name": ["node1"]})
    node = answer["resource_response"]["resource"]
    assert which(lab, node["leases"]) == ["recent", "current", "future"]
    assert [lease["status"] for lease in node["leases"]] == ["past", "active", "accepted"]
    # The bound is the query's (the inventory's clock less a day), not a filter of every lease ever read.
    bound = to_s(lab.moment[0]) - RECENT_LEASES_S
    assert selects and all(bound in parameters for parameters in selects)


def test_the_accounts_are_those_of_the_recent_leases(lab: Lab) -> None:
    answer, selects = lease_selects(lab, "accounts", {})
    assert [account["name"] for account in resources(answer)] == ["alice"]
    assert selects and all(to_s(lab.moment[0]) - RECENT_LEASES_S in parameters for parameters in selects)


def test_the_lease_listing_is_bounded_unless_asked_for_history(lab: Lab) -> None:
    def listed(**query: str) -> list[str]:
        return which(lab, resources(lab.inventory.get("leases", {key: [value] for key, value in query.items()})))

    assert listed() == ["recent", "current", "future"]
    assert listed(status="past") == ["old", "recent"]
    assert listed(status="cancelled") == ["old_cancelled"]
    assert listed(uuid=lab.leases["old"]) == ["old"]
    assert listed(account_urn=OLD_SLICE) == ["old", "old_cancelled"]
    assert listed(status="active") == ["current"]


def test_a_lease_leaves_the_node_a_day_after_its_end(lab: Lab) -> None:
    def on_node() -> list[str]:
        return which(lab, lab.inventory.get("nodes", {"name": ["node1"]})["resource_response"]["resource"]["leases"])

    recent_end = lab.moment[0] - timedelta(hours=1)
    lab.moment[0] = recent_end + timedelta(seconds=RECENT_LEASES_S - 1)
    assert on_node()[0] == "recent"
    lab.moment[0] = recent_end + timedelta(seconds=RECENT_LEASES_S)
    assert on_node() == ["current", "future"]
