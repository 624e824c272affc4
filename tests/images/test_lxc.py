"""Real LXC containers (scripts/lxc.sh installs LXC and makes the project's bridge; CI sets SFA_OMF_TEST_LXC_BRIDGE):
a container launched with a user's key answers SSH with that key and not with another, is listed with its lease,
and is gone after destroy; a container that cannot start is refused with LXC's reason and leaves nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from sfa_omf.cli import main
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.lxc import InstanceSpec, LxcHost

BRIDGE = os.environ.get("SFA_OMF_TEST_LXC_BRIDGE")
LEASE = "0f4b1d2e-aaaa-bbbb-cccc-000000000017"

pytestmark = pytest.mark.skipif(
    not BRIDGE and not os.environ.get("CI"), reason="LXC not set up: bash scripts/lxc.sh up; SFA_OMF_TEST_LXC_BRIDGE"
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LxcHost]:
    if not BRIDGE:
        pytest.fail("SFA_OMF_TEST_LXC_BRIDGE is not set: scripts/test.sh runs scripts/lxc.sh up and sets it")
    lxc = LxcHost(BRIDGE, lxc_path=str(tmp_path / "lxc"))  # containers of this test only
    yield lxc
    for record in lxc.instances():  # nothing outlives the test, whatever happened
        lxc.destroy(record.name)


def key_pair(directory: Path, name: str) -> tuple[Path, str]:
    private = Ed25519PrivateKey.generate()
    path = directory / name
    path.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    path.chmod(0o600)
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return path, f"{public} {name}"


def ssh(key: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{host}", command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_container_answers_ssh_with_the_users_key_and_is_gone_after(
    host: LxcHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice_key, alice_public = key_pair(tmp_path, "alice")
    mallory_key, _ = key_pair(tmp_path, "mallory")
    name = host.name_for(LEASE, 0)
    record = host.launch(InstanceSpec(name, "10.217.0.117/24", (alice_public,)))
    assert (record.state, record.lease_id) == ("RUNNING", LEASE)

    login = ssh(alice_key, "10.217.0.117", "hostname")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == name
    refused = ssh(mallory_key, "10.217.0.117", "hostname")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr

    assert [(r.name, r.state, r.address, r.lease_id) for r in host.instances()] == [
        (name, "RUNNING", "10.217.0.117/24", LEASE)
    ]
    capsys.readouterr()
    assert main(["instance", "list", "--lxc-path", str(host.lxc_path)]) == 0  # what an operator sees
    assert capsys.readouterr().out.splitlines()[1].split() == [name, LEASE, "RUNNING", "10.217.0.117/24"]

    assert host.destroy_lease(LEASE) == [name]
    assert host.instances() == [] and host.state(name) == ""
    assert not (Path(host.lxc_path) / name).exists()
    assert ssh(alice_key, "10.217.0.117", "true").returncode != 0  # nothing answers there any more


def test_a_container_that_cannot_start_is_refused_with_the_reason_and_leaves_nothing(tmp_path: Path) -> None:
    if not BRIDGE:
        pytest.fail("SFA_OMF_TEST_LXC_BRIDGE is not set")
    host = LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc"))  # a bridge that does not exist
    _, public = key_pair(tmp_path, "alice")
    with pytest.raises(GeniError) as failed:
        host.launch(InstanceSpec(host.name_for(LEASE, 1), "10.217.0.118/24", (public,)))
    assert failed.value.code == GeniCode.ERROR
    assert f"container {host.name_for(LEASE, 1)} could not start" in failed.value.message
    assert 'bridge "sfaomf-nobridge", bridge interface doesn\'t exist' in failed.value.message  # LXC's own words
    assert host.instances() == []
