"""Stage-out at a lease's end whatever the users left in ~/stage-out (real TLS on loopback, a throwaway host root):
names that are not URL-safe, names the aggregate does not keep, a server that fails a PUT, an answer that is not
JSON, and a name ending in a newline."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import KEY, NOT_JSON, Agent, AgentCallError, Client, enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.errors import GeniError
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, SLICE, book_now, slice_call
from tests.sshkeys import ssh_key

#: Names a user may well give a file, which the aggregate does not keep (staging.check_name): not sent, logged.
UNKEPT_NAMES = ("my results.txt", "résultats.txt", "a?b#c%d.txt")


class Node:
    """An enrolled pc1 whose agent has set up ann's booked lease (one round), with its host and the lease."""

    def __init__(self, lab: Lab, tmp_path: Path, stage_out_rounds: int = 20) -> None:
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
        self.key = ssh_key("ann@laptop")
        book_now(lab, self.key)
        (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
        self.lease_id = lease.id
        self.host = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "a1"))
        self.agent = Agent(str(tmp_path / "a1"), self.host, interval_s=0, stage_out_rounds=stage_out_rounds)
        self.agent.run_once()
        (account,) = lab.aggregate.local_accounts(SLICE)
        self.login = account.login
        assert self.key in self.host.authorized_keys(self.login)
        self.stage_out = tmp_path / "root" / "home" / self.login / "stage-out"
        self.stage_out.mkdir()
        self.store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
        self.client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)

    def is_gone(self) -> bool:
        """The lease's account and key are no longer on the node."""
        return self.host.logins() == [] and self.host.authorized_keys(self.login) == ""


def _end_lease(lab: Lab) -> None:
    client, cred = slice_call(lab)
    assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0


def test_names_that_are_not_url_safe_are_quoted_on_the_wire(lab: Lab, tmp_path: Path) -> None:
    node = Node(lab, tmp_path)
    for name in UNKEPT_NAMES:
        # The request reaches the server (which answers in its words) instead of failing in http.client.
        with pytest.raises(AgentCallError) as refused:
            node.client.put_file(node.lease_id, name, b"42\n")
        assert refused.value.status == 400 and "not a file name" in refused.value.message
        with pytest.raises(AgentCallError) as refused:
            node.client.get_file(node.lease_id, name)
        assert refused.value.status == 400 and "not a file name" in refused.value.message
    assert node.store.list(node.lease_id, "pc1", "out") == []


def test_unkept_names_do_not_keep_the_account_after_the_lease(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(lab, tmp_path)
    for name in UNKEPT_NAMES:
        (node.stage_out / name).write_bytes(b"42\n")
    (node.stage_out / "zz-result.txt").write_bytes(b"kept\n")  # sorted after them: still sent
    _end_lease(lab)
    with caplog.at_level(logging.WARNING, logger="sfa_omf.agent"):
        node.agent.run_once()
    assert node.is_gone(), "the first round after the lease's end takes its account and key away"
    kept = node.store.list(node.lease_id, "pc1", "out")
    assert [(file.name, file.sha256) for file in kept] == [("zz-result.txt", hashlib.sha256(b"kept\n").hexdigest())]
    # The operator's log and the lease's "ended" report name each file not staged out.
    lost, state, message = lab.agents.node_health(NODE, node.lease_id) or (True, "", "")
    assert (lost, state) == (False, "ended")
    for name in UNKEPT_NAMES:
        assert any(name in record.getMessage() for record in caplog.records), name
        assert f"{node.login}/stage-out/{name}" in message, message
    assert "zz-result.txt" not in message


def _ended_with_a_file_the_server_cannot_keep(lab: Lab, node: Node) -> Path:
    """``result.txt`` in the node's ~/stage-out, a plain file where the server's folder for it goes (the server
    answers its PUT 500: a failure, not a refusal), and the lease ended. The obstacle's path."""
    (node.stage_out / "result.txt").write_bytes(b"42\n")
    obstacle = lab.directory / "agent_files" / node.lease_id / "pc1" / "out"
    obstacle.parent.mkdir(parents=True)
    obstacle.write_bytes(b"")
    _end_lease(lab)
    return obstacle


def test_a_failed_put_keeps_the_account_until_the_file_is_staged_out(lab: Lab, tmp_path: Path) -> None:
    node = Node(lab, tmp_path)
    obstacle = _ended_with_a_file_the_server_cannot_keep(lab, node)
    node.agent.run_once()
    assert node.host.logins() == [node.login] and (node.stage_out / "result.txt").exists()
    assert lab.agents.node_health(NODE, node.lease_id) != (False, "ended", "")
    obstacle.unlink()
    node.agent.run_once()
    assert node.is_gone()
    assert node.store.get(node.lease_id, "pc1", "out", "result.txt") == (b"42\n", hashlib.sha256(b"42\n").hexdigest())
    assert lab.agents.node_health(NODE, node.lease_id) == (False, "ended", "")


def test_a_stage_out_that_keeps_failing_ends_the_lease_after_its_rounds(lab: Lab, tmp_path: Path) -> None:
    node = Node(lab, tmp_path, stage_out_rounds=2)
    _ended_with_a_file_the_server_cannot_keep(lab, node)
    node.agent.run_once()
    assert node.host.logins() == [node.login]
    node.agent.run_once()
    assert node.is_gone(), "the users' access does not outlive the lease for ever"
    lost, state, message = lab.agents.node_health(NODE, node.lease_id) or (True, "", "")
    assert (lost, state) == (False, "ended") and f"{node.login}/stage-out/result.txt" in message, message


def test_an_answer_that_is_not_json_is_no_success() -> None:
    # What the XML-RPC side answered (200) to a body over its request limit.
    fault = b"<?xml version='1.0'?><methodResponse><fault>...</fault></methodResponse>"
    for status in (200, 413, 502):
        with pytest.raises(AgentCallError) as failed:
            Client._decode(status, fault)
        assert (failed.value.status, failed.value.reason) == (status, NOT_JSON)
    with pytest.raises(AgentCallError):
        Client._decode(200, b"\xff\xfe")
    with pytest.raises(AgentCallError):
        Client._decode(200, b"[1]")
    assert Client._decode(200, b'{"changed": true}') == {"changed": True}


def test_a_file_over_the_request_limit_is_never_falsely_staged_out(lab: Lab, tmp_path: Path) -> None:
    # The operator allows staged files above the XML-RPC request limit (4 MiB by default).
    lab.settings = replace(lab.settings, agent_max_file_bytes=8 << 20)
    lab.restart()
    node = Node(lab, tmp_path)
    data = b"r" * (5 << 20)
    try:
        node.client.put_file(node.lease_id, "results.bin", data)
    except AgentCallError:  # refused or not understood: the agent knows it, keeps the account and tries again
        assert node.store.list(node.lease_id, "pc1", "out") == []
    else:  # a success is one only when the file is kept
        assert node.store.get(node.lease_id, "pc1", "out", "results.bin")[0] == data


def test_a_name_or_lease_with_a_trailing_newline_is_refused(lab: Lab, tmp_path: Path) -> None:
    node = Node(lab, tmp_path)
    data = b"x"
    sha256 = hashlib.sha256(data).hexdigest()
    status, raw, _ = node.client._exchange(
        "PUT", f"files/{node.lease_id}/out/evil.sha256%0A", data, {"x-content-sha256": sha256}
    )
    assert status == 400 and b"not a file name" in raw, raw
    assert not (lab.directory / "agent_files" / node.lease_id).exists()
    for lease_id, hostname, name in (
        (f"{node.lease_id}\n", "pc1", "a.txt"),
        (node.lease_id, "pc1\n", "a.txt"),
        (node.lease_id, "pc1", "a.txt\n"),
    ):
        with pytest.raises(GeniError):
            node.store.put(lease_id, hostname, "out", name, data, sha256)
    with pytest.raises(GeniError):
        node.store.put(node.lease_id, "pc1", "out", "a.txt", data, f"{sha256}\n")
    files = lab.directory / "agent_files"
    assert not files.exists() or list(files.iterdir()) == []
