"""An agent's report for a lease that is no longer to run on its node opens no stage-out window.

The stage-out of a cancelled lease is taken only when its agent set it up (a slice deleted during its slot): the
agent's report says so. A "started" for a lease already cancelled was recorded all the same, and opened the window
for a lease that never ran; so did a first "failed" or "ended" (and "failed" told the slice's users that the node
could not set up a lease they had deleted). Now "started" for a lease not provisioned is refused (409, saying why)
unless it is the report already recorded, and a first "failed" or "ended" for it is taken and ignored: the agent
tears down what it made either way. A lease set up before it was deleted keeps its reports and its window.

Real TLS on 127.0.0.1, the agent's own client, SQLite and the real PostgreSQL (tests/agents/conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import KEY, STAGE_OUT, UNSENT, Agent, AgentCallError, Client, enrol
from sfa_omf.calendar.agent_models import AgentReport
from sfa_omf.calendar.models import NotifyEvent
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import SLICE, book_now, slice_call
from tests.sshkeys import ssh_key


def _booked_on_pc1(lab: Lab, tmp_path: Path) -> tuple[Client, str]:
    """pc1's agent (enrolled over TLS) and the lease booked and provisioned on pc1 for the slot running now."""
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    agent = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    return agent, lease.id


def _delete_slice(lab: Lab) -> None:
    client, cred = slice_call(lab)
    assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0


def _reports(lab: Lab, lease_id: str) -> list[tuple[str, str]]:
    """(state, message) of every report recorded for the lease."""
    with lab.aggregate.database.read() as session:
        rows = session.execute(
            select(AgentReport.state, AgentReport.message).where(AgentReport.lease_id == lease_id)
        ).all()
        return [(state, message) for state, message in rows]


def _agent_failures_told(lab: Lab, lease_id: str) -> int:
    """Events telling the slice's users that a node's agent could not set the lease up."""
    with lab.aggregate.database.read() as session:
        count = session.scalar(
            select(func.count()).select_from(NotifyEvent).where(NotifyEvent.key.startswith(f"{lease_id}:failed:agent"))
        )
        return int(count or 0)


def _stage_out_refused(agent: Client, lease_id: str) -> AgentCallError:
    with pytest.raises(AgentCallError) as refused:
        agent.put_file(lease_id, "results.txt", b"results\n")
    return refused.value


def test_started_for_a_cancelled_lease_is_refused_and_its_stage_out_stays_shut(lab: Lab, tmp_path: Path) -> None:
    agent, lease_id = _booked_on_pc1(lab, tmp_path)
    _delete_slice(lab)
    with pytest.raises(AgentCallError) as refused:
        agent.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})
    said = refused.value
    assert (said.status, said.reason) == (409, "policy"), said
    assert f"lease {lease_id} was cancelled" in said.message and "not to be set up on pc1" in said.message, said
    assert _reports(lab, lease_id) == []
    shut = _stage_out_refused(agent, lease_id)
    assert (shut.status, shut.reason) == (409, "policy") and "never set up" in shut.message, shut
    # The same again is refused again (the agent's next round): nothing is written by repeating it either.
    with pytest.raises(AgentCallError):
        agent.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})
    assert _reports(lab, lease_id) == []
    assert agent.call("GET", "work")["finished"] == []  # nothing for the agent to tear down on the server's word


@pytest.mark.parametrize("state", ["failed", "ended"])
def test_failed_or_ended_for_a_cancelled_lease_never_set_up_is_taken_and_writes_nothing(
    lab: Lab, tmp_path: Path, state: str
) -> None:
    agent, lease_id = _booked_on_pc1(lab, tmp_path)
    _delete_slice(lab)
    for _ in range(2):  # PUT: the same report again is answered alike
        answer = agent.call("PUT", f"work/{lease_id}", {"state": state, "message": "useradd: cannot lock"})
        assert answer == {"lease_id": lease_id, "state": state}
    assert _reports(lab, lease_id) == []
    assert _agent_failures_told(lab, lease_id) == 0  # the users deleted it: no "the node could not set it up"
    shut = _stage_out_refused(agent, lease_id)
    assert shut.status == 409 and "never set up" in shut.message, shut
    # ... and a "started" after it is still refused.
    with pytest.raises(AgentCallError) as refused:
        agent.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})
    assert refused.value.status == 409
    assert _reports(lab, lease_id) == []


def test_a_lease_set_up_before_its_slice_was_deleted_keeps_its_reports_and_window(lab: Lab, tmp_path: Path) -> None:
    agent, lease_id = _booked_on_pc1(lab, tmp_path)
    assert agent.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})["state"] == "started"
    _delete_slice(lab)  # during its slot, after the agent set it up
    # The same report again (its answer was lost) is taken: it changes nothing.
    assert agent.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})["state"] == "started"
    assert _reports(lab, lease_id) == [("started", "")]
    (finished,) = agent.call("GET", "work")["finished"]
    assert finished["lease_id"] == lease_id  # the agent tears it down ...
    assert agent.put_file(lease_id, "results.txt", b"results\n")["changed"] is True  # ... after its stage-out
    assert agent.call("PUT", f"work/{lease_id}", {"state": "ended", "message": ""})["state"] == "ended"
    assert _reports(lab, lease_id) == [("ended", "")]
    assert agent.call("GET", "work")["finished"] == []


class DeletedWhileSettingUp(DirectoryHost):
    """Sets a lease's accounts up while its slice is deleted (the Delete lands between the agent's reading of its
    work and its "started"): the experimenter's Delete, made for real, not a stand-in. One result is left in the
    account's ~/stage-out, as a user's run would leave it."""

    def __init__(self, root: str, state_dir: str, lab: Lab) -> None:
        super().__init__(root, state_dir)
        self.lab = lab

    def apply(self, lease_id: str, accounts: Mapping[str, Sequence[str]]) -> None:
        super().apply(lease_id, accounts)
        for login in accounts:
            self.write_file(login, STAGE_OUT, "results.txt", b"results\n")
        _delete_slice(self.lab)


def test_the_agent_of_a_lease_deleted_while_it_set_it_up_removes_it_and_keeps_its_files(
    lab: Lab, tmp_path: Path
) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    host = DeletedWhileSettingUp(str(tmp_path / "root"), str(tmp_path / "a1"), lab)
    agent = Agent(str(tmp_path / "a1"), host)
    with pytest.raises(AgentCallError) as refused:  # its "started": the round stops there (agents/node.py run)
        agent.run_once()
    assert refused.value.status == 409 and f"lease {lease.id} was cancelled" in refused.value.message
    assert host.logins() != [] and _reports(lab, lease.id) == []
    # Its next round: the lease is not in its work; what it made goes, the refused result is kept on the node, and
    # its "ended" is taken without opening the window.
    agent.run_once()
    assert host.logins() == [] and agent.applied == {}
    (kept,) = (tmp_path / "a1" / UNSENT).rglob("*results.txt")
    assert kept.read_bytes() == b"results\n"
    assert _reports(lab, lease.id) == []
    assert (
        _stage_out_refused(
            Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root), lease.id
        ).status
        == 409
    )
