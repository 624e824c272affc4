"""Round-trip time over the nodes' VPN (real OpenVPN) against the direct link, between two network namespaces.

Run from the repository root as root (it makes two namespaces joined by a veth pair, 10.218.1.0/24, and removes
them; it needs openvpn from Debian):

    python benchmarks/vpn_rtt.py                   # 2 000 round trips each way of measuring
    python benchmarks/vpn_rtt.py --rounds 500

The VPN is set up exactly as the aggregate does it (sfa_omf/agents/vpn.py: its CA, the server configuration of
``sfa-omf node vpn-config``, a client certificate for a node key and the client configuration of ``sfa-omf agent
vpn``). A UDP echo server in the server namespace listens on the direct address, another on the VPN address; a client in
the node namespace sends ``--rounds`` 64-byte datagrams one after the other to each and times every answer.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sfa_omf.agents.vpn import SERVER_ADDRESS, VpnCa, client_config, node_address  # noqa: E402
from sfa_omf.trust.pki import new_private_key, private_key_pem  # noqa: E402

DIRECT_SERVER, DIRECT_NODE = "10.218.1.1", "10.218.1.2"
PORT = 7008
ECHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(2048); s.sendto(data, peer)\n"
)
PROBE = (
    "import json,socket,sys,time\n"
    "address, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "times=[]\n"
    "for _ in range(rounds):\n"
    "    began=time.perf_counter(); s.sendto(b'x'*64, (address, port)); s.recvfrom(2048)\n"
    "    times.append(time.perf_counter()-began)\n"
    "print(json.dumps(times))\n"
)


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    tag = secrets.token_hex(3)
    server, node = f"vrs{tag}", f"vrn{tag}"
    processes: list[subprocess.Popen[bytes]] = []
    run("ip", "netns", "add", server)
    try:
        run("ip", "netns", "add", node)
        run("ip", "link", "add", f"s{tag}", "type", "veth", "peer", "name", f"n{tag}")
        for namespace, link, address in ((server, f"s{tag}", DIRECT_SERVER), (node, f"n{tag}", DIRECT_NODE)):
            run("ip", "link", "set", link, "netns", namespace)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            run("ip", "-n", namespace, "address", "add", f"{address}/24", "dev", link)
            run("ip", "-n", namespace, "link", "set", link, "up")
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            ca = VpnCa(str(folder / "vpn"), "bench")
            key = new_private_key()
            (folder / "node.pkey").write_bytes(private_key_pem(key))
            os.chmod(folder / "node.pkey", 0o600)
            certificate, address = ca.issue("node1", 1, key.public_key())
            (folder / "server.conf").write_text(ca.server_config(DIRECT_SERVER, 1194))
            (folder / "client.conf").write_text(
                client_config(DIRECT_SERVER, 1194, ca.ca_pem, certificate, str(folder / "node.pkey"))
            )
            for namespace, command in (
                (server, ["openvpn", "--config", str(folder / "server.conf")]),
                (node, ["openvpn", "--config", str(folder / "client.conf")]),
                (server, [sys.executable, "-c", ECHO, DIRECT_SERVER, str(PORT)]),
            ):
                processes.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", namespace, *command],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            for _ in range(600):
                shown = subprocess.run(["ip", "-n", node, "-4", "address"], capture_output=True, text=True).stdout
                if f"inet {address}/" in shown:
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("the tunnel did not come up within 60 s")
            processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", server, sys.executable, "-c", ECHO, str(SERVER_ADDRESS), str(PORT)]
                )
            )
            time.sleep(1)  # let the echo server bind before the first probe (not part of any measurement)
            print("VPN round-trip benchmark (sfa-omf nodes' VPN: OpenVPN, UDP, topology subnet)")
            version = subprocess.run(["openvpn", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
            print(f"  {version[:60]}")
            print(
                f"  cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; {args.rounds} round trips each"
            )
            print("\n| path | destination | median (ms) | p95 (ms) | max (ms) |")
            print("|---|---|---:|---:|---:|")
            for label, destination in (
                ("direct (veth)", DIRECT_SERVER),
                ("VPN (tun over the veth)", str(SERVER_ADDRESS)),
            ):
                probe = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        node,
                        sys.executable,
                        "-c",
                        PROBE,
                        destination,
                        str(PORT),
                        str(args.rounds),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                times = sorted(float(value) * 1000 for value in json.loads(probe.stdout))
                p95 = times[int(0.95 * len(times)) - 1]
                print(f"| {label} | {destination} | {statistics.median(times):.3f} | {p95:.3f} | {times[-1]:.3f} |")
            assert str(node_address(1)) == address
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", node], capture_output=True)
        subprocess.run(["ip", "netns", "del", server], capture_output=True)


if __name__ == "__main__":
    main()
