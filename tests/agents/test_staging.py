"""Stage-in and stage-out of a lease's files over the agent API (real TLS on loopback): checksums, size bound, names,
idempotent PUT, and only for leases on the caller's own node."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from sfa_omf.agents.node import KEY, AgentCallError, Client, enrol
from sfa_omf.agents.staging import FileStore
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, SLICE, book_now, environment, sfa_omf
from tests.sshkeys import ssh_key


def _setup(lab: Lab, tmp_path: Path) -> tuple[Client, str, FileStore]:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    return client, lease.id, store


def test_stage_out_is_checked_kept_and_idempotent(lab: Lab, tmp_path: Path) -> None:
    client, lease_id, store = _setup(lab, tmp_path)
    data = b"results\n" * 100
    assert client.put_file(lease_id, "out.txt", data)["changed"] is True
    assert client.put_file(lease_id, "out.txt", data)["changed"] is False
    assert store.get(lease_id, "pc1", "out", "out.txt") == (data, hashlib.sha256(data).hexdigest())
    # The operator collects it.
    copied = subprocess.run(
        sfa_omf("node", "stage-out", "pc1", lease_id, "--to", str(tmp_path / "got"), "--config", lab.settings_path),
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "got" / "out.txt").read_bytes() == data


def test_bad_stage_outs_are_refused_and_write_nothing(lab: Lab, tmp_path: Path) -> None:
    client, lease_id, store = _setup(lab, tmp_path)
    limit = lab.settings.agent_max_file_bytes
    damaged = client._exchange(
        "PUT", f"files/{lease_id}/out/a.txt", b"abc", {"x-content-sha256": hashlib.sha256(b"abd").hexdigest()}
    )
    assert damaged[0] == 400 and b"not the declared" in damaged[1]
    undeclared = client._exchange("PUT", f"files/{lease_id}/out/a.txt", b"abc", {})
    assert undeclared[0] == 400 and b"SHA-256" in undeclared[1]
    with pytest.raises(AgentCallError) as refused:
        client.put_file(lease_id, "big.bin", b"x" * (limit + 1))
    assert refused.value.status == 413
    # The work answer says the limit, so that the agent does not even read a bigger file (host.py).
    assert client.call("GET", "work")["max_file_bytes"] == limit
    with pytest.raises(AgentCallError) as refused:
        client.put_file(lease_id, ".hidden", b"x")
    assert refused.value.status == 400 and "not a file name" in refused.value.message
    with pytest.raises(AgentCallError) as refused:
        client.put_file("00000000-0000-0000-0000-000000000000", "a.txt", b"x")
    assert refused.value.status == 404
    assert store.list(lease_id, "pc1", "out") == []


def test_stage_in_reaches_only_the_leases_node(lab: Lab, tmp_path: Path) -> None:
    client, lease_id, _ = _setup(lab, tmp_path)
    source = tmp_path / "input.dat"
    source.write_bytes(b"\x00\x01input")
    staged = subprocess.run(
        sfa_omf("node", "stage-in", "pc1", lease_id, str(source), "--config", lab.settings_path),
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert staged.returncode == 0, staged.stderr
    (item,) = client.call("GET", "work")["active"]
    assert item["stage_in"] == [
        {"name": "input.dat", "size": 7, "sha256": hashlib.sha256(b"\x00\x01input").hexdigest()}
    ]
    assert client.get_file(lease_id, "input.dat") == b"\x00\x01input"
    with pytest.raises(AgentCallError) as refused:
        client.get_file(lease_id, "absent.dat")
    assert refused.value.status == 404
    # Another node's agent cannot read it.
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a2"), "pc2")
    other = Client(lab.url, str(tmp_path / "a2" / "node.gid"), str(tmp_path / "a2" / KEY), lab.root)
    with pytest.raises(AgentCallError) as refused:
        other.get_file(lease_id, "input.dat")
    assert refused.value.status == 404 and NODE not in refused.value.message


def test_an_oversized_stage_in_is_refused_and_writes_nothing(lab: Lab, tmp_path: Path) -> None:
    client, lease_id, store = _setup(lab, tmp_path)
    source = tmp_path / "huge.dat"
    source.write_bytes(b"x" * (lab.settings.agent_max_file_bytes + 1))
    staged = subprocess.run(
        sfa_omf("node", "stage-in", "pc1", lease_id, str(source), "--config", lab.settings_path),
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert staged.returncode != 0 and "over the limit" in staged.stderr, staged.stderr
    assert store.list(lease_id, "pc1", "in") == []
    (item,) = client.call("GET", "work")["active"]
    assert item["stage_in"] == []
