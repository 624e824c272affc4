"""Operator commands for the calendar: ``sfa-omf node|pool|lease|db ...``.

Each reads the configuration (``--config FILE``, default $SFA_OMF_CONFIG or ./sfa-omf.conf) to find the database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfa_omf.calendar.records import NODE_STATES  # plain data: building the parser needs no database layer
from sfa_omf.cli_agents import (
    VpnFilesNotRewritten,
    VpnRevocationLeft,
    add_node_agent_commands,
    oar_agent_nodes,
    revoke_vpn_of_removed_node,
)
from sfa_omf.cli_common import (
    command_database,
    command_group,
    command_settings,
    error_text,
    os_error_text,
    print_table,
)
from sfa_omf.config import CONFIG_FILE_NAME
from sfa_omf.errors import BadArgs, GeniError, Reason

if TYPE_CHECKING:
    from sfa_omf.calendar.database import Database
    from sfa_omf.calendar.records import LeaseRecord, NodeRecord
    from sfa_omf.calendar.slices import Slices
    from sfa_omf.config import Settings


def add_calendar_commands(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Adds node, pool, lease, slice, account and db commands; returns the ``slice`` sub-commands (the registry adds
    its own there)."""
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")

    db = command_group(commands, "db", "the calendar database")
    upgrade = db.add_parser("upgrade", parents=[config_option], help="create or migrate the schema")
    upgrade.add_argument(
        "--force",
        action="store_true",
        help="migrate even while other sfa-omf processes use the database (PostgreSQL; stop them first instead)",
    )
    upgrade.set_defaults(handler=_db_upgrade)
    prune = db.add_parser(
        "prune", parents=[config_option], help="delete finished leases and slices older than [sfa_omf] history_days"
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    prune.set_defaults(handler=_db_prune)

    node = command_group(commands, "node", "the node inventory")
    add = node.add_parser("add", parents=[config_option], help="add a node")
    add.add_argument(
        "component_id",
        help="the node's URN under this authority (urn:publicid:IDN+testbed+node+node1) or its name (node1)",
    )
    add.add_argument("--name", help="component name (default: the URN's last part)")
    add.add_argument("--pool", default="default")
    add.add_argument("--hardware-type", default="")
    add.add_argument(
        "--grain", type=int, help="booking slot length in seconds, at least 1 (default: [sfa_omf] grain_s)"
    )
    add.add_argument("--shared", action="store_true", help="not exclusive")
    add.add_argument("--image", action="append", default=[], help="disk image NAME[:OS[:VERSION]] (repeatable)")
    add.add_argument("--property", action="append", default=[], help="KEY=VALUE (repeatable)")
    add.set_defaults(handler=_node_add)
    listing = node.add_parser("list", parents=[config_option], help="list nodes")
    listing.add_argument("--pool")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_node_list)
    remove = node.add_parser(
        "remove",
        parents=[config_option],
        help="remove a node no booking holds",
        description="Remove a node no booking holds: from the calendar and, for an agent's node, its OAR resource, "
        "VPN certificate, DNS names and staged files; then its registry record. Exit status 0: all done; 2: nothing "
        "removed (why on stderr), or the node removed but for what the last line names, each with what finishes it.",
    )
    remove.add_argument("component_id")
    remove.set_defaults(handler=_node_remove)
    imported = node.add_parser("import", parents=[config_option], help="fill the inventory from the testbed")
    source = imported.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-oar",
        nargs="?",
        const="",
        metavar="URL",
        help="OAR's REST API (default: [sfa_oar] api_url); every network_address becomes a node",
    )
    source.add_argument(
        "--from-file", metavar="FILE", help="a .csv or .json file of nodes (docs/calendar.md); re-running updates"
    )
    source.add_argument(
        "--from-omf",
        metavar="URL",
        help="an omf_sfa broker (https://host:8001): its /resources/nodes and their leases; re-running updates",
    )
    imported.add_argument("--cert", metavar="PEM", help="--from-omf: client certificate (chain) the broker accepts")
    imported.add_argument("--key", metavar="PEM", help="--from-omf: the client certificate's private key")
    imported.add_argument("--ca", metavar="PEM", help="--from-omf: the certificate(s) to check the broker's against")
    imported.add_argument(
        "--insecure", action="store_true", help="--from-omf: do not check the broker's certificate at all"
    )
    imported.set_defaults(handler=_node_import)
    state = node.add_parser("set-state", parents=[config_option], help="usable or maintenance")
    state.add_argument("component_id")
    state.add_argument("state", choices=NODE_STATES)
    state.set_defaults(handler=_node_set_state)
    add_node_agent_commands(node, config_option)

    pool = command_group(commands, "pool", "resource pools")
    create = pool.add_parser("create", parents=[config_option], help="create a pool")
    create.add_argument("name")
    create.add_argument("--private", action="store_true", help="not advertised to the federation")
    create.add_argument("--description", default="")
    create.set_defaults(handler=_pool_create)
    pools = pool.add_parser("list", parents=[config_option], help="list pools")
    pools.add_argument("--json", action="store_true")
    pools.set_defaults(handler=_pool_list)
    move = pool.add_parser("move", parents=[config_option], help="move a node to another pool")
    move.add_argument("component_id")
    move.add_argument("--to", required=True, dest="to_pool")
    move.add_argument("--from", dest="from_pool", help="only if the node is in this pool now")
    move.set_defaults(handler=_pool_move)

    slices = command_group(commands, "slice", "slices as the calendar knows them")
    for name, text in (("release", "let a shut-down slice book again"), ("shutdown", "cancel a slice's leases now")):
        command = slices.add_parser(name, parents=[config_option], help=text)
        command.add_argument(
            "slice_urn",
            metavar="slice",
            help="a slice URN, a name under the authority (exp1), its full HRN, or another authority's HRN "
            "(ple.upmc.exp1; a dotted name is read as the slice the calendar holds)",
        )
        command.set_defaults(handler=_slice_release if name == "release" else _slice_shutdown)

    account = command_group(commands, "account", "local accounts of federation users")
    mapping = account.add_parser("map", parents=[config_option], help="pin the local login of a user (or slice) URN")
    mapping.add_argument("urn")
    mapping.add_argument("login")
    mapping.set_defaults(handler=_account_map)
    accounts = account.add_parser("list", parents=[config_option], help="list the mappings")
    accounts.add_argument("--json", action="store_true")
    accounts.set_defaults(handler=_account_list)

    lease = command_group(commands, "lease", "bookings")
    leases = lease.add_parser("list", parents=[config_option], help="list leases")
    leases.add_argument("--node")
    leases.add_argument("--slice")
    leases.add_argument("--from", dest="start", help="leases that end after this time")
    leases.add_argument("--to", dest="end", help="leases that start before this time")
    leases.add_argument("--all", action="store_true", help="also cancelled and expired leases")
    leases.add_argument("--json", action="store_true")
    leases.set_defaults(handler=_lease_list)
    return slices


def _database(args: argparse.Namespace) -> Database:
    """The calendar for a command other than ``db upgrade``: at this sfa-omf's newest migration (an empty one is
    created; an older one refused with what to run, rather than a query's "no such table")."""
    return command_database(command_settings(args))


def _db_upgrade(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.database import Database

    database = Database(command_settings(args).calendar_url)
    try:
        before, after = database.upgrade(force=args.force)
    finally:
        database.dispose()
    if before != after:
        print(f"calendar database migrated from {before or 'an empty schema'} to {after} ({_safe_url(database.url)})")
    else:
        print(f"calendar database is up to date ({_safe_url(database.url)})")
    return 0


def _db_prune(args: argparse.Namespace) -> int:
    """One pass of the leader's history retention (calendar/retention.py), printing its counts per table."""
    from sfa_omf.calendar.retention import HistoryRetention

    settings = command_settings(args)
    if settings.history_days == 0:
        print("[sfa_omf] history_days is 0: the calendar keeps everything; nothing to prune")
        return 0
    database = command_database(settings)
    try:
        counts = HistoryRetention(database, settings.history_days).prune(dry_run=args.dry_run)
    finally:
        database.dispose()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"history older than {settings.history_days} days: {verb} {counts.total} row(s)")
    print_table(("table", "rows"), [(kind, str(count)) for kind, count in counts.rows.items()])
    return 0


def _safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def _node_import(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return _node_import_file(args)
    if args.from_omf is not None:
        return _node_import_omf(args)
    from sfa_omf.calendar.inventory import Inventory
    from sfa_omf.calendar.policy import Policy
    from sfa_omf.testbed.oar.client import OarClient, OarError
    from sfa_omf.testbed.oar.importer import import_nodes

    settings = command_settings(args)
    url = args.from_oar or settings.oar_api_url
    client = OarClient(url, timeout_s=settings.oar_timeout_s, server_timezone=settings.oar_timezone or None)
    print(f"reading OAR's resources from {client.shown_url} ...", file=sys.stderr)
    try:
        resources = client.resources()
    except OarError as exc:
        raise GeniError(Reason.UNAVAILABLE, f"cannot read OAR's resources: {exc.message}") from exc
    database = command_database(settings)  # an older schema is db upgrade's to migrate, not an import's
    inventory = Inventory(database, Policy(default_grain_s=settings.grain_s))
    report = import_nodes(inventory, resources, settings.interface_hrn, progress=_progress_bar("nodes"))
    print(
        f"{len(report.added)} node(s) added, {len(report.updated)} updated, {report.unchanged} unchanged "
        f"(from {len(resources)} OAR resources)"
    )
    _record_nodes(settings, inventory.list_nodes())
    return 0


def _node_import_file(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.bulk_import import import_nodes, read_node_file
    from sfa_omf.calendar.inventory import Inventory
    from sfa_omf.calendar.policy import Policy

    settings = command_settings(args)
    entries = read_node_file(args.from_file, settings.interface_hrn)  # this authority's nodes, as node add takes them
    database = command_database(settings)  # an older schema is db upgrade's to migrate, not an import's
    report = import_nodes(database, entries, Policy(default_grain_s=settings.grain_s), progress=_progress_bar("nodes"))
    print(
        f"{report.added} node(s) added, {report.updated} updated, {report.unchanged} unchanged (from {args.from_file})"
    )
    _record_nodes(settings, Inventory(database).list_nodes())  # the nodes are registry records too
    return 0


def _node_import_omf(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.bulk_import import import_nodes, stored_nodes
    from sfa_omf.calendar.inventory import Inventory
    from sfa_omf.calendar.policy import Policy
    from sfa_omf.server.app import build_aggregate
    from sfa_omf.testbed.omf import importer
    from sfa_omf.testbed.omf.rest import omf_inventory

    settings = command_settings(args)
    url = importer.nodes_url(args.from_omf)
    print(f"reading the broker's nodes from {url} ...", file=sys.stderr)
    nodes = importer.fetch_nodes(url, args.cert, args.key, args.ca, args.insecure, timeout_s=60)
    entries = importer.node_entries(nodes, settings.interface_hrn, url)
    command_database(settings).dispose()  # an older schema is db upgrade's to migrate, not an import's
    aggregate = build_aggregate(settings, upgrade=False, serving=False)
    database = aggregate.database
    report = import_nodes(database, entries, Policy(default_grain_s=settings.grain_s), progress=_progress_bar("nodes"))
    print(f"{report.added} node(s) added, {report.updated} updated, {report.unchanged} unchanged (from {url})")
    _record_nodes(settings, Inventory(database).list_nodes())
    inventory = omf_inventory(aggregate, settings.https_url(settings.aggregate_port))
    with database.read() as session:  # a node an older import stored under another spelling: book it as stored
        stored = stored_nodes(session)
    entries = [
        replace(entry, component_id=stored.get(entry.component_id, (entry.component_id, 0))[0]) for entry in entries
    ]
    leases, skipped = importer.broker_leases(nodes, entries, aggregate.clock())
    booked = importer.import_leases(leases, inventory.book_lease, inventory.has_lease, _progress_bar("leases"))
    print(
        f"{len(booked.booked)} lease(s) booked, {len(booked.already)} already booked, {len(booked.refused)} refused, "
        f"{skipped} past or cancelled left out"
    )
    for lease, reason in booked.refused:
        print(f"  lease {lease} refused: {reason}", file=sys.stderr)
    return 1 if booked.refused else 0


def _record_nodes(settings: Settings, nodes: Sequence[NodeRecord]) -> None:
    """Nodes named under the local authority become registry records of type node (registry/nodes.py)."""
    from sfa_omf.registry.authority import AuthorityError, LocalAuthority
    from sfa_omf.registry.nodes import record_nodes
    from sfa_omf.registry.records import Records

    try:
        authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    except AuthorityError:
        return  # no local authority in the data directory: no registry to keep in step
    report = record_nodes(authority, Records(command_database(settings)), nodes)
    if report.added:
        print(f"{len(report.added)} node record(s) added to the registry of {authority.hrn}")
    if report.foreign:
        print(
            f"not in the registry of {authority.hrn} (not named under it): {', '.join(report.foreign[:5])}"
            + (" ..." if len(report.foreign) > 5 else "")
        )
    for component_id, why in report.failed:  # still in the inventory; tried again at the next start or import
        print(f"no registry record for {component_id}: {why}", file=sys.stderr)


def _progress_bar(unit: str, width: int = 30) -> Callable[[int, int], None]:
    """A progress bar on standard error (redrawn in place on a terminal; a last line otherwise)."""
    interactive = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if not interactive and done != total:
            return
        filled = width * done // max(total, 1)
        end = "\n" if done == total else ""
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}", end=end, file=sys.stderr, flush=True)

    return show


def _node_add(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.inventory import Inventory, node_urn
    from sfa_omf.calendar.policy import Policy
    from sfa_omf.calendar.records import NodeSpec

    settings = command_settings(args)
    component_id = node_urn(args.component_id, settings.interface_hrn)
    images = []
    for text in args.image:
        name, _, rest = text.partition(":")
        os_name, _, version = rest.partition(":")
        images.append({"name": name, "os": os_name, "version": version})
    properties: dict[str, Any] = {}
    for text in args.property:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise BadArgs(f"--property {text!r}: expected KEY=VALUE, with a KEY")
        properties[key] = value
    spec = NodeSpec(
        component_id=component_id,
        component_name=args.name or component_id.rsplit("+", 1)[-1],
        pool=args.pool,
        hardware_type=args.hardware_type,
        exclusive=not args.shared,
        properties=properties,
        disk_images=tuple(images),
        grain_s=args.grain,
    )
    # The configured grain is the default of nodes added without their own.
    record = Inventory(command_database(settings), Policy(default_grain_s=settings.grain_s)).add_node(spec)
    print(f"added {record.component_id} to pool {record.pool} (slots of {record.grain_s} s)")
    _record_nodes(settings, [record])
    return 0


def _node_list(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.inventory import Inventory

    nodes = Inventory(_database(args)).list_nodes(pool=args.pool)
    if args.json:
        print(json.dumps([asdict(node) for node in nodes], indent=1))
        return 0
    print_table(
        ("COMPONENT_ID", "NAME", "POOL", "HARDWARE", "GRAIN", "STATE"),
        [_node_row(node) for node in nodes],
    )
    return 0


def _node_row(node: NodeRecord) -> tuple[str, ...]:
    return (node.component_id, node.component_name, node.pool, node.hardware_type, str(node.grain_s), node.state)


def _node_remove(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.agents import Agents
    from sfa_omf.calendar.inventory import Inventory
    from sfa_omf.registry.authority import AuthorityError, LocalAuthority
    from sfa_omf.registry.nodes import forget_node
    from sfa_omf.registry.records import Records

    settings = command_settings(args)
    database = command_database(settings)  # (nothing is removed when a later step would meet an older schema)
    args.component_id = _component_id(args, settings, database)
    inventory = Inventory(database)
    node = inventory.get_node(args.component_id)
    # Whether the node is an agent's, and the host name its VPN certificate, DNS names, OAR resource and staged
    # files go by, are the agent row's, read before the row goes with the node: not the node's hardware type and
    # name, which `node import --from-file` may have changed since (an agent's node left with its certificate
    # valid, or another agent's certificate revoked under the node's new name).
    agent = next((row for row in Agents(database).list_agents() if row.node == node.component_id), None)
    # An agent's node is also an OAR resource with the OAR backend: out of OAR's pool first (nothing is removed if
    # OAR cannot be told), back in its state before if the calendar refuses, deleted from OAR once the calendar let
    # it go. The node's VPN access and registry record go with it even when OAR fails that last step.
    oar = oar_agent_nodes(settings) if agent is not None else None
    before = oar.set_lost(agent.hostname, agent.number, True) if oar is not None and agent is not None else {}
    try:
        inventory.remove_node(args.component_id)
    except Exception:
        if oar is not None:
            oar.restore(before)
        raise
    print(f"removed {args.component_id}")
    # The node is out of the calendar: from here on each step is done as far as it can be, and one that fails is said
    # with what finishes it, the others done all the same (a VPN failure used to stop the removal before the DNS
    # names, staged files and registry record, leaving half a node), and the exit status 2.
    left: list[str] = []
    # A node agent's VPN access, DNS names and staged files go with the node (only agents get VPN certificates). The
    # VPN first, at once: the sooner the CRL names the node, the sooner its tunnel ends (its number is in quarantine
    # since the calendar's commit above).
    if agent is not None:
        try:
            if revoke_vpn_of_removed_node(settings, agent.hostname):
                print(f"revoked the VPN certificate of {agent.hostname}")
        except VpnFilesNotRewritten as exc:  # nothing of the node left: the host's CRL lacks others' revocations
            print(f"warning: {exc.message}", file=sys.stderr)
        except VpnRevocationLeft as exc:
            left.append(exc.message)
    if oar is not None and agent is not None:
        try:
            if oar.remove(agent.hostname, agent.number):
                print(f"removed its resource from OAR ({agent.hostname})")
        except GeniError as exc:  # it is Dead in OAR already: no job is given to it
            print(
                f"warning: its OAR resource ({agent.hostname}, Dead) could not be deleted: {exc.message}; delete it "
                "in OAR (oarremoveresource) or leave it: the node's next registration under this name replaces it",
                file=sys.stderr,
            )
    if agent is not None:
        _forget_agent_names(settings, database, agent.hostname)
        try:
            removed = _remove_staged_files(settings, agent.hostname)
        except OSError as exc:
            folders = os.path.join(settings.data_dir, "agent_files", "*", agent.hostname)
            left.append(f"its staged files are not all deleted: {os_error_text(exc)}; delete {folders} once fixed")
        else:
            if removed:
                print(f"removed its staged files ({removed} lease folder(s) under agent_files/)")
    try:
        authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    except AuthorityError:
        authority = None  # no local registry to keep in step
    if authority is not None and forget_node(authority, Records(database), args.component_id):
        print(f"removed its record from the registry of {authority.hrn}")
    if left:  # (exit 2 as a refusal's: the command's help says it may also mean this)
        print(f"{args.component_id} is removed but for what follows: {'; '.join(left)}", file=sys.stderr)
        return 2
    return 0


def _forget_agent_names(settings: Settings, database: Database, hostname: str) -> None:
    """Rewrite the nodes' DNS zone from the calendar, which no longer holds ``hostname`` (when the aggregate keeps a
    zone). A failed reload is a warning: the node is removed, and the next registration rewrites the zone."""
    if not settings.agent_dns_zone:
        return
    from sfa_omf.agents.dns import DnsZones, NodeName
    from sfa_omf.calendar.agents import Agents

    directory = os.path.join(settings.data_dir, "dns")
    zones = DnsZones.from_settings(directory, settings.agent_dns_zone, settings.agent_dns_reload)
    agents = Agents(database)
    try:
        # As the server's own rewrite after a failed registration: a registration between its rewrite and its
        # commit holds this lock, so its name is in the calendar when the zone is read here.
        with agents.testbed_lock() as exclusive:
            exclusive()
            zones.publish([NodeName(*row) for row in agents.names()])
    except (GeniError, OSError) as exc:  # (a zone file that cannot be written: a full or read-only disk)
        print(
            f"warning: {hostname} is still in the DNS zone {settings.agent_dns_zone}: {error_text(exc)}; the next "
            "registration of any node rewrites the zone without it",
            file=sys.stderr,
        )
        return
    print(f"removed its DNS names from the zone {settings.agent_dns_zone}")


def _remove_staged_files(settings: Settings, hostname: str) -> int:
    """Delete the node's staged files (DATA_DIR/agent_files/<lease>/<hostname>/): with its slivers gone no command
    reaches them any more. Returns how many lease folders held some."""
    from sfa_omf.calendar.agents import HOSTNAME

    if not HOSTNAME.fullmatch(hostname):  # not an agent's name: nothing of it is there (and no pattern in the glob)
        return 0
    removed = 0
    for folder in sorted((Path(settings.data_dir) / "agent_files").glob(f"*/{hostname}")):
        shutil.rmtree(folder)
        removed += 1
        with contextlib.suppress(OSError):  # the lease's folder goes too, once no other node has files in it
            folder.parent.rmdir()
    return removed


def _component_id(args: argparse.Namespace, settings: Settings, database: Database) -> str:
    """The node args.component_id names: a bare name is made a URN under this authority as ``node add`` makes it
    (BadArgs for a name node add refuses); a URN stored as typed is taken as it is (a node stored under another
    authority, imported before these checks or from a broker, can still be removed or changed); any other spelling
    of a URN (``URN:...+NODE+x``) finds the node stored under its canonical form, or under another spelling of it."""
    from sqlalchemy import select

    from sfa_omf.calendar.bulk_import import stored_nodes
    from sfa_omf.calendar.inventory import node_urn
    from sfa_omf.calendar.models import Node
    from sfa_omf.xrn import is_urn, parse_urn

    text: str = args.component_id
    if not is_urn(text):
        return node_urn(text, settings.interface_hrn)
    try:
        canonical = str(parse_urn(text))
    except BadArgs:
        return text  # not a URN the grammar takes: looked up as typed (the lookup says there is no such node)
    with database.read() as session:
        if session.scalar(select(Node.id).where(Node.component_id == text)) is not None:
            return text
        found = stored_nodes(session).get(canonical)
    return found[0] if found is not None else canonical


def _node_set_state(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.inventory import Inventory

    settings = command_settings(args)
    database = command_database(settings)
    record = Inventory(database).set_state(_component_id(args, settings, database), args.state)
    if record.state != args.state:  # usable asked for a node whose agent is silent: lost until it is heard
        print(
            f"{record.component_id} is {record.state}: its agent has not been heard within the time-out; it becomes "
            "usable at the agent's next heartbeat (sfa-omf node agents shows when it was last heard)"
        )
        return 0
    print(f"{record.component_id} is {record.state}")
    return 0


def _pool_create(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.inventory import Inventory

    record = Inventory(_database(args)).create_pool(args.name, federated=not args.private, description=args.description)
    print(f"created pool {record.name} ({'federated' if record.federated else 'private'})")
    return 0


def _pool_list(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.inventory import Inventory

    pools = Inventory(_database(args)).list_pools()
    if args.json:
        print(json.dumps([asdict(pool) for pool in pools], indent=1))
        return 0
    print_table(
        ("POOL", "FEDERATED", "NODES", "DESCRIPTION"),
        [(pool.name, "yes" if pool.federated else "no", str(pool.node_count), pool.description) for pool in pools],
    )
    return 0


def _pool_move(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.inventory import Inventory

    settings = command_settings(args)
    inventory = Inventory(command_database(settings))
    record = inventory.move_node(
        _component_id(args, settings, inventory.database), args.to_pool, from_pool=args.from_pool
    )
    print(f"{record.component_id} is now in pool {record.pool}")
    return 0


def _account_map(args: argparse.Namespace) -> int:
    from sfa_omf.registry.accounts import Accounts

    record = Accounts(_database(args)).pin(args.urn, args.login)
    print(f"{record.urn} logs in as {record.login} (pinned)")
    return 0


def _account_list(args: argparse.Namespace) -> int:
    from sfa_omf.registry.accounts import Accounts

    records = Accounts(_database(args)).list()
    if args.json:
        print(json.dumps([asdict(record) for record in records], indent=1))
        return 0
    print_table(("URN", "LOGIN", "PINNED"), [(r.urn, r.login, "yes" if r.pinned else "no") for r in records])
    return 0


def _slice_urn(text: str, settings: Settings, slices: Slices) -> str:
    """The slice URN ``text`` names, read as the registry's ``slice`` commands read a name (RegistryAdmin.hrn): a
    URN as typed (the calendar keeps the URN the slice booked with), a full HRN under the authority, or a name
    under it (``exp1`` -> urn:publicid:IDN+AUTHORITY+slice+exp1). A dotted name not under the authority may also be
    another authority's HRN (``ple.upmc.exp1``, a federated slice): the reading the calendar holds a slice for is
    taken; neither or both: refused, naming both readings."""
    from sfa_omf.xrn import hrn_to_urn, is_urn, join_hrn, shown_urn, split_hrn

    if is_urn(text):
        return text
    authority = settings.interface_hrn
    if text == authority or text.startswith(authority + "."):
        return hrn_to_urn(text, "slice")
    local = hrn_to_urn(join_hrn([*split_hrn(authority), text]), "slice")
    if "." not in text:
        return local
    try:
        foreign = hrn_to_urn(text, "slice")
    except BadArgs:  # not an HRN (an empty part): only the name under the authority
        return local
    held = [urn for urn in (local, foreign) if slices.holds(urn)]
    if len(held) == 1:
        return held[0]
    # (shown_urn: a name of any length or character is said in a line of bounded length)
    as_local = f"{shown_urn(local)} (a name under {authority})"
    as_foreign = f"{shown_urn(foreign)} (another authority's HRN)"
    if not held:
        raise GeniError(
            Reason.NOT_FOUND, f"no slice named {shown_urn(text)} has anything here: neither {as_local} nor {as_foreign}"
        )
    raise BadArgs(f"{shown_urn(text)} names two slices here, {as_local} and {as_foreign}: give the slice's URN")


def _slice_release(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.slices import Slices

    settings = command_settings(args)
    slices = Slices(command_database(settings))
    record = slices.set_shut_down(_slice_urn(args.slice_urn, settings, slices), False)
    print(f"{record.urn} may book again")
    return 0


def _slice_shutdown(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.booking import Bookings
    from sfa_omf.calendar.slices import Slices
    from sfa_omf.notify.alerts import Alerts, operator_of
    from sfa_omf.xrn import hrn_to_urn

    settings = command_settings(args)
    database = command_database(settings)
    args.slice_urn = _slice_urn(args.slice_urn, settings, Slices(database))
    bookings = Bookings(database)
    leases = bookings.leases(slice_urn=args.slice_urn)
    # Their users are told who cancelled them and why (not as after their own Delete): noted before the cancellation.
    Alerts(database).cancelling(
        args.slice_urn,
        [lease.id for lease in leases],
        operator_of(hrn_to_urn(settings.interface_hrn, "authority+am")),
        "slice shut down",
        "Contact the operator to know why and when the slice may book again",
    )
    cancelled = [bookings.cancel(lease.id) for lease in leases]
    Slices(database).set_shut_down(args.slice_urn, True)
    print(f"{args.slice_urn} is shut down: {len(cancelled)} lease(s) cancelled; sfa-omf slice release undoes the ban")
    return 0


def _lease_json(lease: LeaseRecord) -> dict[str, Any]:
    from sfa_omf.times import format_time

    return {
        "id": lease.id,
        "slice": lease.slice_urn,
        "owner": lease.owner_urn,
        "start": format_time(lease.start),
        "end": format_time(lease.end),
        "state": lease.state,
        "nodes": list(lease.nodes),
        "slivers": [
            {
                "urn": sliver.urn,
                "node": sliver.node,
                "allocation_state": sliver.allocation_state,
                "operational_state": sliver.operational_state,
                "expires": format_time(sliver.expires),
            }
            for sliver in lease.slivers
        ],
    }


def _lease_list(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.booking import Bookings
    from sfa_omf.times import format_time, parse_time

    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    if start is not None and end is not None and start > end:
        raise BadArgs(
            f"--from {format_time(start)} is later than --to {format_time(end)}: no lease could match; swap them"
        )
    settings = command_settings(args)
    database = command_database(settings)
    node = None
    if args.node:  # a bare name, or another spelling of a URN, names the node as the node commands take it
        node = _component_id(argparse.Namespace(component_id=args.node), settings, database)
    leases = Bookings(database).leases(node=node, slice_urn=args.slice, start=start, end=end, active_only=not args.all)
    if args.json:
        print(json.dumps([_lease_json(lease) for lease in leases], indent=1))
        return 0
    print_table(
        ("START", "END", "STATE", "SLICE", "NODES", "LEASE"),
        [
            (
                format_time(lease.start),
                format_time(lease.end),
                lease.state,
                lease.slice_urn,
                " ".join(lease.nodes),
                lease.id,
            )
            for lease in leases
        ],
    )
    return 0
