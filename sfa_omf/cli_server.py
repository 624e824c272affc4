"""``sfa-omf serve`` and ``sfa-omf quickstart``: run the aggregate in the foreground until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import CONFIG_FILE_NAME, Settings, read_config
from sfa_omf.errors import BadArgs
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import (
    DEFAULT_AUTHORITY,
    DEMO_SLICE,
    SSH_KEY_NAME,
    init_directory,
    register_demo,
    write_example_requests,
)
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
    requests = write_example_requests(
        report.directory,
        [node.component_id for node in aggregate.inventory.list_nodes(federated_only=True)],
        aggregate.clock(),
        timedelta(seconds=settings.grain_s),
        timedelta(seconds=settings.default_duration_s),
    )
    print(first_steps(report.directory, settings, report.sfi_dirs["alice"], requests))
    sys.stdout.flush()
    return serve_forever(settings)


def first_steps(directory: str, settings: Settings, sfi: str, requests: Sequence[str]) -> str:
    """What quickstart prints: where things are and the whole flow, with absolute paths (sfi.py reads a relative
    RSpec path from its -d folder, so a bare request.xml would not be found)."""
    auth = settings.interface_hrn
    slice_hrn = f"{auth}.{DEMO_SLICE}"
    url = f"https://{settings.aggregate_host}:{settings.aggregate_port}/"
    user_files = os.path.join(sfi, f"{auth}.alice")
    sfi_py = f"sfi.py -d {sfi}"
    request = requests[0] if requests else "REQUEST.xml"
    lines = [
        f"sfa-omf aggregate {hrn_to_urn(auth, 'authority+am')} on {url} (AM API v3; v2 at {url}am2)",
        f"  registry of {auth} on https://{settings.registry_host}:{settings.registry_port}/",
        f"  authority directory: {directory} (sfa-omf node list --config {os.path.join(directory, CONFIG_FILE_NAME)})",
        "  example requests (rewritten at each start, their times ahead):",
        *(f"    {path}" for path in requests),
        "  try, with the public sfi.py (Python 3 port); a tutorial is in docs/experimenters.md:",
        f"    {sfi_py} version",
        f"    {sfi_py} list -t node {auth}",
        f"    {sfi_py} resources",
        f"    {sfi_py} resources -l all",
        f"    {sfi_py} allocate {slice_hrn} {request}",
        f"    {sfi_py} describe {slice_hrn}",
        f"    {sfi_py} provision {slice_hrn}",
        f"    {sfi_py} status {slice_hrn}",
        f"    {sfi_py} renew {slice_hrn} +2h",
        f"    {sfi_py} delete {slice_hrn}",
        f"  log in as the manifest's <login> says, with {os.path.join(sfi, SSH_KEY_NAME)}",
        "  or with omni, with the same certificate and key:",
        f"    omni -a {url} --cert {user_files}.user.gid --key {user_files}.pkey getversion",
        "  Stop with Ctrl-C.",
    ]
    return "\n".join(lines)
