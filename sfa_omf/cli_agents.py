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
#: Where `agent enrol` finds the join token when no option gives it.
TOKEN_VARIABLE = "SFA_OMF_AGENT_TOKEN"
#: Where `node invite`'s suggested command keeps the token on the node (root's own, made 0600).
SUGGESTED_TOKEN_FILE = "/root/sfa-omf-join.token"


def add_node_agent_commands(node: argparse._SubParsersAction, config_option: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """``node invite`` and ``node agents``, beside the other node commands."""
    invite = node.add_parser("invite", parents=[config_option], help="make a one-time join token for a node agent")
    invite.add_argument(
        "--pool",
        default=None,
        help="the pool the node will join (default: the pool of the --hostname node if enrolled, else default)",
    )
    invite.add_argument(
        "--lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, help="seconds the token is valid (default 1 day)"
    )
    invite.add_argument(
        "--hostname",
        default="",
        metavar="NAME",
        help="the only host name the token enrols; needed to re-bind a node enrolled already to a new key (a "
        "reinstalled machine). Without it the token enrols a host name not enrolled yet",
    )
    invite.add_argument("--json", action="store_true")
    invite.set_defaults(handler=_invite)
    invites = node.add_parser(
        "invites", parents=[config_option], help="list the join tokens not used yet (never their secrets)"
    )
    invites.add_argument("--json", action="store_true")
    invites.set_defaults(handler=_invites)
    invite_revoke = node.add_parser(
        "invite-revoke", parents=[config_option], help="revoke a join token not used yet: it enrols nothing"
    )
    invite_revoke.add_argument("id", help="the token's id (sfa-omf node invites lists them)")
    invite_revoke.set_defaults(handler=_invite_revoke)
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
    given = enrol.add_mutually_exclusive_group()
    given.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the join token from FILE (keep it readable by root only), or from standard input for '-' (asked "
        f"for, not shown, on a terminal); without it or --token: the variable {TOKEN_VARIABLE}",
    )
    given.add_argument(
        "--token",
        help="the join token on the command line: not recommended, other local users see it (ps, /proc) while "
        "enrol runs and your shell's history keeps it; use --token-file",
    )
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
    token, record = Agents(command_database(settings)).create_token(args.pool, args.lifetime, args.hostname)
    root = LocalAuthority.gid_path(settings.data_dir, settings.interface_hrn)
    server = f"{settings.https_url(settings.aggregate_port)}/"
    # The agent sends the token only to a server whose certificate names this URN (am.gid's).
    aggregate = hrn_to_urn(settings.interface_hrn, "authority+am")
    if args.json:
        invitation = {
            "token": token,
            "id": record.id,
            "pool": record.pool,
            "hostname": record.hostname or None,
            "expires": format_time(record.expires),
            "root": root,
            "aggregate": aggregate,
        }
        print(json.dumps(invitation))
        return 0
    bound = f"host name {record.hostname} only" if record.hostname else "a host name not enrolled yet"
    print(f"join token for pool {record.pool!r}, {bound}, valid until {format_time(record.expires)} (once):")
    print(f"  {token}")
    print(f"its id is {record.id} (sfa-omf node invites; sfa-omf node invite-revoke {record.id} revokes it)")
    # The token is printed once, above, for the operator to carry; the command to run takes it from a file, never
    # from its command line (which every local user of the node can read while it runs, and shells keep).
    print(f"on the node, as root, with a copy of {root}: keep the token in a file only root reads (paste it, then")
    print("Ctrl-D), enrol, and delete the file:")
    print(f"  (umask 077; cat > {SUGGESTED_TOKEN_FILE})")
    print(f"  sfa-omf agent enrol --server {server} --aggregate {aggregate} \\")
    print(f"      --token-file {SUGGESTED_TOKEN_FILE} --root ROOT.gid --state /var/lib/sfa-omf-agent \\")
    print(f"      --hostname {record.hostname or 'NAME'} [--local-address IP] [--lan-group GROUP]")
    print(f"  rm {SUGGESTED_TOKEN_FILE}")
    print(f"(or --token-file - to paste it when asked, or the variable {TOKEN_VARIABLE})")
    return 0


def _invites(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.agents import Agents

    tokens = Agents(command_database(command_settings(args))).list_tokens()
    rows = [
        {"id": token.id, "pool": token.pool, "hostname": token.hostname or None, "expires": format_time(token.expires)}
        for token in tokens
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no join token waits to be used")
        return 0
    for row in rows:
        hostname = row["hostname"] or "(a new host name)"
        print(f"{row['id']}  {hostname:20} pool {row['pool']:12} until {row['expires']}")
    return 0


def _invite_revoke(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.agents import Agents

    record, revoked = Agents(command_database(command_settings(args))).revoke_token(args.id)
    bound = f", host name {record.hostname}" if record.hostname else ""
    if revoked:
        print(f"revoked join token {record.id} (pool {record.pool!r}{bound}): it enrols nothing from now on")
    else:
        print(f"join token {record.id} (pool {record.pool!r}{bound}) was revoked already: it enrols nothing")
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


def _join_token(args: argparse.Namespace) -> str:
    """The join token of ``agent enrol``: from --token-file (a file, or standard input for '-'), else --token (with a
    warning: a command line is visible to every local user), else the variable TOKEN_VARIABLE."""
    if args.token_file is not None:
        where = "standard input" if args.token_file == "-" else args.token_file
        if args.token_file != "-":
            try:
                with open(args.token_file, encoding="utf-8") as handle:
                    token = handle.read(4096)
            except (OSError, UnicodeDecodeError) as exc:
                raise BadArgs(f"cannot read the join token from --token-file {args.token_file}: {exc}") from exc
        elif sys.stdin.isatty():
            import getpass

            token = getpass.getpass("join token (not shown): ")
        else:
            token = sys.stdin.readline(4096)
    elif args.token is not None:
        where = "--token"
        token = args.token
        print(
            "sfa-omf agent: warning: --token shows the join token to every local user (ps, /proc/PID/cmdline) "
            "while enrol runs, and your shell's history keeps it: use --token-file FILE, --token-file -, or "
            f"{TOKEN_VARIABLE}",
            file=sys.stderr,
        )
    else:
        where = TOKEN_VARIABLE
        token = os.environ.get(TOKEN_VARIABLE, "")
        if not token:
            raise BadArgs(
                f"no join token: give --token-file FILE (or --token-file - to paste it), or set {TOKEN_VARIABLE}; "
                "the operator's `sfa-omf node invite` prints it"
            )
    token = token.strip()
    if not token:
        raise BadArgs(f"the join token read from {where} is empty: put the token `sfa-omf node invite` printed there")
    return token


def _enrol(args: argparse.Namespace) -> int:
    from sfa_omf.agents.node import AgentCallError, ServerNotTrusted, enrol, local_fault

    token = _join_token(args)
    try:
        enrolled = enrol(
            args.server,
            token,
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
        fault = local_fault(exc, args.state)
        if fault is not None:  # the node's own file (its disk full), not the server's silence
            print(f"sfa-omf agent: {fault}; then enrol again (the same token works again)", file=sys.stderr)
            return 1
        print(f"sfa-omf agent: no answer from {args.server} ({exc}); try again later", file=sys.stderr)
        return 1
    print(f"enrolled as {enrolled.node}; run: sfa-omf agent run --state {args.state}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from sfa_omf.agents.host import DirectoryHost, Host, UnixHost
    from sfa_omf.agents.node import Agent, AgentCallError, LocalFault, ServerNotTrusted

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
        except LocalFault as exc:  # the node's own file (its disk full): the server did answer
            print(f"sfa-omf agent: {exc}; then run the agent again", file=sys.stderr)
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
    """Copy a lease's staged-out files into ``--to``: names and bytes the node chose, written by an operator who may
    be root. So the directory must be the caller's own and writable by no one else (a name planted there could be a
    link to anywhere), nothing in it is followed or replaced, and the files are 0600. All or nothing: a name already
    there with other content (or not a plain file) refuses the whole copy before anything is written."""
    import hashlib

    from sfa_omf.agents.staging import check_name

    store, node = _staging(args)
    files = store.list(args.lease_id, args.hostname, "out")
    copies: list[tuple[str, bytes, str]] = []
    for staged in files:
        check_name(staged.name)  # a plain name: no '/', NUL, '.' or '..' (nor any name starting with a dot)
        data, sha256 = store.get(args.lease_id, args.hostname, "out", staged.name)
        copies.append((staged.name, data, sha256))
    directory = _private_directory(args.to)
    try:
        there: list[str] = []  # already in the directory with this content
        taken: list[str] = []  # in the directory as something else
        for name, data, _ in copies:
            present = _present(directory, name)
            if present is None:
                continue
            if present == hashlib.sha256(data).hexdigest():
                there.append(name)
            else:
                taken.append(name)
        if taken:
            raise BadArgs(
                f"{args.to} already holds {', '.join(taken)} (another content, or not a plain file): nothing was "
                "copied and nothing there is replaced; collect into a new directory, or move those away first"
            )
        for name, data, sha256 in copies:
            if name not in there:
                _write_new(directory, args.to, name, data)
            print(f"{name} {len(data)} bytes sha256 {sha256}" + (" (already there)" if name in there else ""))
    finally:
        os.close(directory)
    if not files:
        print(f"nothing staged out yet for lease {args.lease_id} on {node}")
    return 0


def _private_directory(path: str) -> int:
    """A descriptor of directory ``path``, made (0700) when missing: refused when it is a symbolic link, not the
    caller's (effective uid) own, or writable by group or others, saying why and what to do."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        os.makedirs(path, mode=0o700, exist_ok=True)
        descriptor = os.open(path, flags)  # a link put there meanwhile is refused below (ELOOP)
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if os.path.islink(path):  # Linux says ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW
            raise BadArgs(
                f"--to {path} is a symbolic link: give the directory itself (a link may lead the files elsewhere)"
            ) from exc
        raise BadArgs(f"--to {path} is not a directory: give a directory (a new one is made, 0700)") from exc
    try:
        status = os.fstat(descriptor)
        if status.st_uid != os.geteuid():
            raise BadArgs(
                f"--to {path} belongs to uid {status.st_uid}, not to you (uid {os.geteuid()}): its owner could put "
                "links there that the copy would meet; collect into a directory of your own (a new one is made, 0700)"
            )
        if status.st_mode & 0o022:
            whom = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if status.st_mode & bit)
            raise BadArgs(
                f"--to {path} is writable by {whom} (mode {status.st_mode & 0o7777:04o}): they could plant names "
                f"there before the copy; run `chmod go-w {path}` or give a new directory (made 0700)"
            )
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _present(directory: int, name: str) -> str | None:
    """The SHA-256 of the plain file ``name`` in ``directory``; None when nothing has the name; "" when something
    that is not a plain file has it (a link, a directory, a FIFO: never followed, never opened)."""
    import hashlib
    import stat

    try:
        status = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return ""
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return ""
    with os.fdopen(descriptor, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _write_new(directory: int, path: str, name: str, data: bytes) -> None:
    """Write ``data`` as the new file ``name`` (0600) in ``directory``: to a new temporary name first (O_EXCL,
    O_NOFOLLOW: nothing there is followed), then linked to ``name``, which fails rather than replace anything put
    there meanwhile (a rename would replace it: a file of the operator's, lost). The name never shows half a file."""
    import secrets

    temporary = f".{name}.{secrets.token_hex(6)}.part"  # names staged out never start with a dot (check_name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, 0o600, dir_fd=directory)
    try:
        with os.fdopen(descriptor, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        except FileExistsError as exc:
            raise BadArgs(
                f"{os.path.join(path, name)} appeared while copying: it is left as it is; the files copied before "
                "it are there, copy again into a new directory"
            ) from exc
    finally:
        os.unlink(temporary, dir_fd=directory)


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
