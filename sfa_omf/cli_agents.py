"""Node agent commands: ``sfa-omf node invite|agents`` (the operator) and ``sfa-omf agent enrol|run`` (the node)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfa_omf.cli_common import command_database, command_group, command_settings, error_text
from sfa_omf.errors import BadArgs, GeniError
from sfa_omf.times import UtcLogFormatter, format_time

if TYPE_CHECKING:
    from sfa_omf.testbed.oar.agent_nodes import OarAgentNodes

DEFAULT_TOKEN_LIFETIME_S = 24 * 3600


def add_node_agent_commands(node: argparse._SubParsersAction, config_option: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """``node invite`` and ``node agents``, beside the other node commands."""
    invite = node.add_parser("invite", parents=[config_option], help="make a one-time join token for a node agent")
    invite.add_argument("--pool", default="default", help="the pool the node will join (default: default)")
    invite.add_argument(
        "--lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, help="seconds the token is valid (default 1 day)"
    )
    invite.add_argument("--json", action="store_true")
    invite.set_defaults(handler=_invite)
    agents = node.add_parser("agents", parents=[config_option], help="list the nodes that joined through an agent")
    agents.add_argument("--json", action="store_true")
    agents.set_defaults(handler=_agents)
    vpn = node.add_parser("vpn-config", parents=[config_option], help="print the nodes' OpenVPN server configuration")
    vpn.add_argument("--listen", required=True, help="the address OpenVPN listens on")
    vpn.set_defaults(handler=_vpn_config)
    dns = node.add_parser("dns-config", parents=[config_option], help="print the bind9 views of the nodes' zone")
    dns.set_defaults(handler=_dns_config)
    revoke = node.add_parser("vpn-revoke", parents=[config_option], help="revoke a node's VPN certificate (CRL)")
    revoke.add_argument("hostname")
    revoke.set_defaults(handler=_vpn_revoke)
    stage_in = node.add_parser(
        "stage-in", parents=[config_option], help="stage a file in for a lease on an agent's node"
    )
    stage_in.add_argument("hostname")
    stage_in.add_argument("lease_id")
    stage_in.add_argument("file")
    stage_in.set_defaults(handler=_stage_in)
    stage_out = node.add_parser("stage-out", parents=[config_option], help="copy the files a node staged out")
    stage_out.add_argument("hostname")
    stage_out.add_argument("lease_id")
    stage_out.add_argument("--to", required=True, help="directory to copy them into")
    stage_out.set_defaults(handler=_stage_out)


def add_agent_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``agent enrol`` and ``agent run``: the node's side."""
    agent = command_group(commands, "agent", "run this host as a node agent")
    enrol = agent.add_parser("enrol", help="join the testbed with a token from 'sfa-omf node invite'")
    enrol.add_argument("--server", required=True, help="the aggregate, https://HOST:PORT/")
    enrol.add_argument("--token", required=True)
    enrol.add_argument("--root", required=True, help="the authority's root certificate the operator gave you")
    enrol.add_argument(
        "--aggregate",
        default="",
        metavar="URN",
        help="the aggregate's URN the invitation names (default: the aggregate of the root's authority); the token "
        "is sent only to a server whose certificate names it",
    )
    enrol.add_argument("--state", required=True, help="directory for the node's key, certificate and state")
    enrol.add_argument("--hostname", required=True, help="this node's name (one DNS label)")
    enrol.add_argument("--local-address", default="", help="this node's address on its LAN")
    enrol.add_argument("--lan-group", default="", help="nodes of the same LAN group reach each other directly")
    enrol.add_argument("--property", action="append", default=[], help="KEY=VALUE (repeatable)")
    enrol.add_argument(
        "--retry-for",
        type=float,
        default=300,
        metavar="SECONDS",
        help="keep trying while the server is busy or unreachable (503, no answer), for this long (default 300)",
    )
    enrol.set_defaults(handler=_enrol)
    vpn = agent.add_parser("vpn", help="get a VPN client certificate and configuration (writes STATE/vpn.conf)")
    vpn.add_argument("--state", required=True, help="the directory given to enrol")
    vpn.set_defaults(handler=_agent_vpn)
    run = agent.add_parser("run", help="heartbeat and apply the work until stopped (SIGTERM, Ctrl-C)")
    run.add_argument("--state", required=True, help="the directory given to enrol")
    run.add_argument("--root-dir", help="apply accounts inside this directory instead of this host (tests, trials)")
    run.add_argument("--interval", type=float, help="seconds between rounds (default: what the server says)")
    run.add_argument("--once", action="store_true", help="one round, then exit")
    run.set_defaults(handler=_run)


def _invite(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.agents import Agents
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.xrn import hrn_to_urn

    settings = command_settings(args)
    token, record = Agents(command_database(settings)).create_token(args.pool, args.lifetime)
    root = LocalAuthority.gid_path(settings.data_dir, settings.interface_hrn)
    server = f"{settings.https_url(settings.aggregate_port)}/"
    # The agent sends the token only to a server whose certificate names this URN (am.gid's).
    aggregate = hrn_to_urn(settings.interface_hrn, "authority+am")
    if args.json:
        invitation = {
            "token": token,
            "pool": record.pool,
            "expires": format_time(record.expires),
            "root": root,
            "aggregate": aggregate,
        }
        print(json.dumps(invitation))
        return 0
    print(f"join token for pool {record.pool!r}, valid until {format_time(record.expires)} (once):")
    print(f"  {token}")
    print(f"on the node, with a copy of {root}:")
    print(f"  sfa-omf agent enrol --server {server} --aggregate {aggregate} \\")
    print(f"      --token {token} --root ROOT.gid --state /var/lib/sfa-omf-agent \\")
    print("      --hostname NAME [--local-address IP] [--lan-group GROUP]")
    return 0


def _agents(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.agents import Agents

    agents = Agents(command_database(command_settings(args))).list_agents()
    rows = [
        {
            "node": agent.node,
            "hostname": agent.hostname,
            "pool": agent.pool,
            "local_address": agent.local_address,
            "lan_group": agent.lan_group,
            "last_seen": format_time(agent.last_seen),
            "lost": agent.lost,
        }
        for agent in agents
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        status = "LOST" if row["lost"] else "alive"
        print(f"{row['hostname']:20} {status:5} last seen {row['last_seen']}  {row['local_address']} {row['pool']}")
    return 0


def _properties(pairs: list[str]) -> dict[str, str]:
    properties: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadArgs(f"--property {pair!r} is not KEY=VALUE")
        properties[name] = value
    return properties


def _enrol(args: argparse.Namespace) -> int:
    from sfa_omf.agents.node import AgentCallError, ServerNotTrusted, enrol

    try:
        enrolled = enrol(
            args.server,
            args.token,
            args.root,
            args.state,
            args.hostname,
            args.local_address,
            args.lan_group,
            _properties(args.property),
            retry_for_s=args.retry_for,
            aggregate_urn=args.aggregate,
        )
    except ServerNotTrusted as exc:
        print(
            f"sfa-omf agent: {args.server} is not the aggregate: {exc.message}; the token was not sent (check --server "
            "and --aggregate against the invitation)",
            file=sys.stderr,
        )
        return 1
    except AgentCallError as exc:
        print(f"sfa-omf agent: the server refused: {exc.message} ({exc.status} {exc.reason})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sfa-omf agent: no answer from {args.server} ({exc}); try again later", file=sys.stderr)
        return 1
    print(f"enrolled as {enrolled.node}; run: sfa-omf agent run --state {args.state}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from sfa_omf.agents.host import DirectoryHost, Host, UnixHost
    from sfa_omf.agents.node import Agent, AgentCallError, ServerNotTrusted

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(UtcLogFormatter("%(asctime)s %(name)s %(message)s"))  # UTC with a Z, as the server's lines
    logging.basicConfig(level=logging.INFO, handlers=[stderr])
    host: Host = DirectoryHost(args.root_dir, args.state) if args.root_dir else UnixHost(args.state)
    agent = Agent(args.state, host, args.interval)
    if args.once:
        # One line, as for `agent enrol` (the loop below logs these and tries again at the next heartbeat).
        try:
            agent.run_once()
        except ServerNotTrusted as exc:
            print(
                f"sfa-omf agent: {agent.server} is not the aggregate this node enrolled with: {exc.message}; nothing "
                "was sent (check the server's address, or enrol again)",
                file=sys.stderr,
            )
            return 1
        except AgentCallError as exc:
            said = f"{exc.message} ({exc.status} {exc.reason})"
            print(
                f"sfa-omf agent: the server refused: {said}; {_after_refusal(exc.status, args.state)}", file=sys.stderr
            )
            return 1
        except OSError as exc:
            print(f"sfa-omf agent: no answer from {agent.server} ({exc}); try again later", file=sys.stderr)
            return 1
        return 0
    stop = threading.Event()

    def stopping(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    agent.run(stop)
    return 0


def _after_refusal(status: int, state: str) -> str:
    """What to do when the aggregate refuses a running agent's call with HTTP ``status``."""
    if status in (401, 403):
        # The server no longer knows this node's certificate: the node was removed, or its certificate revoked.
        return (
            "this node is no longer enrolled at the aggregate (removed, or its certificate revoked): ask the operator "
            f"for a new invitation (sfa-omf node invite) and enrol again (sfa-omf agent enrol --state {state} ...)"
        )
    return "the aggregate's log says more; try again later, or ask its operator"


def _staging(args: argparse.Namespace) -> tuple[Any, Any]:
    from sfa_omf.agents.staging import FileStore
    from sfa_omf.calendar.agents import Agents
    from sfa_omf.xrn import hrn_to_urn, join_hrn, split_hrn

    settings = command_settings(args)
    node = hrn_to_urn(join_hrn([*split_hrn(settings.interface_hrn), args.hostname]), "node")
    if not Agents(command_database(settings)).lease_on_node(node, args.lease_id):
        raise BadArgs(f"lease {args.lease_id} has no sliver on {node} (sfa-omf lease list --node {node})")
    return FileStore(os.path.join(settings.data_dir, "agent_files"), settings.agent_max_file_bytes), node


def _stage_in(args: argparse.Namespace) -> int:
    import hashlib

    store, node = _staging(args)
    with open(args.file, "rb") as handle:
        data = handle.read(store.max_bytes + 1)
    name = os.path.basename(args.file)
    store.put(args.lease_id, args.hostname, "in", name, data, hashlib.sha256(data).hexdigest())
    print(f"{name} ({len(data)} bytes) staged in for lease {args.lease_id} on {node}: the agent fetches it")
    return 0


def _stage_out(args: argparse.Namespace) -> int:
    store, node = _staging(args)
    os.makedirs(args.to, exist_ok=True)
    files = store.list(args.lease_id, args.hostname, "out")
    for staged in files:
        data, sha256 = store.get(args.lease_id, args.hostname, "out", staged.name)
        with open(os.path.join(args.to, staged.name), "wb") as out:
            out.write(data)
        print(f"{staged.name} {staged.size} bytes sha256 {sha256}")
    if not files:
        print(f"nothing staged out yet for lease {args.lease_id} on {node}")
    return 0


def oar_agent_nodes(settings: Any) -> OarAgentNodes | None:
    """Agents' nodes in OAR's resources when the aggregate's backend is OAR, else None."""
    if settings.aggregate_type != "oar":
        return None
    from sfa_omf.testbed.oar.agent_nodes import OarAgentNodes
    from sfa_omf.testbed.oar.client import OarClient

    client = OarClient(settings.oar_api_url, timeout_s=settings.oar_timeout_s)
    return OarAgentNodes(client)


class _VpnRemovalNote(Exception):
    """What a node's removal says of its VPN access: ``message``, one line for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())


class VpnRevocationLeft(_VpnRemovalNote):
    """A removed node's VPN revocation not done, or done but not in this host's CRL: ``message`` says which, its
    cause and what finishes it."""


class VpnFilesNotRewritten(_VpnRemovalNote):
    """A removed node had no VPN certificate to revoke, but this host's VPN files (its CRL), out of line with the
    cluster's records, could not be rewritten: a warning, nothing of the node is left (the CRL lacks other nodes'
    revocations)."""


def revoke_vpn_of_removed_node(settings: Any, hostname: str) -> bool:
    """Revoke the VPN certificate issued to a node that was just removed; False when it had none (or no VPN).
    VpnRevocationLeft when it is not done, or is recorded for the cluster but this host's CRL is not written;
    VpnFilesNotRewritten when it had none but this host's CRL could not be brought in line with the records."""
    try:
        return _revoke_vpn_of_removed_node(settings, hostname)
    except (GeniError, OSError) as exc:  # (VpnRevocationLeft is neither: it goes as it is)
        raise VpnRevocationLeft(
            f"its VPN certificate is not revoked (it still opens {hostname}'s tunnel): {error_text(exc)}; once that "
            f"is fixed, run `sfa-omf node vpn-revoke {hostname}`"
        ) from exc


def _revoke_vpn_of_removed_node(settings: Any, hostname: str) -> bool:
    from sfa_omf.agents.vpn import VpnCa, VpnCaMismatch
    from sfa_omf.calendar.database import Database

    directory = os.path.join(settings.data_dir, "vpn")
    database = Database(settings.calendar_url)
    if database.is_sqlite:
        # Asked under the VPN's file lock (revoke_node), never before it: a certificate being issued to the node at
        # this moment is in issued/ once the lock is ours. No CA: none was ever issued (and none is made here).
        if not os.path.exists(os.path.join(directory, "ca.pem")):
            return False
        try:
            return revoke_in_files_recorded(VpnCa(directory, settings.interface_hrn), database, hostname)
        except GeniError as exc:  # its message says what is not done and that `node vpn-revoke` finishes it
            raise VpnRevocationLeft(exc.message) from exc
    # PostgreSQL: the cluster's records know what any host issued; the revocation recorded there reaches every
    # serving host's CRL at its next refresh (about 5 s). On a host holding the cluster's CA, its files are recorded
    # first (a host upgraded from the file-only VPN may know a certificate the records do not yet) and its CRL is
    # written at once.
    from sfa_omf.calendar.vpn_records import VpnRecords

    records = VpnRecords(database)
    if os.path.exists(os.path.join(directory, "ca.pem")):
        try:
            ca = cluster_vpn_ca(settings)
        except VpnCaMismatch:
            ca = None  # this host's CA is not the cluster's (its serve refuses to start): the records alone
        except (GeniError, OSError) as exc:
            # Its set-up writes this host's files from the records (a CRL out of date, not writable): the records
            # take the revocation all the same, as they do for any host.
            raise _crl_not_written(records, directory, hostname, records.revoke_current(hostname), exc) from exc
        if ca is not None:
            # VpnCa.revoke_node's two steps, told apart: once the revocation is committed, a failure to write this
            # host's CRL leaves the node revoked for the cluster (every serving host's refresh writes it).
            serial = ca.records.revoke_current(hostname)
            try:
                ca.refresh()
            except (GeniError, OSError) as exc:
                raise _crl_not_written(records, directory, hostname, serial, exc) from exc
            return serial is not None
    return records.revoke_current(hostname) is not None


def revoke_in_files_recorded(ca: Any, database: Any, hostname: str) -> bool:
    """The file-only VPN's revocation of the node's certificate (``ca``: a VpnCa without records, SQLite's), recorded
    in the calendar ``database`` with the node's VPN number, which no other node gets until its quarantine has passed
    (calendar/agents.py: the node's tunnel may last that long). False when it had no certificate. A revocation not
    recorded is a VpnRevocationLeft saying so (the CRL revokes it)."""
    import time

    from sfa_omf.calendar.agents import VPN_NUMBER_QUARANTINE_S
    from sfa_omf.calendar.vpn_records import record_file_revocation

    revoked = ca.revoke_node_files(hostname)
    if revoked is None:
        return False
    if revoked.serial is not None:
        try:
            record_file_revocation(database, revoked.serial, hostname, revoked.number, int(time.time()))
        except GeniError as exc:
            raise VpnRevocationLeft(
                f"its VPN certificate is revoked (CRL) but not recorded in the calendar: {exc.message}; its VPN "
                f"address may go to a node enrolled in the next {VPN_NUMBER_QUARANTINE_S} s, while its tunnel lasts"
            ) from exc
    return True


def _crl_not_written(
    records: Any, directory: str, hostname: str, serial: int | None, exc: GeniError | OSError
) -> VpnRevocationLeft | VpnFilesNotRewritten:
    """What to say when this host's CRL could not be written from the records, the node's current certificate
    (``serial``, None when the records hold none) being revoked there: left to do when the node has a revocation
    this CRL lacks (this one, or one recorded on another host), else a warning (the node had no certificate)."""
    cause = error_text(exc)
    if serial is not None or not _listed_in_crl(Path(directory) / "crl.pem", _revocations_of(records, hostname)):
        return VpnRevocationLeft(
            f"its VPN certificate's revocation is recorded for the cluster; this host's CRL file not rewritten: "
            f"{cause}; the server's next refresh rewrites it, or run `sfa-omf node vpn-revoke {hostname}` once fixed"
        )
    return VpnFilesNotRewritten(
        f"{hostname} had no VPN certificate to revoke, but this host's VPN files (its CRL) are not in line with the "
        f"cluster's records and could not be rewritten: {cause}; once that is fixed, the server's next refresh "
        "rewrites them"
    )


def cluster_vpn_ca(settings: Any) -> Any:
    """The VPN's CA as ``serve`` has it: on PostgreSQL the cluster's (its records in the database: what this command
    revokes reaches every host, and a host without the cluster's CA refuses rather than make another); on SQLite the
    files of DATA_DIR/vpn."""
    from sfa_omf.agents.vpn import VpnCa
    from sfa_omf.calendar.database import Database

    database = Database(settings.calendar_url)
    records = None
    if not database.is_sqlite:
        from sfa_omf.calendar.vpn_records import VpnRecords

        database.require_current_schema()
        records = VpnRecords(database)
    return VpnCa(os.path.join(settings.data_dir, "vpn"), settings.interface_hrn, records)


def _vpn_ca(args: argparse.Namespace) -> Any:
    settings = command_settings(args)
    return cluster_vpn_ca(settings), settings


def _vpn_config(args: argparse.Namespace) -> int:
    import ipaddress

    try:
        ipaddress.ip_address(args.listen)
    except ValueError:
        # Written into OpenVPN's configuration as it is: a line break would add directives of its own.
        raise BadArgs(
            f"--listen {args.listen!r} is not an IP address: give the address OpenVPN listens on (one of this "
            "machine's, e.g. 192.0.2.10, or 0.0.0.0 for every address)"
        ) from None
    ca, settings = _vpn_ca(args)
    print(ca.server_config(args.listen, settings.agent_vpn_port), end="")
    return 0


def _vpn_revoke(args: argparse.Namespace) -> int:
    ca, settings = _vpn_ca(args)
    if ca.records is None:  # SQLite's file-only VPN: the revocation recorded in the calendar too, for its quarantine
        from sfa_omf.calendar.database import Database

        try:
            revoked = revoke_in_files_recorded(ca, Database(settings.calendar_url), args.hostname)
        except VpnRevocationLeft as exc:
            print(f"revoked the VPN certificate of {args.hostname}; warning: {exc.message}", file=sys.stderr)
            return 2
    else:
        revoked = ca.revoke_node(args.hostname)
    if revoked:
        from sfa_omf.calendar.agents import VPN_KEY_TRANSITION_S, VPN_RENEGOTIATION_S

        print(
            f"revoked the VPN certificate of {args.hostname}; OpenVPN reads the new CRL at each connection and "
            f"renegotiation (a tunnel that is up ends within {VPN_RENEGOTIATION_S + VPN_KEY_TRANSITION_S} s)"
        )
        return 0
    # What `node remove` asks for when the revocation was recorded but this host's CRL not written: done now.
    if _revocation_in_crl(ca, args.hostname):
        print(f"the VPN certificate of {args.hostname} is already revoked; CRL written ({ca.directory / 'crl.pem'})")
        return 0
    raise BadArgs(f"node {args.hostname} has no VPN certificate")


def _revocation_in_crl(ca: Any, hostname: str) -> bool:
    """Whether the cluster's records hold a revocation of a certificate issued to ``hostname`` and this host's CRL
    lists each such certificate; False without records (the file-only VPN does not record whose a revoked serial
    was)."""
    if ca.records is None:
        return False
    serials = _revocations_of(ca.records, hostname)
    return bool(serials) and _listed_in_crl(ca.directory / "crl.pem", serials)


def _revocations_of(records: Any, hostname: str) -> list[int]:
    """The serials of the certificates issued to ``hostname`` that the cluster's records hold revoked."""
    from sqlalchemy import select

    from sfa_omf.calendar.models import VpnRevoked

    with records.database.read() as session:
        return [
            int(serial) for serial in session.scalars(select(VpnRevoked.serial).where(VpnRevoked.hostname == hostname))
        ]


def _listed_in_crl(crl_path: Path, serials: list[int]) -> bool:
    """Whether the CRL file at ``crl_path`` lists each of ``serials`` (False when it is missing or unreadable)."""
    from cryptography import x509

    if not serials:
        return True
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    except (OSError, ValueError):
        return False
    return all(crl.get_revoked_certificate_by_serial_number(serial) is not None for serial in serials)


def _agent_vpn(args: argparse.Namespace) -> int:
    from sfa_omf.agents.node import AgentCallError, request_vpn

    try:
        path, address = request_vpn(args.state)
    except AgentCallError as exc:
        print(f"sfa-omf agent: the server refused: {exc.message} ({exc.status} {exc.reason})", file=sys.stderr)
        return 1
    print(f"VPN address {address}; run: openvpn --config {path}")
    return 0


def _dns_config(args: argparse.Namespace) -> int:
    """Print the line named.conf needs, after writing the zone files it names from the calendar's agents (named
    will not start on an include of a file that does not exist; no reload: the server's next heartbeats' flush
    reloads a running named)."""
    from sfa_omf.agents.dns import DnsZones, NodeName
    from sfa_omf.calendar.agents import Agents

    settings = command_settings(args)
    if not settings.agent_dns_zone:
        raise BadArgs("no [sfa_agents] dns_zone is set: name the zone the nodes live in first")
    zones = DnsZones.from_settings(
        os.path.join(settings.data_dir, "dns"), settings.agent_dns_zone, settings.agent_dns_reload
    )
    names = Agents(command_database(settings)).names()
    zones.publish([NodeName(*row) for row in names], reload=False)
    print(zones.server_config(), end="")
    return 0
