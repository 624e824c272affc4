"""DNS names that follow the nodes: each agent's node is NAME.<zone> in a real DNS server (bind9 from Debian), in two
views: from inside the VPN the name is the node's VPN address, from elsewhere (the nodes' LANs) its local address.

The calendar is the source of truth: every change rewrites both zone files whole from the list of agents, under an
exclusive file lock, with a serial that only grows, each file written to a temporary name and renamed, and then asks
the server to reload (``[sfa_agents] dns_reload``, ``rndc reload`` by default). Simultaneous registrations therefore
serialise on the lock, and whichever writes last writes every node the calendar holds by then: the zone never loses a
record to a race.

Files, in the zone directory: ``vpn.zone``, ``local.zone``, ``serial`` and ``lock``.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.agents.vpn import NETWORK, SERVER_ADDRESS, node_address
from sfa_omf.errors import GeniError, Reason

TTL_S = 60


@dataclass(frozen=True)
class NodeName:
    hostname: str
    node_id: int
    local_address: str


def _zone(zone: str, serial: int, records: Iterable[tuple[str, str]]) -> str:
    head = [
        f"$ORIGIN {zone}.",
        f"$TTL {TTL_S}",
        f"@ IN SOA ns.{zone}. hostmaster.{zone}. ( {serial} 3600 600 86400 {TTL_S} )",
        f"@ IN NS ns.{zone}.",
        f"ns IN A {SERVER_ADDRESS}",
    ]
    return "\n".join([*head, *(f"{name} IN A {address}" for name, address in records), ""])


class DnsZones:
    """The zone files of ``zone`` in ``directory``; ``reload`` is the command that makes the server read them."""

    def __init__(self, directory: str, zone: str, reload: Sequence[str]) -> None:
        self.directory = Path(directory)
        self.zone = zone.strip(".")
        self.reload = list(reload)
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, directory: str, zone: str, reload: str) -> DnsZones:
        return cls(directory, zone, shlex.split(reload))

    def publish(self, nodes: Sequence[NodeName]) -> int:
        """Rewrite both views from ``nodes`` (all of them) and reload; returns the new serial."""
        with open(self.directory / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time, across threads and processes
            serial_path = self.directory / "serial"
            previous = int(serial_path.read_text()) if serial_path.exists() else 0
            # Date-free but always growing, and at least the clock's seconds so a reset directory still moves on.
            serial = max(previous + 1, int(time.time()) % 2**31)
            ordered = sorted(nodes, key=lambda node: node.hostname)
            vpn = [(node.hostname, str(node_address(node.node_id))) for node in ordered]
            local = [(node.hostname, node.local_address) for node in ordered if node.local_address]
            for name, text in (
                ("vpn.zone", _zone(self.zone, serial, vpn)),
                ("local.zone", _zone(self.zone, serial, local)),
            ):
                temporary = self.directory / f"{name}.tmp"
                temporary.write_text(text)
                os.replace(temporary, self.directory / name)
            temporary = self.directory / "serial.tmp"
            temporary.write_text(f"{serial}\n")
            os.replace(temporary, serial_path)
            if self.reload:
                done = subprocess.run(self.reload, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise GeniError(
                        Reason.UNAVAILABLE,
                        f"the DNS server did not reload the zone {self.zone}: {done.stderr.strip() or done.stdout}",
                    )
            return serial

    def server_config(self) -> str:
        """bind9 views for the zone: the VPN's addresses see VPN addresses, everyone else local addresses."""
        d = self.directory
        return "\n".join(
            [
                f'view "vpn" {{ match-clients {{ {NETWORK}; }}; recursion no;',
                f'  zone "{self.zone}" {{ type primary; file "{d / "vpn.zone"}"; }}; }};',
                'view "local" { match-clients { any; }; recursion no;',
                f'  zone "{self.zone}" {{ type primary; file "{d / "local.zone"}"; }}; }};',
                "",
            ]
        )
