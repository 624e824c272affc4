"""Operator commands for the local registry: ``sfa-omf user|slice|trust ...``.

Each reads the configuration (``--config FILE``, default $SFA_OMF_CONFIG or ./sfa-omf.conf): the authority lives in
its data_dir, the records in the calendar's database. A running server sees the changes on its next call; a root
added with ``trust add-root`` within seconds (it looks at the trusted-roots directory every few seconds, and at once
on SIGHUP).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sfa_omf.cli_common import command_group, command_settings
from sfa_omf.config import CONFIG_FILE_NAME
from sfa_omf.errors import BadArgs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sfa_omf.registry.admin import RegistryAdmin
    from sfa_omf.registry.records import Record


def add_registry_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    slices: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """``user`` and ``trust`` commands, and the registry's part of ``slice`` (``slices``: its sub-commands)."""
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    json_option = argparse.ArgumentParser(add_help=False)
    json_option.add_argument("--json", action="store_true", help="print JSON")

    user = command_group(commands, "user", "the local authority's users")
    add = user.add_parser("add", parents=[config_option], help="register a user (and write an sfi.py directory)")
    add.add_argument("name", help="a name under the authority (alice) or a full HRN (testbed.alice)")
    add.add_argument("--email", default="")
    add.add_argument("--ssh-key", action="append", default=[], help="an SSH public key file (repeatable)")
    add.add_argument("--public-key", help="the user's own RSA public key or certificate (PEM): no key pair is made")
    add.add_argument("--pi", action="store_true", help="a PI: gets the authority's credential (GetCredential)")
    add.set_defaults(handler=_user_add)
    listing = user.add_parser("list", parents=[config_option, json_option], help="list users")
    listing.set_defaults(handler=_list, kind="user")
    show = user.add_parser("show", parents=[config_option, json_option], help="show a record (user, slice, ...)")
    show.add_argument("name")
    show.set_defaults(handler=_show)
    remove = user.add_parser("remove", parents=[config_option], help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(handler=_remove, kind="user")
    add_key = user.add_parser("add-key", parents=[config_option], help="add an SSH public key to a user")
    add_key.add_argument("name")
    add_key.add_argument("key_file", help="an SSH public key file (e.g. ~/.ssh/id_ed25519.pub)")
    add_key.set_defaults(handler=_user_add_key)
    user_renew = user.add_parser(
        "renew", parents=[config_option], help="re-issue a user's certificate (GID) with the same key, for longer"
    )
    user_renew.add_argument("name")
    user_renew.add_argument("--days", type=_days, default=None, help="how long it lasts from now (default 1825)")
    user_renew.set_defaults(handler=_user_renew)

    create = slices.add_parser("create", parents=[config_option], help="register a slice with its researchers")
    create.add_argument("name", help="a name under the authority (myslice) or a full HRN")
    create.add_argument("--researcher", action="append", default=[], help="a user (repeatable)")
    create.add_argument("--expires", help="RFC 3339, epoch or +Nd (default: 30 days from now)")
    create.set_defaults(handler=_slice_create)
    slice_list = slices.add_parser("list", parents=[config_option, json_option], help="list registered slices")
    slice_list.set_defaults(handler=_list, kind="slice")
    renew = slices.add_parser("renew", parents=[config_option], help="give a registered slice a new expiry")
    renew.add_argument("name")
    renew.add_argument("expires", help="RFC 3339, epoch or +Nd")
    renew.set_defaults(handler=_slice_renew)
    slice_remove = slices.add_parser("remove", parents=[config_option], help="remove a registered slice")
    slice_remove.add_argument("name")
    slice_remove.set_defaults(handler=_remove, kind="slice")
    researcher = slices.add_parser("add-researcher", parents=[config_option], help="add a user to a slice")
    researcher.add_argument("name")
    researcher.add_argument("user")
    researcher.set_defaults(handler=_slice_add_researcher)

    authority = command_group(commands, "authority", "the local authority's own certificates")
    authority_renew = authority.add_parser(
        "renew",
        parents=[config_option],
        help="re-issue the authority's root GID with the same key, and the aggregate's and users' GIDs under it",
    )
    authority_renew.add_argument(
        "--days", type=_days, default=None, help="how long the root lasts from now (default 1825)"
    )
    authority_renew.set_defaults(handler=_authority_renew)

    trust = command_group(commands, "trust", "the authorities this testbed trusts")
    add_root = trust.add_parser("add-root", parents=[config_option], help="trust another authority's root GID")
    add_root.add_argument("file", help="the authority's root GID or certificate (PEM)")
    add_root.set_defaults(handler=_trust_add_root)
    roots = trust.add_parser("list", parents=[config_option, json_option], help="list the trusted roots")
    roots.set_defaults(handler=_trust_list)


def _days(text: str) -> int:
    """--days: a whole number of days, 1 or more."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1 or days > 36500:
        raise argparse.ArgumentTypeError(f"{days} days: give 1 to 36500")
    return days


def _lifetime(days: int | None) -> timedelta:
    from sfa_omf.trust.pki import DEFAULT_GID_LIFETIME

    return DEFAULT_GID_LIFETIME if days is None else timedelta(days=days)


def _admin(args: argparse.Namespace) -> RegistryAdmin:
    from sfa_omf.calendar.database import Database
    from sfa_omf.registry.admin import RegistryAdmin
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.registry.records import Records

    settings = command_settings(args)
    database = Database(settings.calendar_url)
    database.require_current_schema()
    authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    return RegistryAdmin(authority, Records(database), settings)


def _facts(record: Record) -> dict[str, Any]:
    from sfa_omf.times import format_time

    facts: dict[str, Any] = {"hrn": record.hrn, "type": record.type, "urn": record.urn}
    if record.type == "user":
        facts.update(email=record.email, ssh_keys=list(record.keys))
    if record.type == "slice":
        facts.update(
            researchers=list(record.researchers), expires=format_time(record.expires) if record.expires else ""
        )
    if record.type == "authority":
        facts.update(pis=list(record.pis))
    return facts


def _print_record(record: Record, as_json: bool) -> None:
    facts = _facts(record)
    if as_json:
        print(json.dumps(facts, indent=1))
        return
    for key, value in facts.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:12} {shown if shown != '' else '-'}")


def _read_ssh_key(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def _read_public_key(path: str) -> rsa.RSAPublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sfa_omf.trust.gid import load_gid_chain

    with open(path, "rb") as handle:
        data = handle.read()
    key: Any
    if b"CERTIFICATE" in data:
        key = load_gid_chain(data)[0].certificate.public_key()
    else:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:  # cryptography's words name neither the file nor what is expected
            raise BadArgs(
                f"{path}: not a PEM public key (-----BEGIN PUBLIC KEY-----) nor a certificate; "
                "openssl rsa -in KEY -pubout writes one"
            ) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadArgs(f"{path}: an RSA public key is needed (SFA's GIDs are RSA)")
    return key


def _user_add(args: argparse.Namespace) -> int:
    from sfa_omf.registry.bootstrap import SSH_KEY_NAME

    admin = _admin(args)
    public_key = _read_public_key(args.public_key) if args.public_key else None
    new = admin.add_user(
        args.name, args.email, [_read_ssh_key(path) for path in args.ssh_key], public_key=public_key, pi=args.pi
    )
    if new.sfi_dir:
        omni_config = _write_client_files(admin, new.record.hrn, new.sfi_dir, args.ssh_key)
    print(f"registered user {new.record.hrn} ({new.record.urn})")
    if new.sfi_dir:
        print(f"  sfi.py directory with the private key: {new.sfi_dir}  (sfi.py -d {new.sfi_dir} ...)")
        if not args.ssh_key:
            print(f"  SSH key pair (its public key registered): {os.path.join(new.sfi_dir, SSH_KEY_NAME)}")
        print(f"  omni: omni -c {omni_config} -V3 listresources")
    return 0


def _write_client_files(admin: RegistryAdmin, hrn: str, sfi_dir: str, ssh_key_files: list[str]) -> str:
    """Beside the sfi.py files add_user wrote, what init writes for its demo users, so that omni and logins work at
    once as docs/experimenters.md says: an SSH key pair, registered with the user (none when the operator gave the
    user's own keys), and an omni_config; the omni_config's path. All or nothing, as add_user: on a failure the
    user, their GID and directory go again."""
    from sfa_omf.registry.bootstrap import OMNI_CONFIG_NAME, InitReport, ssh_public_key_in, write_client_files
    from sfa_omf.registry.sfi_dirs import delete_sfi_dir

    try:
        report = InitReport("", admin.authority.hrn)
        write_client_files(sfi_dir, admin.authority.hrn, hrn, admin.settings, report, ssh_key_files)
        public = None if ssh_key_files else ssh_public_key_in(sfi_dir)
        record = admin.records.get(hrn)
        if public is not None and record is not None and public not in record.keys:
            admin.records.update(hrn, keys=[*record.keys, public])
    except BaseException:
        admin.records.remove(hrn, retire=False)  # nobody held the name yet: no login to retire (as add_user undoes)
        delete_sfi_dir(sfi_dir)
        admin.authority.forget(hrn)
        raise
    return os.path.join(sfi_dir, OMNI_CONFIG_NAME)


def _user_add_key(args: argparse.Namespace) -> int:
    record = _admin(args).add_key(args.name, _read_ssh_key(args.key_file))
    print(f"{record.hrn} has {len(record.keys)} SSH key(s)")
    return 0


def _user_renew(args: argparse.Namespace) -> int:
    from sfa_omf.times import format_time

    renewed = _admin(args).renew_user(args.name, _lifetime(args.days))
    hrn = renewed.record.hrn
    print(f"re-issued the certificate of {hrn} with the same key: valid until {format_time(renewed.gid.not_after)}")
    print("  its record, SSH keys, slices and sfi.py directory are kept")
    for path in renewed.rewritten:
        print(f"  rewrote {path}")
    for path in renewed.dropped:
        print(f"  deleted the cached credential {path} (it names the earlier certificate; sfi.py fetches a new one)")
    print(f"  a user holding their own copy of the certificate gets the new one with sfi.py show {hrn} (gid)")
    return 0


def _authority_renew(args: argparse.Namespace) -> int:
    from sfa_omf.times import format_time

    renewed = _admin(args).renew_authority(_lifetime(args.days))
    root = renewed.root
    print(f"renewed the root GID of {root.hrn} with the same key: valid until {format_time(root.not_after)}")
    print(f"  {renewed.root_path} and its trusted copy {renewed.trusted_copy} rewritten")
    if renewed.aggregate is not None:
        print(f"  the aggregate's GID (am.gid) re-issued, valid until {format_time(renewed.aggregate.not_after)}")
    print(
        f"  {len(renewed.reissued)} GID(s) it issued (users, slices, nodes) re-issued with their keys, "
        f"{len(renewed.rechained)} kept with the renewed root in their chain; the registry's records updated"
    )
    if renewed.dropped:
        print(f"  {len(renewed.dropped)} cached credential(s) in users' sfi.py directories deleted (fetched anew)")
    print("  restart sfa-omf serve: it reads the authority's and the aggregate's certificates when it starts")
    print(
        f"  peers must trust the renewed root: send them {renewed.root_path}; on each sfa-omf peer: "
        "sfa-omf trust add-root FILE (it replaces the earlier root: the same key); an SFA or gcf peer puts it in "
        "its trusted roots in place of the earlier one"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    records = _admin(args).list(args.kind)
    if args.json:
        print(json.dumps([_facts(record) for record in records], indent=1))
        return 0
    for record in records:
        facts = _facts(record)
        extra = (
            f"{len(record.keys)} key(s)  {record.email}"
            if record.type == "user"
            else f"expires {facts['expires'] or '-'}  researchers {', '.join(record.researchers) or '-'}"
        )
        print(f"{record.hrn:40} {extra}")
    return 0


def _show(args: argparse.Namespace) -> int:
    _print_record(_admin(args).get(args.name), args.json)
    return 0


def _remove(args: argparse.Namespace) -> int:
    removed = _admin(args).remove(args.name, args.kind)
    record = removed.record
    print(f"removed {record.type} {record.hrn} (its GID stays valid until it expires; it is no longer registered)")
    for directory in removed.deleted_dirs:
        print(f"  deleted its sfi.py directory {directory} (with its private key)")
    if removed.retired_login and removed.login_used_by:
        print(
            f"  its local login {removed.retired_login} is still used by {', '.join(removed.login_used_by)} "
            "(pinned for them too): keep its Unix account"
        )
    elif removed.retired_login:
        print(
            f"  its local login {removed.retired_login} is retired: nobody registered later under this name gets it "
            "(the Unix account, if one was made, stays with its home directory: userdel -r it when it is no longer "
            "needed)"
        )
    return 0


def _slice_create(args: argparse.Namespace) -> int:
    from sfa_omf.times import format_time, parse_time, utcnow

    expires = parse_time(args.expires, now=utcnow()) if args.expires else None
    record = _admin(args).create_slice(args.name, args.researcher, expires)
    print(f"registered slice {record.hrn}, expires {format_time(record.expires) if record.expires else '-'}")
    return 0


def _slice_renew(args: argparse.Namespace) -> int:
    from sfa_omf.times import format_time, parse_time, utcnow

    record = _admin(args).renew_slice(args.name, parse_time(args.expires, now=utcnow()))
    print(f"slice {record.hrn} now expires {format_time(record.expires) if record.expires else '-'}")
    return 0


def _slice_add_researcher(args: argparse.Namespace) -> int:
    record = _admin(args).add_researcher(args.name, args.user)
    print(f"slice {record.hrn}: researchers {', '.join(record.researchers)}")
    return 0


def _trust_add_root(args: argparse.Namespace) -> int:
    from sfa_omf.times import format_time, utcnow
    from sfa_omf.trust.roots import trust_root

    settings = command_settings(args)
    with open(args.file, "rb") as handle:
        added = trust_root(settings.trusted_roots_dir, handle.read(), utcnow())
    anchor = added.anchor
    picked_up = "a running sfa-omf serve picks it up within seconds (at once on SIGHUP)"
    if added.outcome == "added":
        print(f"now trusting {anchor.hrn} ({anchor.urn}); {picked_up} and logs it")
    elif added.outcome == "renewed":
        print(
            f"renewed {added.path}: {anchor.hrn} ({anchor.urn}) now valid until {format_time(anchor.not_after)}; "
            f"{picked_up}"
        )
    else:
        print(f"{anchor.hrn} is trusted already ({added.path})")
    return 0


def _trust_list(args: argparse.Namespace) -> int:
    from sfa_omf.times import format_time, utcnow
    from sfa_omf.trust.roots import load_trusted_roots

    roots = load_trusted_roots(command_settings(args).trusted_roots_dir)
    now = utcnow()
    facts: list[dict[str, str]] = [
        {
            "hrn": gid.hrn,
            "urn": gid.urn or "",
            "expires": format_time(gid.not_after),
            "sha256": gid.fingerprint,
            # An expired root verifies nobody: that authority's users cannot call until it is renewed.
            "state": "expired" if now > gid.not_after else "not yet valid" if now < gid.not_before else "valid",
        }
        for gid in roots.anchors
    ]
    if args.json:
        print(json.dumps(facts, indent=1))
        return 0
    for fact in facts:
        ended = "EXPIRED " if fact["state"] == "expired" else "NOT YET VALID " if fact["state"] != "valid" else ""
        print(f"{fact['hrn']:30} {ended}expires {fact['expires']}  sha256 {fact['sha256'][:32]}...")
    return 0
