"""DNS names that follow the nodes, with a real bind9 (Debian) in network namespaces this test makes: 50 agents
registering at once leave every view with 50 correct records and a valid serial; from the nodes' LAN a name is the
node's local address, from the VPN's addresses its VPN address, and to a node of the same LAN group (asking over
the VPN) its local address.

Needs root, ``ip netns`` and bind9 (scripts/test.sh installs it and sets SFA_OMF_TEST_NETNS=1)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.agents.dns import DnsZones
from sfa_omf.agents.vpn import SERVER_ADDRESS as VPN_SERVER
from sfa_omf.agents.vpn import node_address
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from tests.agents.conftest import SERVER_ADDRESS, run
from tests.agents.test_agent_process import eventually

REPO = Path(__file__).resolve().parents[2]
ZONE = "nodes.lab"
AGENTS = 50
RNDC_PORT = 9530
# 50 agents in the agent namespace enrol at the same moment (one process, one thread each, released together).
ENROL_AT_ONCE = """
import json, sys, threading
from pathlib import Path
from sfa_omf.agents.node import KEY, enrol
url, root, folder, tokens = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
key = (folder / "shared.pkey").read_bytes()
barrier = threading.Barrier(len(tokens))
failures = []
def one(number, token):
    state = folder / f"n{number}"
    state.mkdir()
    (state / KEY).write_bytes(key)
    barrier.wait()
    try:
        enrol(url, token, root, str(state), f"n{number}", f"192.168.50.{number + 1}", "lan-" + "ab"[number % 2])
    except Exception as exc:
        failures.append(f"n{number}: {exc}")
threads = [threading.Thread(target=one, args=pair) for pair in enumerate(tokens)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(failures))
"""


def dig(namespace: str, name: str, source: str | None = None, kind: str = "A") -> str:
    command = ["ip", "netns", "exec", namespace, "dig", "+short", "+time=2", "+tries=2", f"@{SERVER_ADDRESS}"]
    command += ["-b", source] if source else []
    done = subprocess.run([*command, name, kind], capture_output=True, text=True)
    return done.stdout.strip()


def test_fifty_agents_at_once_are_named_in_every_view(namespaces: tuple[str, str, str], tmp_path: Path) -> None:
    if shutil.which("named") is None or shutil.which("dig") is None:
        pytest.fail("bind9 is not installed: scripts/test.sh installs it (apt-get install bind9 bind9-dnsutils)")
    server_ns, agent_ns, _ = namespaces
    # The server namespace also holds the VPN server's address, so that queries can come from the VPN's range.
    run("ip", "-n", server_ns, "address", "add", f"{VPN_SERVER}/32", "dev", "lo")
    init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    dns_dir = tmp_path / "lab" / "dns"
    run("rndc-confgen", "-a", "-k", "rndc-key", "-c", str(tmp_path / "rndc.key"))
    key = (tmp_path / "rndc.key").read_text()
    (tmp_path / "rndc.conf").write_text(
        key + f'options {{ default-key "rndc-key"; default-server 127.0.0.1; default-port {RNDC_PORT}; }};\n'
    )
    config = str(tmp_path / "lab" / "sfa-omf.conf")
    environ = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        SFA_AGGREGATE_HOST=SERVER_ADDRESS,
        SFA_REGISTRY_HOST=SERVER_ADDRESS,
        SFA_AGENTS_DNS_ZONE=ZONE,
        SFA_AGENTS_DNS_RELOAD=f"rndc -c {tmp_path / 'rndc.conf'} reload",
    )
    settings = read_config(config, environ)
    DnsZones(str(dns_dir), ZONE, []).publish([])  # the zone files named starts with
    views = subprocess.run(
        [sys.executable, "-m", "sfa_omf.cli", "node", "dns-config", "--config", config],
        env=environ,
        capture_output=True,
        text=True,
    )
    assert views.returncode == 0, views.stderr
    (tmp_path / "named.conf").write_text(
        key
        + f'controls {{ inet 127.0.0.1 port {RNDC_PORT} allow {{ 127.0.0.1; }} keys {{ "rndc-key"; }}; }};\n'
        + f'options {{ directory "{tmp_path}"; pid-file "{tmp_path / "named.pid"}"; '
        + f"listen-on port 53 {{ {SERVER_ADDRESS}; }}; listen-on-v6 {{ none; }}; dnssec-validation no; }};\n"
        + views.stdout
    )
    database = Database(settings.calendar_url)
    database.upgrade()
    tokens = [Agents(database).create_token("default", 600)[0] for _ in range(AGENTS)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command, log in (
            (["named", "-g", "-c", str(tmp_path / "named.conf")], "named.log"),
            ([sys.executable, "-m", "sfa_omf.cli", "serve", "--config", config], "server.log"),
        ):
            handle = open(tmp_path / log, "wb")  # noqa: SIM115
            processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", server_ns, *command], env=environ, stdout=handle, stderr=handle
                )
            )
        eventually(lambda: dig(agent_ns, f"ns.{ZONE}") == str(VPN_SERVER), "named answers")
        url = f"https://{SERVER_ADDRESS}:{settings.aggregate_port}/"
        eventually(
            lambda: (
                subprocess.run(["ip", "netns", "exec", server_ns, "python3", "-c", "1"]).returncode == 0
                and b"serving AM API" in (tmp_path / "server.log").read_bytes()
            ),
            "the aggregate serves",
        )
        from sfa_omf.trust.pki import new_private_key, private_key_pem

        folder = tmp_path / "agents"
        folder.mkdir()
        (folder / "shared.pkey").write_bytes(private_key_pem(new_private_key()))
        root = str(tmp_path / "lab" / "authority" / "lab.gid")
        enrol = [sys.executable, "-c", ENROL_AT_ONCE, url, root, str(folder), json.dumps(tokens)]
        at_once = subprocess.run(
            ["ip", "netns", "exec", agent_ns, *enrol],
            env=environ,
            capture_output=True,
            text=True,
        )
        assert at_once.returncode == 0, at_once.stderr
        assert json.loads(at_once.stdout) == []

        names = Agents(database).names()
        assert len(names) == AGENTS
        serial = (dns_dir / "serial").read_text().strip()
        for zone_file in ("vpn.zone", "local.zone", "lan-lan-a.zone", "lan-lan-b.zone"):
            checked = subprocess.run(
                ["named-checkzone", ZONE, str(dns_dir / zone_file)], capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stdout
        eventually(lambda: dig(agent_ns, ZONE, kind="SOA").split()[2:3] == [serial], "named serves the last serial")
        # Asking over the VPN as node n0 (LAN group lan-a): its group's nodes by local address, the others' by VPN.
        n0 = next(node_id for hostname, node_id, _, _ in names if hostname == "n0")
        run("ip", "-n", server_ns, "address", "add", f"{node_address(n0)}/32", "dev", "lo")
        for hostname, node_id, local_address, group in names:
            number = int(hostname[1:])
            assert (local_address, group) == (f"192.168.50.{number + 1}", "lan-" + "ab"[number % 2])
            vpn_address = str(node_address(node_id))
            # From the nodes' LAN side (the agent namespace): the local address.
            assert dig(agent_ns, f"{hostname}.{ZONE}") == local_address
            # From an address of the VPN: the VPN address.
            assert dig(server_ns, f"{hostname}.{ZONE}", source=str(VPN_SERVER)) == vpn_address
            as_n0 = dig(server_ns, f"{hostname}.{ZONE}", source=str(node_address(n0)))
            assert as_n0 == (local_address if group == "lan-a" else vpn_address), hostname
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        database.dispose()
