"""A revoked node's tunnel that is up ends soon, with real OpenVPN (Debian) in network namespaces: OpenVPN checks the
CRL only at a handshake, and with its defaults (reneg-sec and tran-window an hour each) a removed node kept sending and
receiving at its VPN address for up to two hours, while its number could go to a new node. The server configuration
renegotiates often and lets the old key go soon (here a few seconds instead of the minute each of the real one): the
renegotiations keep a valid node's tunnel up, and the revoked node's first one after its revocation fails and ends
its tunnel.

Needs root, ``ip netns`` and openvpn (scripts/test.sh installs it and sets SFA_OMF_TEST_NETNS=1)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.agents.vpn import SERVER_ADDRESS as VPN_SERVER
from sfa_omf.agents.vpn import VpnCa, client_config
from sfa_omf.trust.pki import new_private_key, private_key_pem
from tests.agents.conftest import SERVER_ADDRESS
from tests.agents.test_agent_process import eventually
from tests.agents.test_vpn import ECHO_CLIENT, ECHO_PORT, ECHO_SERVER

PORT = 1194
RENEGOTIATION_S = 3
KEY_TRANSITION_S = 3


def test_a_revoked_nodes_tunnel_ends_at_its_next_renegotiation(
    namespaces: tuple[str, str, str], tmp_path: Path
) -> None:
    if shutil.which("openvpn") is None:
        pytest.fail("openvpn is not installed: scripts/test.sh installs it (apt-get install openvpn)")
    server_ns, agent_ns, _ = namespaces
    ca = VpnCa(str(tmp_path / "vpn"), "lab")  # SQLite's file-only VPN: what the server's OpenVPN reads is the same
    key = new_private_key()
    key_path = tmp_path / "node.key"
    key_path.write_bytes(private_key_pem(key))
    key_path.chmod(0o600)
    certificate, _ = ca.issue("far1", 1, key.public_key(), lambda: True)
    server_conf, client_conf = tmp_path / "server.conf", tmp_path / "client.conf"
    server_conf.write_text(ca.server_config(SERVER_ADDRESS, PORT, RENEGOTIATION_S, KEY_TRANSITION_S))
    client_conf.write_text(client_config(SERVER_ADDRESS, PORT, ca.ca_pem, certificate, str(key_path)))
    server_log = tmp_path / "openvpn-server.log"
    processes: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], log: str) -> None:
        handle = open(tmp_path / log, "wb")  # noqa: SIM115
        processes.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT))

    def tunnel_answers() -> bool:
        echo = ["ip", "netns", "exec", agent_ns, sys.executable, "-c", ECHO_CLIENT, str(VPN_SERVER), str(ECHO_PORT)]
        return subprocess.run(echo, capture_output=True, text=True).stdout.strip() == "over the tunnel:hi"

    try:
        start(["ip", "netns", "exec", server_ns, "openvpn", "--config", str(server_conf)], "openvpn-server.log")
        start(
            ["ip", "netns", "exec", server_ns, sys.executable, "-c", ECHO_SERVER, str(VPN_SERVER), str(ECHO_PORT)],
            "echo.log",
        )
        start(["ip", "netns", "exec", agent_ns, "openvpn", "--config", str(client_conf)], "openvpn-client.log")
        eventually(tunnel_answers, "the node reaches the server's VPN address through the tunnel")
        # Renegotiations started by the server (the client's configuration keeps OpenVPN's hour), each old key let go
        # a few seconds later: the valid node's tunnel stays up through them.
        eventually(lambda: server_log.read_text().count("TLS: soft reset") >= 2, "two renegotiations")
        eventually(tunnel_answers, "the tunnel still carries traffic after renegotiations")
        assert "certificate revoked" not in server_log.read_text()

        assert ca.revoke_node("far1")  # the client keeps running: its tunnel is up

        eventually(lambda: "certificate revoked" in server_log.read_text(), "the renegotiation meets the CRL")
        eventually(lambda: not tunnel_answers(), "the revoked node's tunnel no longer carries traffic")
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
