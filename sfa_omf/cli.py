"""The operator's command: ``sfa-omf ...``.

Each sub-command parses its arguments, calls one function of the library, and prints the result; exit 0 on success,
1 when the answer is "no" (an invalid credential, a problem found by ``config check``, a server that cannot start),
2 for a command that cannot be carried out as given. An error is one line, ``sfa-omf: <what to do>``, without
internal reason codes; ``sfa-omf --debug ...`` adds its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# Only light modules here: ``sfa-omf --help`` must not wait for Twisted, SQLAlchemy or xmlsec. Each command imports
# what it needs (benchmarks/cli_startup.py measures it).
from sfa_omf.cli_agents import add_agent_commands
from sfa_omf.cli_calendar import add_calendar_commands
from sfa_omf.cli_common import os_error_text
from sfa_omf.cli_config import add_config_commands
from sfa_omf.cli_images import add_image_commands
from sfa_omf.cli_notify import add_notify_commands
from sfa_omf.cli_omf import add_omf_commands
from sfa_omf.cli_registry import add_registry_commands
from sfa_omf.cli_rspec import add_rspec_commands
from sfa_omf.cli_server import add_server_commands
from sfa_omf.cli_web import add_web_commands
from sfa_omf.config import CONFIG_FILE_NAME, DEFAULT_AUTHORITY, DEFAULT_HOST, Settings, read_config
from sfa_omf.errors import BadArgs, GeniError

if TYPE_CHECKING:
    from sfa_omf.trust.gid import Gid


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sfa-omf`` command: exit 0 on success, 1 when the answer is "no" or the server cannot start, 2 for
    a command that cannot be carried out as given. Errors are one line on standard error; ``--debug`` adds the
    traceback."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        # "sfa-omf node" alone: the node commands, not the whole list.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except Exception as exc:  # sorted below; anything else is a bug and keeps its traceback
        failure = _failure(exc)
        if failure is None:
            raise
        code, message = failure
        _report(args, " ".join(message.split()))  # one line, even when a database driver answers on several
        return code


def _failure(exc: Exception) -> tuple[int, str] | None:
    """Exit status and one-line message of an error a person can act on; None for a bug. The error classes are
    imported here, when there is an error, so that the commands do not all import what they need."""
    from sfa_omf.preflight import StartupError
    from sfa_omf.registry.authority import AuthorityError

    if isinstance(exc, StartupError):
        return 1, f"cannot start: {exc}"
    if isinstance(exc, GeniError):
        return 2, exc.message  # the message only: reasons like bad_args are for logs and JSON
    if isinstance(exc, AuthorityError | ValueError):
        return 2, str(exc)
    if isinstance(exc, OSError):
        return 2, os_error_text(exc)
    return None


def _report(args: argparse.Namespace, message: str) -> None:
    if args.debug:
        traceback.print_exc()
    print(f"sfa-omf: {message}", file=sys.stderr)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfa-omf", description="SFA/GENI aggregate manager with time slots")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    commands = parser.add_subparsers(title="commands")

    init = commands.add_parser(
        "init",
        help="create a local authority, the aggregate's identity and demo users",
        description="Create DIR: the authority's key and root GID, the aggregate's identity, trusted_roots/, "
        "sfa-omf.conf and the calendar's schema, plus (unless --no-demo) demo users with sfi.py directories and a "
        "demo slice. Run again on DIR, it adds what is missing and keeps everything that exists.",
    )
    init.add_argument("directory")
    init.add_argument(
        "--authority", help=f"authority HRN (default: DIR's own when it exists, else {DEFAULT_AUTHORITY})"
    )
    init.add_argument("--user", action="append", dest="users", help="a demo user name (repeatable; default alice)")
    init.add_argument("--no-demo", action="store_true", help="no demo user and no demo slice (a real site)")
    init.add_argument(
        "--hostname", help="the public DNS name federation peers and sfi_config use (default: the listening address)"
    )
    init.add_argument(
        "--bind",
        help=f"the address both servers listen on (default {DEFAULT_HOST}; 0.0.0.0, every address, with --hostname)",
    )
    init.add_argument("--registry-port", type=int, help="the registry's port (default 12345)")
    init.add_argument("--aggregate-port", type=int, help="the aggregate's port (default 12346)")
    init.add_argument(
        "--database-url",
        help="the calendar's database, e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/NAME (default: SQLite in DIR)",
    )
    init.set_defaults(handler=_cmd_init)

    gid_group = commands.add_parser("gid", help="inspect GIDs")
    gid = gid_group.add_subparsers(title="gid commands")
    gid_group.set_defaults(group_parser=gid_group)
    show = gid.add_parser("show", help="print a GID chain: subject, URN, UUID, e-mail, issuers, validity, CA")
    show.add_argument("file")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_cmd_gid_show)

    credential = commands.add_parser("credential", help="verify, issue and delegate credentials")
    credential.set_defaults(group_parser=credential)
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
    issue.add_argument(
        "--days", type=_lifetime_days, default=30.0, help=f"lifetime in days (default 30, at most {MAX_DAYS})"
    )
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
    delegate.add_argument("-o", "--output", help="write here (standard output only when it is not a terminal)")
    delegate.set_defaults(handler=_cmd_credential_delegate)

    slice_commands = add_calendar_commands(commands)
    add_registry_commands(commands, slice_commands)
    add_rspec_commands(commands)
    add_server_commands(commands)
    add_web_commands(commands)
    add_notify_commands(commands)
    add_agent_commands(commands)
    add_config_commands(commands)
    add_image_commands(commands)
    add_omf_commands(commands)
    return parser


#: The longest credential ``credential issue`` makes (ten years; the authority's own GID lives five).
MAX_DAYS = 3650


def _lifetime_days(text: str) -> float:
    """``credential issue --days``: above 0 (a credential that has expired already is of no use) and at most
    MAX_DAYS."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not 0 < days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of days above 0 and at most {MAX_DAYS}")
    return days


def _cmd_init(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.database import Database
    from sfa_omf.registry.bootstrap import (
        DEFAULT_USERS,
        SSH_KEY_NAME,
        existing_authority,
        init_directory,
        register_demo,
    )
    from sfa_omf.xrn import split_hrn

    if os.path.exists(args.directory) and not os.path.isdir(args.directory):
        raise BadArgs(f"{args.directory} is a file, not a directory: give the site's directory (init makes a new one)")
    existing = existing_authority(args.directory)
    authority = args.authority or existing or DEFAULT_AUTHORITY
    split_hrn(authority)  # before the directory is made: a refused name leaves nothing behind
    if args.no_demo and args.users:
        raise BadArgs("--user makes demo users: leave it out with --no-demo (sfa-omf user add registers real ones)")
    settings = None
    if existing is None:
        settings = _new_settings(args, authority)
        if args.database_url:  # checked before anything is written: a failed init leaves nothing
            _check_database(settings.calendar_url, authority)
    elif authority == existing:  # (another one is refused by init_directory: the directory holds this one)
        _check_database_owner(read_config(os.path.join(args.directory, CONFIG_FILE_NAME)).calendar_url, authority)
    if existing is not None and _site_options(args):
        print(
            f"sfa-omf: {args.directory} exists: its configuration is kept; change {_site_options(args)} "
            f"in {os.path.join(args.directory, CONFIG_FILE_NAME)}",
            file=sys.stderr,
        )
    demo = not args.no_demo
    if existing is not None and demo and not args.users and not _made_with_demo(args.directory, authority):
        # A site made with --no-demo: init again adds what is missing of it, not a demo user to its registry.
        demo = False
        print(
            f"sfa-omf: {args.directory} was made without demo users (--no-demo): none added (--user NAME adds one)",
            file=sys.stderr,
        )
    users = tuple(args.users or DEFAULT_USERS) if demo else ()
    report = init_directory(args.directory, authority, users, settings, demo=demo)
    settings = read_config(os.path.join(report.directory, CONFIG_FILE_NAME))
    database = Database(settings.calendar_url)
    database.upgrade()  # the calendar is ready to use
    register_demo(report, database)
    database.dispose()
    print(
        f"authority {report.authority_hrn} in {report.directory}: {len(report.created)} files created, "
        f"{len(report.kept)} already there and left untouched"
    )
    for path in report.renewed:  # (an expired or nearly expired certificate: the same key, a new validity)
        print(f"  re-issued with the same key: {path} (restart sfa-omf serve to serve it)")
    for name, sfi_dir in report.sfi_dirs.items():
        print(f"  user {name}: sfi.py directory {sfi_dir}  (sfi.py -d {sfi_dir} ...)")
        print(f"    SSH key (registered; logins the manifest names accept it): {os.path.join(sfi_dir, SSH_KEY_NAME)}")
    print(f"  trusted roots: {os.path.join(report.directory, 'trusted_roots')} (add another authority's root there)")
    print(
        f"  registry {settings.https_url(settings.registry_port)}/, "
        f"aggregate {settings.https_url(settings.aggregate_port)}/ "
        f"(listening on {settings.aggregate_host}); start: sfa-omf serve --config "
        f"{os.path.join(report.directory, CONFIG_FILE_NAME)}"
    )
    return 0


def _made_with_demo(directory: str, authority: str) -> bool:
    """Whether the initialised ``directory`` was made with the demo users: only then has its authority issued the
    demo slice's GID (init makes it with them; --no-demo makes none)."""
    from sfa_omf.registry.bootstrap import DEMO_SLICE
    from sfa_omf.xrn import join_hrn, split_hrn

    demo_slice = join_hrn([*split_hrn(authority), DEMO_SLICE])
    return os.path.exists(os.path.join(directory, "gids", f"{demo_slice}.gid"))


def _site_options(args: argparse.Namespace) -> str:
    """The site options given on the command line, as the operator spelled them."""
    names = ("hostname", "bind", "registry_port", "aggregate_port", "database_url")
    return ", ".join("--" + name.replace("_", "-") for name in names if getattr(args, name) is not None)


def _new_settings(args: argparse.Namespace, authority: str) -> Settings:
    """The settings of a new directory from init's options (ports checked as the configuration would)."""
    from sfa_omf.config import DEFAULT_AGGREGATE_PORT, DEFAULT_REGISTRY_PORT, host_problem

    for option, port in (("--registry-port", args.registry_port), ("--aggregate-port", args.aggregate_port)):
        if port is not None and not 1 <= port <= 65535:
            raise BadArgs(f"{option} {port}: a port is a number from 1 to 65535")
    registry_port = args.registry_port or DEFAULT_REGISTRY_PORT
    aggregate_port = args.aggregate_port or DEFAULT_AGGREGATE_PORT
    if registry_port == aggregate_port:
        raise BadArgs(f"the registry and the aggregate both on port {registry_port}: give them different ports")
    database_url = args.database_url or ""
    if database_url:
        from sfa_omf.config import database_url_problem, hide_password, sqlite_url_against

        problem = database_url_problem(database_url)
        if problem:
            raise BadArgs(f"--database-url {hide_password(database_url)}: {problem}; nothing was created")
        # A relative SQLite path is the operator's working directory's: the file must say where that is.
        if database_url.startswith("sqlite"):
            database_url = sqlite_url_against(database_url, os.getcwd())
    hostname = args.hostname or ""
    host_refusal = host_problem(hostname, "--registry-port and --aggregate-port set the ports") if hostname else None
    if host_refusal is not None:
        raise BadArgs(f"--hostname {hostname!r} {host_refusal}; nothing was created")
    if args.bind is not None and not _is_ip_address(args.bind):
        raise BadArgs(
            f"--bind {args.bind!r} is not an IP address: give the address both servers listen on (127.0.0.1, an "
            "address of this machine, or 0.0.0.0 for every address); nothing was created"
        )
    if hostname in ("0.0.0.0", "::"):
        raise BadArgs(
            f"--hostname {hostname} means 'every address', which no peer can call: give this machine's public DNS "
            "name (both servers then listen on every address; --bind chooses another)"
        )
    loopback = hostname in ("", "localhost", "::1") or hostname.startswith("127.")
    bind = args.bind or (DEFAULT_HOST if loopback else "0.0.0.0")  # a public name is reached from outside
    return Settings(
        interface_hrn=authority,
        data_dir=os.path.abspath(args.directory),
        registry_host=bind,
        registry_port=registry_port,
        aggregate_host=bind,
        aggregate_port=aggregate_port,
        database_url=database_url,
        hostname=hostname,
    )


def _is_ip_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_database(url: str, authority: str) -> None:
    """Refuse a database URL that cannot be reached (one line, the database's own words), or that holds another
    authority's registry."""
    from sfa_omf.calendar.database import Database
    from sfa_omf.config import hide_password
    from sfa_omf.preflight import DATABASE_TIMEOUT_S, database_owner, one_line

    database = Database(url)
    try:
        revision = database.schema_revision(connect_timeout_s=DATABASE_TIMEOUT_S)
        owner = database_owner(database, authority) if revision is not None else None
    except GeniError as exc:
        raise BadArgs(
            f"--database-url {hide_password(url)}: cannot reach it ({one_line(exc.message)}); nothing was created"
        ) from exc
    finally:
        database.dispose()
    if owner is not None:
        raise BadArgs(
            f"--database-url {hide_password(url)} belongs to {owner}: use another database, or --authority "
            f"{owner.hrn}; nothing was created"
        )


def _check_database_owner(url: str, authority: str) -> None:
    """Refuse to complete a directory whose database holds another authority's registry (see preflight's
    database_owner): init would record this authority in it, beside the other's users, slices and nodes."""
    from sfa_omf.calendar.database import Database
    from sfa_omf.config import hide_password
    from sfa_omf.preflight import database_owner

    database = Database(url)
    try:
        owner = database_owner(database, authority) if database.schema_revision() is not None else None
    finally:
        database.dispose()
    if owner is not None:
        raise BadArgs(
            f"the calendar database {hide_password(url)} ([sfa_omf] database_url) belongs to {owner}, not to "
            f"{authority}: set database_url to this site's own database; nothing was changed"
        )


def _gid_facts(gid: Gid) -> dict[str, Any]:
    from sfa_omf.times import format_time

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
    from sfa_omf.trust.gid import load_gid_chain_file

    chain = load_gid_chain_file(args.file)
    facts = [_gid_facts(gid) for gid in chain]
    if args.json:
        print(json.dumps(facts, indent=1))
        return 0
    for depth, fact in enumerate(facts):
        label = "GID" if depth == 0 else f"issuer {depth}"
        print(f"{label}: {fact['subject']}")
        for key in ("urn", "uuid", "email", "issuer", "not_before", "not_after", "ca", "sha256_fingerprint"):
            print(f"  {key:18} {fact[key]}")
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
    from sfa_omf.errors import REASON_CODES, GeniCode, TrustError
    from sfa_omf.times import format_time, parse_time, utcnow
    from sfa_omf.trust.credential import read_credential
    from sfa_omf.trust.gid import GidChain, load_gid_chain_file
    from sfa_omf.trust.roots import load_trusted_roots
    from sfa_omf.trust.verifier import CredentialVerifier
    from sfa_omf.xrn import is_urn

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


def _check_output(path: str | None) -> None:
    """Refuse to print a credential on a terminal, or to write it over a file (checked before anything is done: a
    refused call writes nothing): an operator who forgot -o gets a hint, not a screen of XML."""
    if not path and sys.stdout.isatty():
        raise BadArgs("a credential is XML: give -o FILE, or redirect the output (> FILE)")
    if path and os.path.lexists(path):  # refused here, before a GID is issued for the target
        raise BadArgs(f"-o {path}: the file exists; give another name (a credential is never written over a file)")


def _write_output(text: str, path: str | None) -> None:
    """Write to ``path`` (never over an existing file), else to standard output."""
    if path:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def _hrn_of(text: str) -> str:
    from sfa_omf.xrn import is_urn, parse_urn

    return parse_urn(text).hrn if is_urn(text) else text


def _cmd_credential_issue(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.xrn import is_authority_for, split_hrn

    _check_output(args.output)
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
        if args.type in ("user", "slice") and is_authority_for(authority.hrn, target_hrn):
            _refuse_if_removed_lately(config, target_hrn, args.type)  # BUSY before the GID file is written
        target_chain, _ = authority.issue_gid(target_hrn, args.type)
    else:
        raise BadArgs(f"no GID for {target_hrn!r} yet: give --type slice (or node) to issue one")
    xml = authority.credential(
        owner_chain, target_chain, lifetime=timedelta(days=args.days), can_delegate=not args.no_delegate
    )
    _write_output(xml, args.output)
    return 0


def _refuse_if_removed_lately(settings: Settings, hrn: str, kind: str) -> None:
    """BUSY when the user or slice ``hrn``, not registered, was removed less than the registry's wait ago
    (registry/records.py REGISTER_AGAIN_AFTER_S): a GID issued for it now could not be recorded, and left in gids/
    would refuse the name's next ``user add`` or ``slice create``."""
    from sfa_omf.cli_common import command_database
    from sfa_omf.registry.records import Records
    from sfa_omf.xrn import hrn_to_urn

    database = command_database(settings)
    try:
        Records(database).refuse_if_removed_lately(hrn, hrn_to_urn(hrn, kind))
    finally:
        database.dispose()


def _cmd_credential_delegate(args: argparse.Namespace) -> int:
    from sfa_omf.times import parse_time
    from sfa_omf.trust.credential import delegate_credential
    from sfa_omf.trust.gid import load_gid_chain_file
    from sfa_omf.trust.pki import load_private_key_file

    _check_output(args.output)
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
