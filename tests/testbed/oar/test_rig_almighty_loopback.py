"""The test rig's OAR server (Almighty, scripts/oar.sh) is reachable from this machine only.

Almighty listens on every address (OAR 2.5.9 has no setting for its address), so scripts/oar.sh keeps its port to
loopback with an nftables table. Here a network namespace joined to this one by a veth pair (a private range of the
test's own) stands for another machine: its connection to Almighty's port is refused, while its connection to a
listener of the test's own on the same address goes through (the path works; only Almighty's port is closed).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.requirements import missing

HOST_ADDRESS, OTHER_MACHINE_ADDRESS = "10.223.0.1", "10.223.0.2"
ALMIGHTY_PORT = 6666  # scripts/oar.sh's ALMIGHTY_PORT

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
except ConnectionRefusedError:
    print("refused")
else:
    print("connected")
"""


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"


@pytest.fixture
def other_machine(oar_url: str) -> Iterator[str]:
    """A namespace whose veth pair's other end is in this one (HOST_ADDRESS here, OTHER_MACHINE_ADDRESS there)."""
    if not os.environ.get("SFA_OMF_TEST_NETNS"):
        missing(
            "SFA_OMF_TEST_NETNS is not set: scripts/test.sh checks for root and ip netns and sets it",
            "network namespaces not enabled: run as root with SFA_OMF_TEST_NETNS=1 (scripts/test.sh does)",
        )
    tag = secrets.token_hex(3)
    namespace, host_link, other_link = f"sfaoar{tag}", f"ho{tag}", f"oo{tag}"
    run("ip", "netns", "add", namespace)
    try:
        run("ip", "link", "add", host_link, "type", "veth", "peer", "name", other_link)
        run("ip", "link", "set", other_link, "netns", namespace)
        run("ip", "address", "add", f"{HOST_ADDRESS}/30", "dev", host_link)
        run("ip", "link", "set", host_link, "up")
        run("ip", "-n", namespace, "address", "add", f"{OTHER_MACHINE_ADDRESS}/30", "dev", other_link)
        run("ip", "-n", namespace, "link", "set", other_link, "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # takes both ends of the pair
        subprocess.run(["ip", "link", "del", host_link], capture_output=True)  # (if the move into it failed)


def connect_from(namespace: str, port: int) -> str:
    """'connected' or 'refused': a TCP connection from ``namespace`` to this machine's HOST_ADDRESS:port."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "python3", "-c", CONNECT, HOST_ADDRESS, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_almighty_refuses_another_machine_and_answers_this_one(other_machine: str) -> None:
    with socket.create_server((HOST_ADDRESS, 0)) as listener:
        assert connect_from(other_machine, listener.getsockname()[1]) == "connected"
    assert connect_from(other_machine, ALMIGHTY_PORT) == "refused"
    with socket.create_connection(("127.0.0.1", ALMIGHTY_PORT), timeout=10):
        pass  # loopback: oarsub (through the API) reaches Almighty this way
