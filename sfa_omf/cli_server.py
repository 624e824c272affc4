"""``sfa-omf serve`` and ``sfa-omf quickstart``: run the aggregate in the foreground until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import CONFIG_FILE_NAME, read_config
from sfa_omf.errors import BadArgs
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import DEFAULT_AUTHORITY, DEMO_SLICE, init_directory, register_demo
from sfa_omf.registry.nodes import record_nodes
from sfa_omf.registry.records import Records
from sfa_omf.server.app import build_aggregate, serve_forever
from sfa_omf.xrn import hrn_to_urn

DEMO_NODES = 5


def add_server_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="serve the aggregate (AM API v3 over TLS) until interrupted")
    serve.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    serve.set_defaults(handler=_serve)
    quick = commands.add_parser(
        "quickstart", help="init DIR if needed, add a demo inventory, and serve it on 127.0.0.1 (the embedded default)"
    )
    quick.add_argument("directory", nargs="?", default="demo")
    quick.add_argument("--authority", default=DEFAULT_AUTHORITY)
    quick.set_defaults(handler=_quickstart)


def _logging(log_file: str) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=logging.INFO, handlers=[handler], format="%(asctime)s %(name)s %(message)s")


def _serve(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("SFA_OMF_CONFIG") or CONFIG_FILE_NAME
    if not os.path.exists(path):
        raise BadArgs(
            f"no configuration file {path}: give --config FILE (sfa-omf init DIR writes DIR/{CONFIG_FILE_NAME})"
        )
    settings = read_config(path)
    _logging(settings.log_file)
    return serve_forever(settings)


def _quickstart(args: argparse.Namespace) -> int:
    report = init_directory(args.directory, args.authority, ("alice", "bob"))
    settings = read_config(os.path.join(report.directory, CONFIG_FILE_NAME))
    _logging(settings.log_file)
    aggregate = build_aggregate(settings)
    register_demo(report, aggregate.database)
    if not aggregate.inventory.list_nodes():
        for number in range(1, DEMO_NODES + 1):
            name = f"node{number}"
            aggregate.inventory.add_node(
                NodeSpec(hrn_to_urn(f"{settings.interface_hrn}.{name}", "node"), name, hardware_type="demo")
            )
    # The nodes are registry records too (sfi.py list -t node AUTH); serve would record them, this says so now.
    authority = LocalAuthority.load(report.directory, settings.interface_hrn)
    record_nodes(authority, Records(aggregate.database), aggregate.inventory.list_nodes())
    sfi = report.sfi_dirs["alice"]
    slice_hrn = f"{settings.interface_hrn}.{DEMO_SLICE}"
    print(f"sfa-omf aggregate {aggregate.settings.urn} on https://{settings.aggregate_host}:{settings.aggregate_port}/")
    print(f"  registry of {settings.interface_hrn} on https://{settings.registry_host}:{settings.registry_port}/")
    print(f"  authority directory: {report.directory} (sfa-omf node list --config {report.directory}/sfa-omf.conf)")
    print("  try, with the public sfi.py (Python 3 port):")
    print(f"    sfi.py -d {sfi} version")
    print(f"    sfi.py -d {sfi} resources")
    print(f"    sfi.py -d {sfi} allocate {slice_hrn} request.xml   # an RSpec with ol:lease time slots")
    print(f"    sfi.py -d {sfi} provision {slice_hrn}")
    print(f"    sfi.py -d {sfi} status {slice_hrn}")
    print("  or with omni (AM API v3; v2 at /am2), with the same certificate and key:")
    user_files = f"{sfi}/{settings.interface_hrn}.alice"
    url = f"https://{settings.aggregate_host}:{settings.aggregate_port}/"
    print(f"    omni -a {url} --cert {user_files}.user.gid --key {user_files}.pkey getversion")
    print("  Stop with Ctrl-C.")
    sys.stdout.flush()
    return serve_forever(settings)
