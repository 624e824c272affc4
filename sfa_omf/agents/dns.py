"""DNS names that follow the nodes: each agent's node is NAME.<zone> in a real DNS server (bind9 from Debian), in
views chosen by who asks:

- a node of LAN group G asking over the VPN (from its VPN address): the nodes of G by their local addresses (the
  same LAN: reached directly, not through the tunnel), every other node by its VPN address;
- any other VPN address: every node by its VPN address;
- anyone else (the nodes' LANs, the aggregate's side): every node by its local address.

The calendar is the source of truth: every change rewrites all zone files and the views whole from the list of
agents, under an exclusive file lock, with a serial that only grows, each file written to a temporary name,
checked with ``named-checkzone`` as named loads a primary zone (a zone named would refuse is never put in place:
``rndc reload`` exits 0 even when named refuses a zone, and keeps serving the previous one), and renamed, and then
asks the server to reload its configuration and zones (``[sfa_agents] dns_reload``, ``rndc reload`` by default).
Simultaneous registrations therefore serialise on the lock, and whichever writes last writes every node the calendar
holds by then: the zone never loses a record to a race.

Files, in the zone directory: ``views.conf`` (named.conf includes it), ``vpn.zone``, ``local.zone``,
``lan-<group>.zone``, ``serial``, ``lock`` and ``published`` (the fingerprint of the names the server was last
reloaded with: a host whose zone is behind the calendar, as after a change made through another host of the
cluster, sees it differ and rewrites its zone).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import logging
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
from typing import IO

from sfa_omf.agents.vpn import NETWORK, SERVER_ADDRESS, node_address
from sfa_omf.errors import GeniError, Reason

log = logging.getLogger(__name__)

TTL_S = 60
# How long the zone's checks and the reload command may take together: rndc answers in well under a second; one that
# hangs (a server behind a firewall, a remote command) holds every registration, the zone's lock and, at a
# registration, its unit of work, which on SQLite is the database's write lock. Well below SQLite's busy timeout
# (calendar/database.py SQLITE_BUSY_TIMEOUT_MS, 30 s), with KILLED_WAIT_S on top, so that the aggregate's other
# writes waiting meanwhile are late but still done rather than failed with "database is locked".
RELOAD_TIMEOUT_S = 10.0
# How often a writer waiting for the zone's lock tries again (it waits until its deadline at most).
LOCK_POLL_S = 0.02
# How long to wait for the reload command once killed: it may not die (a process we may not signal, as under sudo).
KILLED_WAIT_S = 5.0
# A LAN group's view and zone file are named "lan-<group>" as it is: these characters are safe in a file name and a
# quoted view name, and naming them as they are keeps two groups apart (a rewrite of the name could make two one).
GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Names the zone gives itself: a node of that name would add a record to the server's own.
RESERVED_HOSTNAMES = frozenset({"ns"})
# The longest DNS name, written without its final dot (255 octets on the wire).
MAX_NAME_CHARS = 253
# One label of a host name (RFC 1123), as named's check-names wants in a primary zone: no '_'.
LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# The longest name the zone gives itself (its SOA's mail name): the zone's name must leave room for it.
HOSTMASTER = "hostmaster."
# The serial in the SOA record _zone() writes.
SOA_SERIAL = re.compile(r"^@ IN SOA \S+ \S+ \( (\d+) ", re.MULTILINE)
# What checks each zone file as named loads a primary zone (check-names fail, as named's default for primaries).
CHECK_ZONE = ("named-checkzone", "-k", "fail")


def zone_name_problem(zone: str) -> str | None:
    """Why ``zone`` cannot be the nodes' DNS zone (named would refuse to load it), or None."""
    name = zone.strip(".")
    if not name:
        return "is empty"
    bad = [label for label in name.split(".") if not LABEL.fullmatch(label)]
    if bad:
        return (
            f"is not a DNS host name: its label {bad[0]!r} may hold letters, digits and '-' (not first or last), "
            "1 to 63 of them"
        )
    longest = MAX_NAME_CHARS - len(HOSTMASTER)
    if len(name) > longest:
        return (
            f"is {len(name)} characters long: at most {longest}, so that the names in it stay within {MAX_NAME_CHARS}"
        )
    return None


def names_fingerprint(nodes: Iterable[NodeName]) -> str:
    """A digest of what the zone files hold for ``nodes`` (their order does not matter)."""
    rows = sorted(f"{node.hostname} {node.vpn_number} {node.local_address} {node.lan_group}" for node in nodes)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


@dataclass(frozen=True)
class NodeName:
    hostname: str
    vpn_number: int  # its agent's (calendar/agents.py): its address in the nodes' VPN
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

    def full_name_problem(self, hostname: str) -> str | None:
        """Why ``hostname`` cannot be named in this zone (its full name too long for DNS), or None."""
        full = f"{hostname}.{self.zone}"
        if len(full) <= MAX_NAME_CHARS:
            return None
        return (
            f"host name {hostname!r} makes the DNS name {full} {len(full)} characters long: at most {MAX_NAME_CHARS}; "
            f"choose a host name of at most {max(0, MAX_NAME_CHARS - 1 - len(self.zone))} characters"
        )

    def publish(self, nodes: Sequence[NodeName], reload: bool = True, deadline: float | None = None) -> int:
        """Rewrite every view from ``nodes`` (all of them) and reload (unless ``reload`` is False: the files only,
        for a server that reads them when it starts); returns the new serial. UNAVAILABLE, with the zone files left
        as they were, when named would refuse one of the new ones. Everything, the wait for another writer's lock
        included, ends by ``deadline`` (time.monotonic(); by default reload_timeout_s from now), plus KILLED_WAIT_S
        at most."""
        if deadline is None:
            deadline = time.monotonic() + self.reload_timeout_s
        with open(self.directory / "lock", "a+") as lock:
            self._lock(lock, deadline)  # one writer at a time, across threads and processes
            # Always growing, and at least the clock's seconds so that a reset directory still moves on.
            serial = max(self._previous_serial() + 1, int(time.time()) % 2**31)
            files = self._files(nodes, serial)
            temporaries = {name: self.directory / f"{name}.tmp" for name in files}
            try:
                for name, text in files.items():
                    temporaries[name].write_text(text)
                for name in files:
                    if name.endswith(".zone"):
                        self._check(temporaries[name], deadline)
                for name in files:  # views.conf last: it names only zone files in place
                    os.replace(temporaries[name], self.directory / name)
            finally:
                for temporary in temporaries.values():
                    temporary.unlink(missing_ok=True)  # (those of a refused zone)
            self._write_durably("serial", f"{serial}\n")
            published = self.directory / "published"
            if self.reload:
                published.unlink(missing_ok=True)  # until the server has read these files
                if not reload:
                    return serial  # not read by the server yet: the next rewrite that reloads says so
                self._run(self.reload, deadline, "reload")
            published.write_text(names_fingerprint(nodes) + "\n")
            return serial

    def _lock(self, lock: IO[str], deadline: float) -> None:
        """Take the zone's file lock by ``deadline``, else UNAVAILABLE: a writer whose reload hangs holds it up to
        its own limit, and a registration waiting here holds its unit of work (SQLite's write lock) meanwhile."""
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise GeniError(
                        Reason.UNAVAILABLE,
                        f"the DNS zone {self.zone} is being rewritten by another registration or process whose DNS "
                        f"reload has not finished within {self.reload_timeout_s:g} s: try again later",
                    ) from None
                time.sleep(LOCK_POLL_S)

    def published_fingerprint(self) -> str:
        """names_fingerprint() of the names the server was last reloaded with; '' when unknown."""
        try:
            return (self.directory / "published").read_text().strip()
        except OSError:
            return ""

    def _previous_serial(self) -> int:
        """The last serial written. When its file is unreadable or cut short (as a stop before an older version's
        write reached the disk could leave it), said once in the log, the serial local.zone holds, else 0: the
        clock's floor keeps serials growing, but rewrites within one second go past the clock."""
        serial_path = self.directory / "serial"
        if not serial_path.exists():
            return 0
        try:
            return int(serial_path.read_text())
        except (OSError, ValueError) as exc:
            in_zone = self._zone_serial("local.zone")
            log.warning(
                "DNS zone serial file %s is unreadable (%s): taken as %d (local.zone's), rewritten now",
                serial_path,
                exc,
                in_zone,
            )
            return in_zone

    def _zone_serial(self, zone_file: str) -> int:
        """The serial in the SOA record of ``zone_file`` as _zone() writes it; 0 when there is none to read."""
        try:
            text = (self.directory / zone_file).read_text()
        except OSError:
            return 0
        found = SOA_SERIAL.search(text)
        return int(found.group(1)) if found else 0

    def _files(self, nodes: Sequence[NodeName], serial: int) -> dict[str, str]:
        """Every zone file and views.conf (last), by file name."""
        ordered = sorted(nodes, key=lambda node: node.hostname)
        vpn = {node.hostname: str(node_address(node.vpn_number)) for node in ordered}
        local = {node.hostname: node.local_address for node in ordered}
        files = {
            "vpn.zone": _zone(self.zone, serial, vpn.items()),
            "local.zone": _zone(self.zone, serial, local.items()),
        }
        groups = sorted({node.lan_group for node in ordered if node.lan_group})
        views = []
        for group in groups:
            members = [node for node in ordered if node.lan_group == group]
            records = {**vpn, **{node.hostname: node.local_address or vpn[node.hostname] for node in members}}
            name = _file_name(group)
            files[f"{name}.zone"] = _zone(self.zone, serial, records.items())
            sources = " ".join(f"{vpn[node.hostname]};" for node in members)
            views.append(self._view(name, sources, f"{name}.zone"))
        views.append(self._view("vpn", f"{NETWORK};", "vpn.zone"))
        views.append(self._view("local", "any;", "local.zone"))
        files["views.conf"] = "".join(views)
        return files

    def _write_durably(self, name: str, text: str) -> None:
        """Write ``name`` whole or not at all, even across a power cut: a temporary file, synced, then renamed."""
        temporary = self.directory / f"{name}.tmp"
        with open(temporary, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.directory / name)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself
        finally:
            os.close(directory)

    def _check(self, zone_file: Path, deadline: float) -> None:
        """named-checkzone on ``zone_file``: UNAVAILABLE when named would refuse it."""
        try:
            self._run([*CHECK_ZONE, self.zone, str(zone_file)], deadline, "check")
        except GeniError as exc:
            raise GeniError(
                Reason.UNAVAILABLE,
                f"{exc.message}; the zone files are left as they were",
            ) from exc

    def _run(self, command: list[str], deadline: float, what: str) -> None:
        """Run the reload command (``what`` "reload") or a zone's check ("check") until ``deadline`` at most:
        UNAVAILABLE when it fails, cannot run or does not finish in time (it is killed with what it started: the
        caller holds the zone's lock and, at a registration, its unit of work open)."""
        spelled = shlex.join(command)
        if what == "reload":
            failed = f"the DNS server did not reload the zone {self.zone}"
            setting = ", [sfa_agents] dns_reload"
        else:
            failed = f"the DNS server would refuse the zone {self.zone}"
            setting = ", from Debian's bind9-utils, installed with bind9"
        # The output to a file, not pipes: a daemon the command starts may keep them open as long as it lives, and
        # the command's exit status is the answer.
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:  # not installed, not executable: say so rather than fail with a traceback
                raise GeniError(
                    Reason.UNAVAILABLE,
                    f"{failed}: its {what} command ({spelled}{setting}) could not run: {exc.strerror or exc}",
                ) from exc
            try:
                returncode = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=KILLED_WAIT_S)  # bounded: a process we may not signal (sudo) lives on
                except (OSError, subprocess.TimeoutExpired):
                    pass  # left to the system; the answer is the same
                raise GeniError(
                    Reason.UNAVAILABLE,
                    f"{failed}: its {what} command ({spelled}) did not finish within {self.reload_timeout_s:g} s "
                    "and was stopped",
                ) from None
            if returncode != 0:
                output.seek(0)
                said = " ".join(output.read().decode("utf-8", "replace").split())
                raise GeniError(Reason.UNAVAILABLE, f"{failed}: {said} ({spelled} exited with {returncode})")

    def _view(self, name: str, sources: str, zone_file: str) -> str:
        return (
            f'view "{name}" {{ match-clients {{ {sources} }}; recursion no;\n'
            f'  zone "{self.zone}" {{ type primary; file "{self.directory / zone_file}"; }}; }};\n'
        )

    def server_config(self) -> str:
        """What named.conf needs: the views, rewritten with every registration."""
        return f'include "{self.directory / "views.conf"}";\n'
