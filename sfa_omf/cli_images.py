"""Operator commands for the image repository, ``sfa-omf image add|remove|publish|list|show``, and for the containers of
leases on this host, ``sfa-omf instance list``.

add, remove and publish change the store: only members of ``[sfa_omf] image_group`` may (checked on the Unix user
running the command, before anything is read or written). list and show are open to everybody who can read the
configuration.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sfa_omf.cli_common import command_database, command_group, command_settings, print_table
from sfa_omf.config import CONFIG_FILE_NAME
from sfa_omf.errors import BadArgs
from sfa_omf.times import format_time, utcnow

if TYPE_CHECKING:
    from sfa_omf.config import Settings
    from sfa_omf.images.records import ImageRecord
    from sfa_omf.images.store import ImageStore


def add_image_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``image add|remove|publish|list|show``."""
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    image = command_group(commands, "image", "the disk image repository")

    add = image.add_parser("add", parents=[config_option], help="copy a disk image file into the repository")
    add.add_argument("file", help="the image file")
    add.add_argument("--label", required=True, help="the name requests use (<disk_image name=...>)")
    add.add_argument("--os", default="", help="operating system, e.g. Debian")
    add.add_argument("--os-version", default="", help="its version, e.g. 12")
    add.add_argument("--description", default="")
    add.add_argument(
        "--hardware-type",
        action="append",
        default=[],
        help="only nodes of this hardware type can run it (repeatable; default: every node)",
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=_image_add)

    remove = image.add_parser("remove", parents=[config_option], help="remove an image no current or future lease uses")
    remove.add_argument("label")
    remove.set_defaults(handler=_image_remove)

    publish = image.add_parser(
        "publish", parents=[config_option], help="make an image saved from a container usable by everybody"
    )
    publish.add_argument("label")
    publish.set_defaults(handler=_image_publish)

    listing = image.add_parser("list", parents=[config_option], help="list the images")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_image_list)

    show = image.add_parser("show", parents=[config_option], help="one image: file, checksum, size, who, when, leases")
    show.add_argument("label")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_image_show)

    instance = command_group(commands, "instance", "containers inside bookings")
    instances = instance.add_parser(
        "list", parents=[config_option], help="the containers of leases: lease, node, state, address"
    )
    instances.add_argument("--lxc-path", help="LXC's container directory (default: [sfa_omf] instance_lxc_path)")
    instances.add_argument("--all", action="store_true", help="also the destroyed containers of past leases")
    instances.add_argument("--json", action="store_true")
    instances.set_defaults(handler=_instance_list)
    signing = instance.add_parser(
        "signing-key",
        parents=[config_option],
        help="print the line OAR nodes put in /etc/sfa-omf/plan-signers (the key is made if missing)",
    )
    signing.add_argument(
        "--key",
        help="the private key file, made if missing in an existing directory (default: [sfa_omf] plan_signing_key)",
    )
    signing.set_defaults(handler=_instance_signing_key)


def _instance_signing_key(args: argparse.Namespace) -> int:
    from sfa_omf.images.plan_signing import PlanSigner

    if args.key and not os.path.isdir(os.path.dirname(os.path.abspath(args.key))):
        # A mistyped --key made its directories and a new key, and printed a line no plan is signed with. A key in
        # an existing directory is made there on first use (the OAR rig's set-up makes it so).
        raise BadArgs(
            f"--key {args.key}: no such directory {os.path.dirname(os.path.abspath(args.key))} (without --key, "
            "[sfa_omf] plan_signing_key is used, made on first use)"
        )
    path = args.key or command_settings(args).plan_signing_key_path
    print(PlanSigner(path).public_line())
    return 0


def _store(settings: Settings) -> ImageStore:
    from sfa_omf.images.store import ImageStore, store_directory

    return ImageStore(command_database(settings), store_directory(settings.data_dir))


def _image_add(args: argparse.Namespace) -> int:
    from sfa_omf.images.operators import check_image_operator

    settings = command_settings(args)
    login = check_image_operator(settings.image_group)  # first: a refused user reads and writes nothing
    record = _store(settings).add(
        args.file,
        args.label,
        added_by=login,
        now=utcnow(),
        os_name=args.os,
        version=args.os_version,
        description=args.description,
        hardware_types=args.hardware_type,
    )
    if args.json:
        print(json.dumps(_as_json(record), indent=1))
    else:
        print(f"added image {record.label}: {record.size} bytes, sha256 {record.sha256}, stored as {record.path}")
    return 0


def _image_remove(args: argparse.Namespace) -> int:
    from sfa_omf.images.operators import check_image_operator

    settings = command_settings(args)
    check_image_operator(settings.image_group)
    record = _store(settings).remove(args.label, utcnow())
    print(f"removed image {record.label} ({record.size} bytes, sha256 {record.sha256})")
    return 0


def _image_publish(args: argparse.Namespace) -> int:
    from sfa_omf.images.operators import check_image_operator

    settings = command_settings(args)
    check_image_operator(settings.image_group)
    record = _store(settings).publish(args.label)
    print(f"published image {record.label} (saved by {record.added_by}): every user may now use it")
    return 0


def _image_list(args: argparse.Namespace) -> int:
    images = _store(command_settings(args)).images()
    if args.json:
        print(json.dumps([_as_json(record) for record in images], indent=1))
        return 0
    rows = [
        (
            record.label,
            " ".join(part for part in (record.os, record.version) if part),
            str(record.size),
            record.sha256[:16],
            ",".join(record.hardware_types) or "any",
            record.added_by,
            format_time(record.added),
            "private" if record.private else "public",
        )
        for record in images
    ]
    print_table(("LABEL", "OS", "SIZE", "SHA256", "HARDWARE", "ADDED_BY", "ADDED", "ACCESS"), rows)
    return 0


def _image_show(args: argparse.Namespace) -> int:
    store = _store(command_settings(args))
    record = store.show(args.label)
    uses = store.uses(args.label, utcnow())
    answer = _as_json(record)
    answer["leases"] = [
        {
            "lease_id": use.lease_id,
            "slice_urn": use.slice_urn,
            "state": use.state,
            "start": format_time(use.start),
            "end": format_time(use.end),
            "nodes": list(use.nodes),
        }
        for use in uses
    ]
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    for key, value in answer.items():
        if key != "leases":
            print(f"{key + ':':16}{value}")
    print(f"{'leases:':16}{len(uses) or 'none current or future'}")
    for use in uses:
        print(f"  {use.lease_id}  {use.state}  {format_time(use.start)}..{format_time(use.end)}  {use.slice_urn}")
    return 0


def _as_json(record: ImageRecord) -> dict[str, Any]:
    answer = asdict(record)
    answer["hardware_types"] = list(record.hardware_types)
    answer["added"] = format_time(record.added)
    return answer


def _instance_list(args: argparse.Namespace) -> int:
    """The recorded containers (the calendar's rows) with what LXC says of each, and any container of ours on this
    host that no row names (left by a crash: the server's next round destroys it)."""
    from sfa_omf.images.instances import Instances
    from sfa_omf.images.lxc import LxcHost

    settings = command_settings(args)
    host = LxcHost("", lxc_path=args.lxc_path or settings.instance_lxc_path)  # listing needs no bridge
    store = _store(settings)
    rows = Instances(store.database, None, settings.instance_network, store).listing(live_only=not args.all)
    on_host = {record.name: record for record in host.instances()}
    listed = [
        {
            "name": row.name,
            "lease": row.lease_id,
            "node": row.node,
            "image": row.image,
            "state": row.state,
            "lxc": on_host[row.name].state if row.name in on_host else "",
            "address": row.address,
            "error": row.error,
        }
        for row in rows
    ]
    known = {row.name for row in rows}
    listed += [
        {"name": name, "lease": record.lease_id, "node": "", "image": "", "state": "unrecorded",
         "lxc": record.state, "address": record.address, "error": "no current lease has it"}
        for name, record in on_host.items()
        if name not in known
    ]  # fmt: skip
    if args.json:
        print(json.dumps(listed, indent=1))
        return 0
    print_table(
        ("NAME", "LEASE", "NODE", "STATE", "LXC", "ADDRESS"),
        [
            (item["name"], item["lease"] or "-", item["node"] or "-", item["state"], item["lxc"] or "-",
             item["address"] or "-")
            for item in listed
        ],
    )  # fmt: skip
    return 0
