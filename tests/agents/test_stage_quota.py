"""What one node agent may stage out (real TLS on loopback): only from its lease's start until a grace after its end,
for a lease that was provisioned (a cancelled one only when the agent set it up), at most [sfa_agents]
max_stage_out_files files of max_stage_out_bytes per lease and node, and never into the data directory's reserve
(min_free_bytes). An agent is a volunteer's machine whose key an experimenter may hold: without these bounds it filled
the aggregate's disk with a lease booked hours ahead (~80 MB/s), and then SQLite and the logs failed for everyone."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from sfa_omf.agents.node import KEY, AgentCallError, Client, enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.calendar.models import Lease, Sliver
from sfa_omf.config import read_config
from sfa_omf.times import format_time, utcnow
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import SLICE, book_now, request, slice_call
from tests.sshkeys import ssh_key


def _configure(lab: Lab, **values: int) -> None:
    """Write ``values`` as the [sfa_agents] section of the lab's configuration file and serve with it."""
    with open(lab.settings_path, "a") as config:
        config.write("\n[sfa_agents]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()))
    lab.settings = read_config(lab.settings_path)
    for key, value in values.items():  # read from the file, not defaults
        assert getattr(lab.settings, f"agent_{key}") == value
    lab.restart()


def _agent(lab: Lab, tmp_path: Path) -> tuple[Client, FileStore]:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    return client, FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)


def _lease_id(lab: Lab) -> str:
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    return lease.id


def _put(client: Client, lease_id: str, name: str, data: bytes) -> int:
    """The status of the PUT of ``data`` as ``name``: 200 or the refusal's."""
    try:
        client.put_file(lease_id, name, data)
    except AgentCallError as exc:
        return exc.status
    return 200


def _refusal(client: Client, lease_id: str, name: str, data: bytes) -> AgentCallError:
    with pytest.raises(AgentCallError) as refused:
        client.put_file(lease_id, name, data)
    return refused.value


def _nothing_out(lab: Lab, lease_id: str) -> bool:
    return not (lab.directory / "agent_files" / lease_id / "pc1" / "out").exists()


def test_a_lease_booked_ahead_takes_no_stage_out_but_its_stage_in_is_read(lab: Lab, tmp_path: Path) -> None:
    client, store = _agent(lab, tmp_path)
    slice_client, cred = slice_call(lab)
    start = utcnow() + timedelta(hours=3)
    allocated = slice_client.Allocate(SLICE, [cred], request(start, timedelta(hours=1)), {})
    assert allocated["code"]["geni_code"] == 0, allocated
    users = {"geni_users": [{"urn": "urn:publicid:IDN+lab+user+ann", "keys": [ssh_key("ann@laptop")]}]}
    assert slice_client.Provision([SLICE], [cred], users)["code"]["geni_code"] == 0
    lease_id = _lease_id(lab)
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    refused = _refusal(client, lease_id, "f000001.bin", b"x" * 1000)
    assert refused.status == 409 and "has not started" in refused.message, refused
    assert format_time(lease.start) in refused.message  # when files are taken
    assert _nothing_out(lab, lease_id)
    # Staging in is the operator's, before the slot: the agent reads it as before (it fetches at the start).
    store.put(lease_id, "pc1", "in", "input.dat", b"data in", hashlib.sha256(b"data in").hexdigest())
    assert client.get_file(lease_id, "input.dat") == b"data in"


def test_a_lease_never_provisioned_or_cancelled_before_set_up_takes_none(lab: Lab, tmp_path: Path) -> None:
    client, _ = _agent(lab, tmp_path)
    slice_client, cred = slice_call(lab)
    grain = timedelta(seconds=lab.aggregate.policy.default_grain_s)
    allocated = slice_client.Allocate(SLICE, [cred], request(utcnow(), 2 * grain), {})
    assert allocated["code"]["geni_code"] == 0, allocated
    lease_id = _lease_id(lab)
    refused = _refusal(client, lease_id, "a.txt", b"a")  # allocated: in its slot, never provisioned
    assert refused.status == 409 and "allocated" in refused.message and "never set up" in refused.message, refused
    assert _nothing_out(lab, lease_id)
    assert slice_client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0
    refused = _refusal(client, lease_id, "a.txt", b"a")
    assert refused.status == 409 and "cancelled" in refused.message, refused
    assert _nothing_out(lab, lease_id)


def test_a_slice_deleted_during_its_slot_stages_out_what_its_agent_set_up(lab: Lab, tmp_path: Path) -> None:
    client, store = _agent(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))
    lease_id = _lease_id(lab)
    assert _put(client, lease_id, "during.txt", b"running") == 200  # provisioned, in its slot
    client.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})
    slice_client, cred = slice_call(lab)
    assert slice_client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0
    # The agent tears it down and sends ~/stage-out back (test_agent_process: the slice deleted).
    assert _put(client, lease_id, "after.txt", b"deleted") == 200
    assert [f.name for f in store.list(lease_id, "pc1", "out")] == ["after.txt", "during.txt"]


def test_stage_out_closes_a_grace_after_the_end(lab: Lab, tmp_path: Path) -> None:
    client, store = _agent(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))
    lease_id = _lease_id(lab)
    client.call("PUT", f"work/{lease_id}", {"state": "started", "message": ""})

    def ended(ago: timedelta) -> None:
        """The lease's slot (an hour) is over since ``ago``, as the calendar's sweep leaves it (ended)."""
        end_s = int((utcnow() - ago).timestamp())
        with lab.aggregate.database.write() as session:
            session.execute(update(Lease).where(Lease.id == lease_id).values(start_s=end_s - 3600, end_s=end_s))
            session.execute(update(Lease).where(Lease.id == lease_id).values(state="ended"))
            session.execute(update(Sliver).where(Sliver.lease_id == lease_id).values(start_s=end_s - 3600, end_s=end_s))

    ended(timedelta(minutes=30))  # within the grace (3600 s by default)
    assert _put(client, lease_id, "late.txt", b"late") == 200
    ended(timedelta(hours=2))
    refused = _refusal(client, lease_id, "too-late.txt", b"too late")
    assert refused.status == 409 and "is over" in refused.message and "stage_out_grace_s" in refused.message
    assert [f.name for f in store.list(lease_id, "pc1", "out")] == ["late.txt"]
    # A file kept within the grace, sent again after it (the first answer lost on the way): answered, not refused.
    assert _put(client, lease_id, "late.txt", b"late") == 200
    assert _put(client, lease_id, "late.txt", b"other") == 409  # (another content under the name is not kept)


def test_an_agent_keeps_on_the_node_what_the_server_refused_before_the_account_goes(lab: Lab, tmp_path: Path) -> None:
    """An agent whose node came back after the lease's grace was refused (409, final), then removed the account and
    its home: the experimenter's ~/stage-out results were destroyed. Refused files are kept in the agent's own state
    folder (root's only) first, and the lease's report says where."""
    from sfa_omf.agents.node import UNSENT, Agent, StageOut

    client, _ = _agent(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))
    lease_id = _lease_id(lab)
    with lab.aggregate.database.write() as session:  # the lease is over, its grace too
        ended_s = int((utcnow() - timedelta(hours=3)).timestamp())
        session.execute(update(Lease).where(Lease.id == lease_id).values(start_s=ended_s - 3600, end_s=ended_s))
        session.execute(update(Sliver).where(Sliver.lease_id == lease_id).values(start_s=ended_s - 3600, end_s=ended_s))

    class Home:
        """The node's host as far as a stage-out reads it: one login whose ~/stage-out holds the results (the host's
        real file reading is tested in tests/agents/test_host.py; here it is the agent's handling of the refusal)."""

        def read_files(self, login: str, folder: str, max_bytes: int) -> list[tuple[str, bytes]]:
            return [("results.csv", b"1,2,3\n"), (".hidden data", b"x")]

    agent = Agent.__new__(Agent)  # (its state folder and client; no enrolment round needed)
    agent.state, agent.client, agent.host = tmp_path / "a1", client, Home()  # type: ignore[assignment]
    result: StageOut = agent._stage_out(lease_id, ["ann"], 1 << 20)
    assert not result.pending and len(result.lost) == 2
    kept = tmp_path / "a1" / UNSENT / lease_id
    assert sorted(path.name for path in kept.iterdir()) == ["_.hidden_data", "results.csv"]
    assert (kept / "results.csv").read_bytes() == b"1,2,3\n"
    assert os.stat(kept).st_mode & 0o777 == 0o700 and os.stat(kept / "results.csv").st_mode & 0o777 == 0o600
    assert all("kept on the node in" in entry for entry in result.lost), result.lost


def test_at_most_max_stage_out_files_per_lease_and_node(lab: Lab, tmp_path: Path) -> None:
    _configure(lab, max_stage_out_files=3)
    client, store = _agent(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))
    lease_id = _lease_id(lab)
    for number in range(3):
        assert _put(client, lease_id, f"f{number}.bin", b"%d" % number) == 200
    refused = _refusal(client, lease_id, "f3.bin", b"3")
    assert refused.status == 413, refused
    assert "3 files" in refused.message and "max_stage_out_files 3" in refused.message
    assert _put(client, lease_id, "f0.bin", b"0") == 200  # the same file again: changes nothing, refused for nothing
    assert [f.name for f in store.list(lease_id, "pc1", "out")] == ["f0.bin", "f1.bin", "f2.bin"]
    assert sorted(os.listdir(lab.directory / "agent_files" / lease_id / "pc1" / "out")) == [
        "f0.bin", "f0.bin.sha256", "f1.bin", "f1.bin.sha256", "f2.bin", "f2.bin.sha256",
    ]  # fmt: skip


def test_at_most_max_stage_out_bytes_per_lease_and_node(lab: Lab, tmp_path: Path) -> None:
    _configure(lab, max_stage_out_bytes=1000)
    client, store = _agent(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))
    lease_id = _lease_id(lab)
    assert _put(client, lease_id, "a.bin", b"a" * 600) == 200
    refused = _refusal(client, lease_id, "b.bin", b"b" * 500)
    assert refused.status == 413, refused
    assert "600 bytes" in refused.message and "1000" in refused.message and "max_stage_out_bytes" in refused.message
    assert _put(client, lease_id, "b.bin", b"b" * 400) == 200  # exactly the limit
    # A file kept again in place (its .sha256 lost in a crash) counts the difference, none: not refused.
    (lab.directory / "agent_files" / lease_id / "pc1" / "out" / "a.bin.sha256").unlink()
    assert _put(client, lease_id, "a.bin", b"a" * 600) == 200
    assert [(f.name, f.size) for f in store.list(lease_id, "pc1", "out")] == [("a.bin", 600), ("b.bin", 400)]


def test_a_stage_out_never_takes_the_data_directorys_reserve(lab: Lab, tmp_path: Path) -> None:
    status = os.statvfs(lab.directory)
    free = status.f_bavail * status.f_frsize
    reserve = free + 1024**4  # more than is free: no disk has to be filled
    _configure(lab, min_free_bytes=reserve)
    client, _ = _agent(lab, tmp_path)
    book_now(lab, ssh_key("ann@laptop"))
    lease_id = _lease_id(lab)
    refused = _refusal(client, lease_id, "a.bin", b"a" * 10)
    assert refused.status == 503, refused  # the agent sends it again later (5xx)
    assert f"reserve of {reserve} bytes" in refused.message and "min_free_bytes" in refused.message
    assert _nothing_out(lab, lease_id)
    # The operator frees space (here: lowers the reserve); the file is taken.
    lab.settings = dataclasses.replace(lab.settings, agent_min_free_bytes=1)
    lab.restart()
    assert _put(client, lease_id, "a.bin", b"a" * 10) == 200
