"""The operator's command: ``sfa-omf ...``.

Each sub-command parses its arguments, calls one function of the library, and prints the result; exit 0 on success,
1 when the answer is "no" (an invalid credential), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from sfa_omf.calendar.database import Database
from sfa_omf.cli_agents import add_agent_commands
from sfa_omf.cli_calendar import add_calendar_commands
from sfa_omf.cli_config import add_config_commands
from sfa_omf.cli_registry import add_registry_commands
from sfa_omf.cli_rspec import add_rspec_commands
from sfa_omf.cli_server import add_server_commands
from sfa_omf.config import CONFIG_FILE_NAME, read_config
from sfa_omf.errors import REASON_CODES, BadArgs, GeniCode, GeniError, TrustError
from sfa_omf.registry.authority import AuthorityError, LocalAuthority
from sfa_omf.registry.bootstrap import DEFAULT_AUTHORITY, DEFAULT_USERS, init_directory, register_demo
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.credential import delegate_credential, read_credential
from sfa_omf.trust.gid import Gid, GidChain, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from sfa_omf.xrn import is_urn, parse_urn, split_hrn


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except (GeniError, AuthorityError, FileNotFoundError, ValueError) as exc:
        print(f"sfa-omf: {exc}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfa-omf", description="SFA/GENI aggregate manager with time slots")
    commands = parser.add_subparsers(title="commands")

    init = commands.add_parser("init", help="create a local authority, the aggregate's identity and demo users")
    init.add_argument("directory")
    init.add_argument("--authority", default=DEFAULT_AUTHORITY, help=f"authority HRN (default {DEFAULT_AUTHORITY})")
    init.add_argument("--user", action="append", dest="users", help="a demo user name (repeatable; default alice)")
    init.set_defaults(handler=_cmd_init)

    gid = commands.add_parser("gid", help="inspect GIDs").add_subparsers(title="gid commands")
    show = gid.add_parser("show", help="print a GID chain: subject, URN, UUID, e-mail, issuers, validity, CA")
    show.add_argument("file")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_cmd_gid_show)

    credential = commands.add_parser("credential", help="verify, issue and delegate credentials")
    cred = credential.add_subparsers(title="credential commands")
    verify = cred.add_parser("verify", help="verify a credential; prints one JSON object; exit 0 valid, 1 invalid")
    verify.add_argument("file")
    verify.add_argument("--trusted-roots", help="directory of trusted roots (default: $SFA_OMF_TRUSTED_ROOTS)")
    verify.add_argument("--at", help="time of verification (default now); RFC 3339, epoch or +Nd")
    verify.add_argument("--caller", help="the caller: a URN, or a GID file (then its key must be the owner's)")
    verify.add_argument("--target", help="URN of the object the credential is used on")
    verify.add_argument("--operation", help="operation to allow, e.g. createsliver, listnodes, stopslice")
    verify.set_defaults(handler=_cmd_credential_verify)

    issue = cred.add_parser("issue", help="issue a credential signed by the local authority")
    issue.add_argument("--dir", required=True, help="the authority directory (sfa-omf init DIR)")
    issue.add_argument("--owner", required=True, help="HRN of the owner (a user the authority issued a GID to)")
    issue.add_argument("--target", help="HRN of the target (default: the owner, i.e. a user credential)")
    issue.add_argument(
        "--type",
        choices=("user", "slice", "node", "authority"),
        help="target type, when its GID must be issued",
    )
    issue.add_argument("--days", type=float, default=30.0, help="lifetime in days (default 30)")
    issue.add_argument("--no-delegate", action="store_true", help="privileges may not be delegated")
    issue.add_argument("-o", "--output", help="write here instead of standard output")
    issue.set_defaults(handler=_cmd_credential_issue)

    delegate = cred.add_parser("delegate", help="delegate a credential you own to another user")
    delegate.add_argument("file", help="the credential to delegate")
    delegate.add_argument("--key", required=True, help="your private key (the credential owner's)")
    delegate.add_argument("--gid", required=True, help="your GID chain")
    delegate.add_argument("--to", required=True, help="GID file of the new owner")
    delegate.add_argument("--privileges", help="comma-separated subset to pass on (default: all)")
    delegate.add_argument("--can-delegate", action="store_true", help="allow the new owner to delegate further")
    delegate.add_argument("--expires", help="an earlier expiry than the parent's")
    delegate.add_argument("-o", "--output", help="write here instead of standard output")
    delegate.set_defaults(handler=_cmd_credential_delegate)

    slice_commands = add_calendar_commands(commands)
    add_registry_commands(commands, slice_commands)
    add_rspec_commands(commands)
    add_server_commands(commands)
    add_agent_commands(commands)
    add_config_commands(commands)
    return parser


def _cmd_init(args: argparse.Namespace) -> int:
    report = init_directory(args.directory, args.authority, tuple(args.users or DEFAULT_USERS))
    settings = read_config(os.path.join(report.directory, CONFIG_FILE_NAME))
    database = Database(settings.calendar_url)
    database.upgrade()  # the embedded calendar is ready to use
    register_demo(report, database)
    print(
        f"authority {report.authority_hrn} in {report.directory}: {len(report.created)} files created, "
        f"{len(report.kept)} already there and left untouched"
    )
    for name, sfi_dir in report.sfi_dirs.items():
        print(f"  user {name}: sfi.py directory {sfi_dir}  (sfi.py -d {sfi_dir} ...)")
    print(f"  trusted roots: {os.path.join(report.directory, 'trusted_roots')} (add another authority's root there)")
    return 0


def _gid_facts(gid: Gid) -> dict[str, Any]:
    return {
        "subject": gid.certificate.subject.rfc4514_string(),
        "urn": gid.urn,
        "hrn": gid.hrn,
        "uuid": gid.uuid,
        "email": gid.email,
        "issuer": gid.certificate.issuer.rfc4514_string(),
        "not_before": format_time(gid.not_before),
        "not_after": format_time(gid.not_after),
        "ca": gid.is_ca,
        "sha256_fingerprint": gid.fingerprint,
    }


def _cmd_gid_show(args: argparse.Namespace) -> int:
    chain = load_gid_chain_file(args.file)
    facts = [_gid_facts(gid) for gid in chain]
    if args.json:
        print(json.dumps(facts, indent=1))
        return 0
    for depth, fact in enumerate(facts):
        label = "GID" if depth == 0 else f"issuer {depth}"
        print(f"{label}: {fact['subject']}")
        for key in ("urn", "uuid", "email", "issuer", "not_before", "not_after", "ca"):
            print(f"  {key:10} {fact[key]}")
    return 0


def _trusted_roots_dir(explicit: str | None) -> str:
    if explicit:
        return explicit
    from_env = os.environ.get("SFA_OMF_TRUSTED_ROOTS")
    if from_env:
        return from_env
    if os.path.isdir("trusted_roots"):
        return "trusted_roots"
    raise BadArgs("say which roots to trust: --trusted-roots DIR (or set SFA_OMF_TRUSTED_ROOTS)")


def _cmd_credential_verify(args: argparse.Namespace) -> int:
    roots = load_trusted_roots(_trusted_roots_dir(args.trusted_roots))
    at = parse_time(args.at) if args.at else utcnow()
    with open(args.file, "rb") as handle:
        xml = handle.read()
    caller_chain: GidChain = ()
    caller_urn = None
    if args.caller:
        if is_urn(args.caller):
            caller_urn = args.caller
        else:
            caller_chain = load_gid_chain_file(args.caller)
    target = args.target
    if target and not is_urn(target):
        raise BadArgs(f"--target must be a URN, got {target!r}")
    verifier = CredentialVerifier(roots)
    report: dict[str, Any] = {"valid": False, "reason": None, "geni_code": int(GeniCode.SUCCESS)}
    try:
        facts = read_credential(xml).credential
        report.update(
            owner_urn=facts.owner_urn,
            target_urn=facts.target_urn,
            expires=format_time(facts.expires),
            privileges=list(facts.privilege_names),
            delegated=facts.depth > 0,
        )
        caller_gid = verifier.verify_caller(caller_chain, at) if caller_chain else None
        verified = verifier.verify(xml, at)
        verifier.authorize(verified, caller_gid, target, args.operation, caller_urn=caller_urn)
        report.update(valid=True, message="valid")
    except TrustError as exc:
        report.update(reason=exc.reason.value, geni_code=int(REASON_CODES[exc.reason]), message=exc.message)
    report["checked_at"] = format_time(at)
    print(json.dumps(report, indent=1))
    return 0 if report["valid"] else 1


def _write_output(text: str, path: str | None) -> None:
    if path:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def _hrn_of(text: str) -> str:
    return parse_urn(text).hrn if is_urn(text) else text


def _cmd_credential_issue(args: argparse.Namespace) -> int:
    from datetime import timedelta

    config = read_config(os.path.join(args.dir, CONFIG_FILE_NAME))
    authority = LocalAuthority.load(args.dir, config.interface_hrn)
    owner_hrn = _hrn_of(args.owner)
    owner_chain = authority.issued_chain(owner_hrn)
    target_hrn = _hrn_of(args.target) if args.target else owner_hrn
    split_hrn(target_hrn)
    if target_hrn == authority.hrn:
        target_chain = authority.chain
    elif os.path.exists(authority.issued_gid_path(target_hrn)):
        target_chain = authority.issued_chain(target_hrn)
    elif args.type:
        target_chain, _ = authority.issue_gid(target_hrn, args.type)
    else:
        raise BadArgs(f"no GID for {target_hrn!r} yet: give --type slice (or node) to issue one")
    xml = authority.credential(
        owner_chain, target_chain, lifetime=timedelta(days=args.days), can_delegate=not args.no_delegate
    )
    _write_output(xml, args.output)
    return 0


def _cmd_credential_delegate(args: argparse.Namespace) -> int:
    with open(args.file, "rb") as handle:
        parent_xml = handle.read()
    privileges = tuple(name.strip() for name in args.privileges.split(",")) if args.privileges else None
    xml = delegate_credential(
        parent_xml,
        to_chain=load_gid_chain_file(args.to),
        key=load_private_key_file(args.key),
        delegator_chain=load_gid_chain_file(args.gid),
        privileges=privileges,
        can_delegate=args.can_delegate,
        expires=parse_time(args.expires) if args.expires else None,
    )
    _write_output(xml, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
