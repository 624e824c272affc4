"""DNS names that follow the nodes: each agent's node is NAME.<zone> in a real DNS server (bind9 from Debian), in
views chosen by who asks:

- a node of LAN group G asking over the VPN (from its VPN address): the nodes of G by their local addresses (the
  same LAN: reached directly, not through the tunnel), every other node by its VPN address;
- any other VPN address: every node by its VPN address;
- anyone else (the nodes' LANs, the aggregate's side): every node by its local address.

The calendar is the source of truth: every change rewrites all zone files and the views whole from the list of
agents, under an exclusive file lock, with a serial that only grows, each file written to a temporary name and
renamed, and then asks the server to reload its configuration and zones (``[sfa_agents] dns_reload``, ``rndc
reload`` by default). Simultaneous registrations therefore serialise on the lock, and whichever writes last writes
every node the calendar holds by then: the zone never loses a record to a race.

Files, in the zone directory: ``views.conf`` (named.conf includes it), ``vpn.zone``, ``local.zone``,
``lan-<group>.zone``, ``serial`` and ``lock``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.agents.vpn import NETWORK, SERVER_ADDRESS, node_address
from sfa_omf.errors import GeniError, Reason

TTL_S = 60
# How long the reload command may take: rndc answers in well under a second; one that hangs (a server behind a
# firewall, a remote command) would hold every registration and the zone's lock.
RELOAD_TIMEOUT_S = 30.0
# How long to wait for the reload command once killed: it may not die (a process we may not signal, as under sudo).
KILLED_WAIT_S = 5.0
# A LAN group's view and zone file are named "lan-<group>" as it is: these characters are safe in a file name and a
# quoted view name, and naming them as they are keeps two groups apart (a rewrite of the name could make two one).
GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Names the zone gives itself: a node of that name would add a record to the server's own.
RESERVED_HOSTNAMES = frozenset({"ns"})


@dataclass(frozen=True)
class NodeName:
    hostname: str
    node_id: int
    local_address: str
    lan_group: str = ""


def _zone(zone: str, serial: int, records: Iterable[tuple[str, str]]) -> str:
    head = [
        f"$ORIGIN {zone}.",
        f"$TTL {TTL_S}",
        f"@ IN SOA ns.{zone}. hostmaster.{zone}. ( {serial} 3600 600 86400 {TTL_S} )",
        f"@ IN NS ns.{zone}.",
        f"ns IN A {SERVER_ADDRESS}",
    ]
    return "\n".join(
        [*head, *(f"{name} IN {_record_type(address)} {address}" for name, address in records if address), ""]
    )


def _record_type(address: str) -> str:
    """AAAA for an IPv6 address, A for IPv4: named refuses the whole zone over one A record holding IPv6."""
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def _file_name(group: str) -> str:
    """The view and zone file of a LAN group: one per group, never shared (see GROUP)."""
    if not GROUP.fullmatch(group):
        raise GeniError(Reason.BAD_ARGS, f"LAN group {group!r} may hold letters, digits, '_', '.', '-' only")
    return "lan-" + group


class DnsZones:
    """The zone files of ``zone`` in ``directory``; ``reload`` is the command that makes the server read them."""

    def __init__(
        self, directory: str, zone: str, reload: Sequence[str], reload_timeout_s: float = RELOAD_TIMEOUT_S
    ) -> None:
        self.directory = Path(directory)
        self.zone = zone.strip(".")
        self.reload = list(reload)
        self.reload_timeout_s = reload_timeout_s
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, directory: str, zone: str, reload: str) -> DnsZones:
        return cls(directory, zone, shlex.split(reload))

    def _write(self, name: str, text: str) -> None:
        temporary = self.directory / f"{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, self.directory / name)

    def publish(self, nodes: Sequence[NodeName]) -> int:
        """Rewrite every view from ``nodes`` (all of them) and reload; returns the new serial."""
        with open(self.directory / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time, across threads and processes
            serial_path = self.directory / "serial"
            previous = int(serial_path.read_text()) if serial_path.exists() else 0
            # Always growing, and at least the clock's seconds so that a reset directory still moves on.
            serial = max(previous + 1, int(time.time()) % 2**31)
            ordered = sorted(nodes, key=lambda node: node.hostname)
            vpn = {node.hostname: str(node_address(node.node_id)) for node in ordered}
            local = {node.hostname: node.local_address for node in ordered}
            self._write("vpn.zone", _zone(self.zone, serial, vpn.items()))
            self._write("local.zone", _zone(self.zone, serial, local.items()))
            groups = sorted({node.lan_group for node in ordered if node.lan_group})
            views = []
            for group in groups:
                members = [node for node in ordered if node.lan_group == group]
                records = {**vpn, **{node.hostname: node.local_address or vpn[node.hostname] for node in members}}
                name = _file_name(group)
                self._write(f"{name}.zone", _zone(self.zone, serial, records.items()))
                sources = " ".join(f"{vpn[node.hostname]};" for node in members)
                views.append(self._view(name, sources, f"{name}.zone"))
            views.append(self._view("vpn", f"{NETWORK};", "vpn.zone"))
            views.append(self._view("local", "any;", "local.zone"))
            self._write("views.conf", "".join(views))
            self._write("serial", f"{serial}\n")
            if self.reload:
                self._reload()
            return serial

    def _reload(self) -> None:
        """Run the reload command: UNAVAILABLE when it fails, cannot run or does not finish in time (it is killed
        with what it started: the caller holds the zone's lock and, at a registration, its unit of work open)."""
        command = shlex.join(self.reload)
        # The output to a file, not pipes: a daemon the command starts may keep them open as long as it lives, and
        # the command's exit status is the answer.
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(
                    self.reload,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:  # not installed, not executable: say so rather than fail with a traceback
                raise GeniError(
                    Reason.UNAVAILABLE,
                    f"the DNS server did not reload the zone {self.zone}: its reload command ({command}, [sfa_agents] "
                    f"dns_reload) could not run: {exc.strerror or exc}",
                ) from exc
            try:
                returncode = process.wait(timeout=self.reload_timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=KILLED_WAIT_S)  # bounded: a process we may not signal (sudo) lives on
                except (OSError, subprocess.TimeoutExpired):
                    pass  # left to the system; the answer is the same
                raise GeniError(
                    Reason.UNAVAILABLE,
                    f"the DNS server did not reload the zone {self.zone}: its reload command ({command}) did not "
                    f"finish within {self.reload_timeout_s:g} s and was stopped",
                ) from None
            if returncode != 0:
                output.seek(0)
                said = output.read().decode("utf-8", "replace").strip()
                raise GeniError(
                    Reason.UNAVAILABLE,
                    f"the DNS server did not reload the zone {self.zone}: {said} ({command} exited with {returncode})",
                )

    def _view(self, name: str, sources: str, zone_file: str) -> str:
        return (
            f'view "{name}" {{ match-clients {{ {sources} }}; recursion no;\n'
            f'  zone "{self.zone}" {{ type primary; file "{self.directory / zone_file}"; }}; }};\n'
        )

    def server_config(self) -> str:
        """What named.conf needs: the views, rewritten with every registration."""
        return f'include "{self.directory / "views.conf"}";\n'
