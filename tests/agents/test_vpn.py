"""The nodes' VPN with real OpenVPN (Debian) in network namespaces this test makes: the agent gets a client
certificate for its own key through the agent API (CSR in, certificate out) and a ready configuration, the tunnel
comes up at the node's fixed address and carries traffic, and a revoked certificate no longer opens it (CRL).

Needs root, ``ip netns`` and openvpn (scripts/test.sh installs it and sets SFA_OMF_TEST_NETNS=1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.agents.vpn import SERVER_ADDRESS as VPN_SERVER
from sfa_omf.agents.vpn import node_address
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from tests.agents.conftest import AGENT_ADDRESS, SERVER_ADDRESS, run
from tests.agents.test_agent_process import eventually

REPO = Path(__file__).resolve().parents[2]
NODE = "urn:publicid:IDN+lab+node+far1"
ECHO_PORT = 7007
WALLED_ADDRESS = "10.218.2.2"
# Binds once the address exists: it is the tunnel's, which appears only when openvpn has set up its device (the
# echo server is started right after openvpn, and lost that race on a busy machine).
ECHO_SERVER = (
    "import socket,sys,time\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "for _ in range(900):\n"
    "    try:\n"
    "        s.bind((sys.argv[1], int(sys.argv[2]))); break\n"
    "    except OSError:\n"
    "        time.sleep(0.1)\n"
    "s.listen()\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'over the tunnel:'+c.recv(100)); c.close()\n"
)
ECHO_CLIENT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); c.sendall(b'hi')\n"
    "print(c.recv(100).decode())\n"
)


def sfa_omf(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, sys.executable, "-m", "sfa_omf.cli", *args]


def test_a_node_joins_the_vpn_at_its_address_and_is_revoked(namespaces: tuple[str, str, str], tmp_path: Path) -> None:
    if shutil.which("openvpn") is None:
        pytest.fail("openvpn is not installed: scripts/test.sh installs it (apt-get install openvpn)")
    server_ns, agent_ns, _ = namespaces
    init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = str(tmp_path / "lab" / "sfa-omf.conf")
    environ = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        SFA_AGGREGATE_HOST=SERVER_ADDRESS,
        SFA_REGISTRY_HOST=SERVER_ADDRESS,
        SFA_AGENTS_VPN_REMOTE=SERVER_ADDRESS,
    )
    settings = read_config(config, environ)
    database = Database(settings.calendar_url)
    database.upgrade()
    token = Agents(database).create_token("default", 600)[0]
    processes: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], log: str) -> subprocess.Popen[bytes]:
        handle = open(tmp_path / log, "wb")  # noqa: SIM115
        process = subprocess.Popen(command, env=environ, stdout=handle, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    try:
        start(sfa_omf(server_ns, "serve", "--config", config), "server.log")
        state = str(tmp_path / "state")
        url = f"https://{SERVER_ADDRESS}:{settings.aggregate_port}/"
        enrol = sfa_omf(agent_ns, "agent", "enrol", "--server", url, "--token", token, "--root")
        enrol += [str(tmp_path / "lab" / "authority" / "lab.gid"), "--state", state, "--hostname", "far1"]
        eventually(lambda: subprocess.run(enrol, env=environ, capture_output=True).returncode == 0, "enrolment")
        asked = subprocess.run(sfa_omf(agent_ns, "agent", "vpn", "--state", state), env=environ, capture_output=True)
        assert asked.returncode == 0, asked.stderr
        address = str(node_address(Agents(database).node_number(NODE)))
        assert f"VPN address {address}" in asked.stdout.decode()
        client_conf = Path(state) / "vpn.conf"
        assert "BEGIN RSA PRIVATE KEY" not in client_conf.read_text()  # the key stays in its own file

        server_conf = tmp_path / "server.conf"
        made = subprocess.run(
            sfa_omf(server_ns, "node", "vpn-config", "--listen", SERVER_ADDRESS, "--config", config),
            env=environ,
            capture_output=True,
        )
        assert made.returncode == 0, made.stderr
        server_conf.write_bytes(made.stdout)
        start(["ip", "netns", "exec", server_ns, "openvpn", "--config", str(server_conf)], "openvpn-server.log")
        start(
            ["ip", "netns", "exec", server_ns, sys.executable, "-c", ECHO_SERVER, str(VPN_SERVER), str(ECHO_PORT)],
            "echo.log",
        )
        client = start(["ip", "netns", "exec", agent_ns, "openvpn", "--config", str(client_conf)], "openvpn-1.log")

        def tunnel_answers() -> bool:
            echo = ["ip", "netns", "exec", agent_ns, sys.executable, "-c", ECHO_CLIENT, str(VPN_SERVER), str(ECHO_PORT)]
            done = subprocess.run(echo, capture_output=True, text=True)
            return done.stdout.strip() == "over the tunnel:hi"

        eventually(tunnel_answers, "the node reaches the server's VPN address through the tunnel")
        shown = subprocess.run(["ip", "-n", agent_ns, "-4", "address", "show"], capture_output=True, text=True)
        assert f"inet {address}/16" in shown.stdout
        assert AGENT_ADDRESS in shown.stdout

        # Revoked: the next connection with that certificate is refused by the server (CRL).
        client.send_signal(signal.SIGTERM)
        client.wait(timeout=30)
        revoked = subprocess.run(
            sfa_omf(server_ns, "node", "vpn-revoke", "far1", "--config", config), env=environ, capture_output=True
        )
        assert revoked.returncode == 0, revoked.stderr
        start(["ip", "netns", "exec", agent_ns, "openvpn", "--config", str(client_conf)], "openvpn-2.log")
        server_log = tmp_path / "openvpn-server.log"
        eventually(lambda: "certificate revoked" in server_log.read_text(), "the server refuses the revoked node")
        assert not tunnel_answers()
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        database.dispose()


def test_a_node_behind_a_firewall_is_reached_over_the_vpn(namespaces: tuple[str, str, str], tmp_path: Path) -> None:
    """A third namespace, 'behind a firewall': it can reach the aggregate's address but nothing can reach it (no
    route in, no forwarding). The other node reaches it over the VPN, at its fixed address, and not otherwise."""
    if shutil.which("openvpn") is None:
        pytest.fail("openvpn is not installed: scripts/test.sh installs it (apt-get install openvpn)")
    server_ns, open_ns, _ = namespaces
    walled_ns = server_ns.replace("sfa18s", "sfa18f")
    link = server_ns.replace("sfa18s", "f18")
    run("ip", "netns", "add", walled_ns)
    processes: list[subprocess.Popen[bytes]] = []
    database: Database | None = None
    try:
        run("ip", "link", "add", link, "type", "veth", "peer", "name", link + "x")
        run("ip", "link", "set", link, "netns", server_ns)
        run("ip", "link", "set", link + "x", "netns", walled_ns)
        run("ip", "-n", server_ns, "address", "add", "10.218.2.1/24", "dev", link)
        run("ip", "-n", walled_ns, "address", "add", WALLED_ADDRESS + "/24", "dev", link + "x")
        for namespace, name in ((server_ns, link), (walled_ns, link + "x"), (walled_ns, "lo")):
            run("ip", "-n", namespace, "link", "set", name, "up")
        # Out, to the aggregate's address only (its host accepts it on any of its links); nothing comes in.
        run("ip", "-n", walled_ns, "route", "add", f"{SERVER_ADDRESS}/32", "via", "10.218.2.1")

        init_directory(str(tmp_path / "lab"), "lab", ("ann",))
        config = str(tmp_path / "lab" / "sfa-omf.conf")
        environ = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            SFA_AGGREGATE_HOST=SERVER_ADDRESS,
            SFA_REGISTRY_HOST=SERVER_ADDRESS,
            SFA_AGENTS_VPN_REMOTE=SERVER_ADDRESS,
        )
        settings = read_config(config, environ)
        database = Database(settings.calendar_url)
        database.upgrade()

        def start(command: list[str], log: str) -> None:
            handle = open(tmp_path / log, "wb")  # noqa: SIM115
            processes.append(subprocess.Popen(command, env=environ, stdout=handle, stderr=subprocess.STDOUT))

        start(sfa_omf(server_ns, "serve", "--config", config), "server.log")
        made = subprocess.run(
            sfa_omf(server_ns, "node", "vpn-config", "--listen", SERVER_ADDRESS, "--config", config),
            env=environ,
            capture_output=True,
        )
        assert made.returncode == 0, made.stderr
        (tmp_path / "server.conf").write_bytes(made.stdout)
        start(["ip", "netns", "exec", server_ns, "openvpn", "--config", str(tmp_path / "server.conf")], "ovpn.log")
        url = f"https://{SERVER_ADDRESS}:{settings.aggregate_port}/"
        root = str(tmp_path / "lab" / "authority" / "lab.gid")
        addresses = {}
        for namespace, hostname in ((open_ns, "open1"), (walled_ns, "walled1")):
            state = str(tmp_path / hostname)
            token = Agents(database).create_token("default", 600)[0]
            enrol = sfa_omf(namespace, "agent", "enrol", "--server", url, "--token", token, "--root", root)
            enrol += ["--state", state, "--hostname", hostname]
            eventually(lambda enrol=enrol: subprocess.run(enrol, env=environ).returncode == 0, f"{hostname} enrols")
            asked = subprocess.run(sfa_omf(namespace, "agent", "vpn", "--state", state), env=environ)
            assert asked.returncode == 0
            addresses[hostname] = str(
                node_address(Agents(database).node_number(f"urn:publicid:IDN+lab+node+{hostname}"))
            )
            start(["ip", "netns", "exec", namespace, "openvpn", "--config", f"{state}/vpn.conf"], f"{hostname}.log")
        walled_vpn = addresses["walled1"]
        eventually(
            lambda: f"inet {walled_vpn}/" in subprocess.run(
                ["ip", "-n", walled_ns, "-4", "address"], capture_output=True, text=True
            ).stdout,
            "the walled node's tunnel is up",
        )  # fmt: skip
        start(
            ["ip", "netns", "exec", walled_ns, sys.executable, "-c", ECHO_SERVER, walled_vpn, str(ECHO_PORT)], "e.log"
        )

        def reach(address: str) -> bool:
            echo = ["ip", "netns", "exec", open_ns, sys.executable, "-c", ECHO_CLIENT, address, str(ECHO_PORT)]
            return subprocess.run(echo, capture_output=True, text=True).stdout.strip() == "over the tunnel:hi"

        eventually(lambda: reach(walled_vpn), "the open node reaches the walled one over the VPN")
        assert not reach(WALLED_ADDRESS)  # and there is no way in otherwise
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        if database is not None:
            database.dispose()
        subprocess.run(["ip", "netns", "del", walled_ns], capture_output=True)
