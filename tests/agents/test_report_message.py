"""An agent's report message with control characters: refused on arrival, and never in the way of Status.

A message holding ESC or BEL went into geni_error as it was and the experimenter's XML-RPC client could not read the
slice's Status at all (not well-formed XML); a NUL was a database failure on PostgreSQL (503: the agent retried for
ever) and stored by SQLite. Real TLS on 127.0.0.1, SQLite and the real PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sfa_omf.agents.node import KEY, AgentCallError, Client, enrol
from sfa_omf.calendar.agent_models import AgentReport
from sfa_omf.calendar.models import Node, NotifyEvent
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, SLICE, book_now, sliver_status
from tests.sshkeys import ssh_key


def _enrolled_and_booked(lab: Lab, tmp_path: Path) -> tuple[Client, str]:
    """pc1's agent (enrolled over TLS) and the lease of the slice booked on pc1 for the slot running now."""
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    agent = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    return agent, lease.id


def _written(lab: Lab, lease_id: str) -> tuple[int, int]:
    """(reports of the lease, events recorded about it): what a report writes."""
    with lab.aggregate.database.read() as session:
        reports = session.scalar(select(func.count()).select_from(AgentReport).where(AgentReport.lease_id == lease_id))
        events = session.scalar(
            select(func.count()).select_from(NotifyEvent).where(NotifyEvent.key.startswith(f"{lease_id}:"))
        )
        return int(reports or 0), int(events or 0)


@pytest.mark.parametrize(
    ("message", "character", "position"),
    [("disk \x1b[2J full\x07", "U+001B", 6), ("disk \x00 full", "U+0000", 6), ("bad \ud800 half", "U+D800", 5)],
)
def test_a_failure_message_with_a_control_character_is_refused_and_status_stays_readable(
    lab: Lab, tmp_path: Path, message: str, character: str, position: int
) -> None:
    agent, lease_id = _enrolled_and_booked(lab, tmp_path)
    with pytest.raises(AgentCallError) as refused:
        agent.call("PUT", f"work/{lease_id}", {"state": "failed", "message": message})
    said = refused.value
    assert (said.status, said.reason) == (400, "bad_args"), said
    assert f"{character} at position {position}" in said.message, said
    assert _written(lab, lease_id) == (0, 0)
    assert sliver_status(lab) == ("geni_configuring", "")  # the experimenter's XML-RPC client reads it
    # Tabs and line ends are text: such a message is taken, and Status shows it.
    answer = agent.call("PUT", f"work/{lease_id}", {"state": "failed", "message": "disk\tfull\nretry later"})
    assert answer == {"lease_id": lease_id, "state": "failed"}
    assert _written(lab, lease_id) == (1, 1)
    assert sliver_status(lab) == ("geni_failed", "the node's agent failed to set the lease up: disk\tfull\nretry later")


def test_a_stored_message_with_control_characters_is_shown_escaped(lab: Lab, tmp_path: Path) -> None:
    _agent, lease_id = _enrolled_and_booked(lab, tmp_path)
    with lab.aggregate.database.write() as session:  # as an older version, which did not check, stored it
        node_id = session.scalar(select(Node.id).where(Node.component_id == NODE))
        assert node_id is not None
        session.add(
            AgentReport(
                lease_id=lease_id,
                node_id=node_id,
                state="failed",
                message="disk \x1b[2J full\x07",
                updated_s=int(time.time()),
            )
        )
    assert sliver_status(lab) == (
        "geni_failed",
        "the node's agent failed to set the lease up: disk \\x1b[2J full\\x07",
    )
