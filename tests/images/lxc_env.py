"""What the tests of real LXC share: the bridge scripts/lxc.sh made (SFA_OMF_TEST_LXC_BRIDGE), its network (read
from the bridge itself, so any range works), SSH key pairs and an ``ssh`` that never asks a question."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from sfa_omf.images.lxc import LxcHost
from tests.requirements import require_all

BRIDGE = os.environ.get("SFA_OMF_TEST_LXC_BRIDGE", "")

# Where every test must run (tests/requirements.py) no skip: bridge() fails instead, saying what is missing.
needs_lxc = pytest.mark.skipif(
    not BRIDGE and not require_all(), reason="LXC not set up: bash scripts/lxc.sh up; SFA_OMF_TEST_LXC_BRIDGE"
)


def bridge() -> str:
    """The bridge, or a failure saying how to get one (on CI the variable must be set: no silent skip)."""
    if not BRIDGE:
        pytest.fail("SFA_OMF_TEST_LXC_BRIDGE is not set: scripts/test.sh runs scripts/lxc.sh up and sets it")
    return BRIDGE


def bridge_network() -> ipaddress.IPv4Interface:
    """The bridge's IPv4 address with its prefix, e.g. 10.217.0.1/24."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", bridge()], capture_output=True, text=True, check=True
    ).stdout.split()
    return ipaddress.IPv4Interface(shown[shown.index("inet") + 1])


def address(host_number: int) -> str:
    """The ``host_number``-th address of the bridge's network, with its prefix (``10.217.0.117/24``)."""
    network = bridge_network().network
    return f"{network.network_address + host_number}/{network.prefixlen}"


def key_pair(directory: Path, name: str) -> tuple[Path, str]:
    private = Ed25519PrivateKey.generate()
    path = directory / name
    path.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    path.chmod(0o600)
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return path, f"{public} {name}"


def ssh(key: Path, host: str, command: str, user: str = "root") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"{user}@{host}", command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def own_lxc_host(tmp_path: Path) -> Iterator[LxcHost]:
    """An LxcHost keeping its containers under ``tmp_path`` (the test's own); every one is destroyed after, whatever
    happened (fixtures ``yield from`` it)."""
    lxc = LxcHost(bridge(), lxc_path=str(tmp_path / "lxc"))
    yield lxc
    for record in lxc.instances():
        lxc.destroy(record.name)
