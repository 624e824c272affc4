"""What would make ``sfa-omf serve`` fail, found before it starts: ``serve`` refuses to start on the first one, and
``sfa-omf config check`` lists them all.

Each check returns ``Finding``s: one line that names the problem and says what to do. The checks read and never
write: a missing SQLite file is not created, a port is bound only for a moment to see that it can be.

- identity: the aggregate's key and GID (``data_dir/aggregate``) and the authority's (``data_dir/authority``)
  exist, can be read, and each key is its GID's;
- identity: a missing data directory is said once, with the fix of a moved site (``config check``: where it seems
  to be now) or a backup, never ``sfa-omf init``, which would make a new authority no peer trusts;
- certificates: the authority's root (the registry's TLS certificate), the aggregate's, each trusted root, the
  node VPN's CA and server certificate, valid now and not ending within EXPIRY_WARNING (ending soon, a peer's or the
  VPN's: a warning, which ``serve`` logs and starts);
- trusted roots: the directory exists and holds at least one root that can be read;
- database: reachable, and at the newest migration;
- clock (PostgreSQL): this host's clock against the database's (above cluster/clock.py's WARN_OFFSET_S: a warning) and
  the other live serving processes' (more than MAX_OFFSET_S from one whose clock is nearer the database's: this host
  must not serve); several hosts' background tasks compare the calendar with their own clocks;
- ports: the registry's and the aggregate's host:port can be bound (``config check`` only: ``serve`` finds out by
  listening);
- hostname: the name advertised to the federation (``[sfa_omf] hostname``) is an address of this machine
  (``config check`` only);
- log file: ``[sfa_omf] log_file`` can be written (``config check`` only);
- permissions: the configuration file, the data, trusted roots and key directories are owned by root or the running
  user and writable by nobody else (``config check`` only).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sfa_omf.config import Settings
from sfa_omf.errors import GeniError, Reason

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sfa_omf.calendar.database import Database
    from sfa_omf.trust.gid import Gid

log = logging.getLogger("sfa_omf.cluster")

#: A certificate that ends sooner than this is said ahead (config check, serve's log): time to renew it.
EXPIRY_WARNING = timedelta(days=30)

#: How long a database may take to answer a connection before start-up gives up on it.
DATABASE_TIMEOUT_S = 3
#: How long start-up waits for the rows of processes whose clocks clash with this host's to be rewritten (a refresh,
#: cluster/agreement.py's REFRESH_S, and some lateness), and how often it looks.
CLOCK_CLASH_WAIT_S = 75.0
CLOCK_CLASH_POLL_S = 1.0


@dataclass(frozen=True)
class Finding:
    """A problem that would stop the server or keep the federation from reaching it. ``check`` is one of identity,
    certificates, trusted_roots, database, clock, port, hostname, log_file, permissions; ``message`` is one line: the
    problem, then what to do."""

    check: str
    message: str
    #: A warning (a certificate that expires soon, a peer's root that expired): ``serve`` logs it and starts;
    #: ``config check`` lists it with the rest.
    warning: bool = False

    def __str__(self) -> str:
        return self.message


class StartupError(Exception):
    """``sfa-omf serve`` cannot start; the message is one line that names the problem and the fix."""


def one_line(text: str) -> str:
    """Text made one line (database drivers answer on several)."""
    return " ".join(text.split())


def identity_findings(settings: Settings) -> list[Finding]:
    """The TLS identities the two servers present: each key and GID file exists and is readable."""
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.trust.gid import load_gid_chain_file
    from sfa_omf.trust.pki import load_private_key_file

    if not os.path.isdir(settings.data_dir):
        # One line, not one per file: "run sfa-omf init" here would make a new authority (a new root key) that no
        # peer trusts, when the site was moved or its disk lost (permission_findings: where it seems to be now).
        return [
            Finding(
                "identity",
                f"the data directory {settings.data_dir} ([sfa] data_dir) does not exist, and with it the authority's "
                "and the aggregate's keys: if the site was moved, set [sfa] data_dir (and trusted_roots, database_url, "
                "log_file where they name it) to where it is now; else restore the directory from the backup. "
                "sfa-omf init is for a new site only: it makes a new authority, whose root no peer trusts",
            )
        ]
    init = f"sfa-omf init {settings.data_dir} --authority {settings.interface_hrn}"
    files = (
        ("the aggregate's private key", os.path.join(settings.data_dir, "aggregate", "am.pkey"), True),
        ("the aggregate's GID", os.path.join(settings.data_dir, "aggregate", "am.gid"), False),
        ("the authority's private key", LocalAuthority.key_path(settings.data_dir, settings.interface_hrn), True),
        ("the authority's GID", LocalAuthority.gid_path(settings.data_dir, settings.interface_hrn), False),
    )
    findings = []
    loaded: dict[str, Any] = {}
    for what, path, is_key in files:
        if not os.path.exists(path):
            findings.append(Finding("identity", f"{what} {path} does not exist: run {init} to create it"))
            continue
        try:
            loaded[path] = load_private_key_file(path) if is_key else load_gid_chain_file(path)
        except PermissionError:
            findings.append(
                Finding(
                    "identity",
                    f"cannot read {what} {path}: permission denied; let the user running sfa-omf "
                    f"(uid {os.getuid()}) read it (chown/chmod)",
                )
            )
        except (OSError, ValueError, GeniError) as exc:
            findings.append(
                Finding("identity", f"cannot use {what} {path}: {_failure_text(exc, path)}; restore it from a backup")
            )
    # A key that is not the GID's (one file restored from another backup, or copied over): TLS could not use the pair.
    for (what, key_path, _), (_, gid_path, _) in ((files[0], files[1]), (files[2], files[3])):
        if key_path in loaded and gid_path in loaded and not _key_matches(loaded[key_path], loaded[gid_path][0]):
            findings.append(
                Finding(
                    "identity",
                    f"{what} {key_path} is not the key of {gid_path} (the GID was made for another key): put back the "
                    "pair that belongs together from a backup",
                )
            )
    return findings


def _failure_text(exc: Exception, path: str) -> str:
    """Why a file could not be used, one line: a GeniError's message (not its reason code), an OSError's words
    (without the path when the message names it already)."""
    from sfa_omf.cli_common import os_error_text

    if isinstance(exc, GeniError):
        return one_line(exc.message)
    if isinstance(exc, OSError):
        if exc.strerror and exc.filename == path:
            return exc.strerror
        return one_line(os_error_text(exc))
    return one_line(str(exc))


def _key_matches(key: rsa.RSAPrivateKey, gid: Gid) -> bool:
    """True when ``gid``'s certificate holds the public half of ``key``."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public == gid.public_key_der


def trusted_roots_findings(settings: Settings) -> list[Finding]:
    """The trusted-roots directory exists and holds at least one readable root."""
    from sfa_omf.trust.roots import load_trusted_roots

    directory = settings.trusted_roots_dir
    if _in_missing_data_dir(directory, settings):
        return []  # identity_findings says the data directory is missing: "create it" would be the wrong fix
    if not os.path.isdir(directory):
        return [
            Finding(
                "trusted_roots",
                f"trusted roots directory {directory} does not exist: create it and put at least this authority's "
                f"root there (cp {settings.data_dir}/authority/{settings.interface_hrn}.gid {directory}/), "
                "or set [sfa_omf] trusted_roots",
            )
        ]
    try:
        roots = load_trusted_roots(directory)
    except (OSError, ValueError, GeniError) as exc:
        return [Finding("trusted_roots", f"cannot read the trusted roots in {directory}: {_failure_text(exc, '')}")]
    if not roots.anchors:
        return [
            Finding(
                "trusted_roots",
                f"trusted roots directory {directory} holds no root (*.gid, *.pem, *.cert, *.crt): nobody could call; "
                f"add this authority's root (sfa-omf trust add-root {settings.data_dir}/authority/"
                f"{settings.interface_hrn}.gid)",
            )
        ]
    return []


def _in_missing_data_dir(path: str, settings: Settings) -> bool:
    """True when the data directory does not exist and ``path`` lies in it."""
    data_dir = os.path.abspath(settings.data_dir)
    if os.path.isdir(data_dir):
        return False
    return os.path.commonpath([data_dir, os.path.abspath(path)]) == data_dir


def database_findings(settings: Settings) -> list[Finding]:
    """The calendar's database answers and is at the newest migration (an older one: ``db upgrade``; one this
    sfa-omf does not know: a newer sfa-omf migrated it)."""
    from sqlalchemy.engine import make_url

    from sfa_omf.calendar.database import (
        Database,
        DatabaseUnreachable,
        head_revision,
        is_known_revision,
        opening_advice,
        unknown_revision_message,
    )
    from sfa_omf.config import hide_password

    url = make_url(settings.calendar_url)
    if url.get_backend_name() == "sqlite" and url.database and _in_missing_data_dir(url.database, settings):
        return []  # identity_findings says the data directory is missing: "create it" would be the wrong fix
    database = Database(settings.calendar_url)
    shown = hide_password(settings.calendar_url)
    try:
        current = database.schema_revision(connect_timeout_s=DATABASE_TIMEOUT_S)
    except DatabaseUnreachable as exc:
        return [Finding("database", f"the calendar database {exc.advice}")]
    except GeniError as exc:  # opened, but the schema's revision could not be read
        reason = one_line(exc.message.removeprefix("the calendar database failed: "))
        return [
            Finding(
                "database",
                f"the calendar database {shown} cannot be read: {reason}; its user must be able to read its tables "
                "(restore a damaged one from a backup), or fix [sfa_omf] database_url",
            )
        ]
    finally:
        database.dispose()
    head = head_revision()
    if current is None:
        return [Finding("database", f"the calendar database {shown} is empty: run sfa-omf db upgrade")]
    if not is_known_revision(current):
        return [Finding("database", unknown_revision_message(settings.calendar_url, current))]
    if current != head:
        return [
            Finding(
                "database",
                f"the calendar database {shown} is at migration {current}, this sfa-omf needs {head}: "
                "run sfa-omf db upgrade",
            )
        ]
    database = Database(settings.calendar_url)
    try:
        owner = database_owner(database, settings.interface_hrn)
    except GeniError as exc:
        return [Finding("database", f"the calendar database {shown} cannot be read: {one_line(exc.message)}")]
    finally:
        database.dispose()
    if owner is not None:
        return [
            Finding(
                "database",
                f"the calendar database {shown} belongs to {owner}, not to {settings.interface_hrn} ([sfa] "
                f"interface_hrn): set [sfa_omf] database_url to {settings.interface_hrn}'s own database, or serve it "
                f"from the directory of authority {owner.hrn}",
            )
        ]
    if url.get_backend_name() == "sqlite":
        # An SQLite file (or its directory, where its journal goes) that can be read but not written passed every
        # check above, and serve then stopped at its first write with no advice: try one.
        database = Database(settings.calendar_url)
        try:
            with database.write_connection() as connection:
                # A statement that writes, deleting no row: SQLite opens its write transaction (refused on a file it
                # could open only read-only), which BEGIN IMMEDIATE alone, in WAL mode, does not. Nothing is written.
                connection.exec_driver_sql("DELETE FROM alembic_version WHERE 0")
        except GeniError as exc:
            if exc.reason is not Reason.BUSY:  # busy: another process writes it (a running server): writable
                reason = exc.message.removeprefix("the calendar database failed: ")
                return [Finding("database", f"the calendar database {opening_advice(settings.calendar_url, reason)}")]
        finally:
            database.dispose()
    return []


@dataclass(frozen=True)
class DatabaseOwner:
    """Another authority whose registry a database holds: its HRN and how many registry records are under it."""

    hrn: str
    records: int

    def __str__(self) -> str:
        return f"authority {self.hrn} (its registry: {self.records} record{'s' if self.records != 1 else ''})"


def clock_findings(settings: Settings) -> list[Finding]:
    """PostgreSQL: this host's clock against the other live serving processes' (their offsets to the database's,
    recorded in cluster_settings; cluster/clock.py). Too far from one whose clock is nearer the database's
    (clock.clashing_peer): this process must not serve, its background tasks would release the other hosts'
    allocations and end leases at the wrong time. Such a clash is judged again on the clashing processes' next rows
    (CLOCK_CLASH_WAIT_S at most): the database's clock may have been stepped since they wrote theirs, which moves this
    host's offset and not yet their records; a process whose row is not rewritten meanwhile is not counted (the
    leadership lock still is: this process does not lead while it clashes). Above WARN_OFFSET_S off the database's: a
    warning (this host's clock or the database's is wrong; a single host serves on). Another live process too far off
    this host's, and further from the database's: a warning (it does not lead). A database that cannot be reached is
    database_findings' to say: nothing here."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from sfa_omf.calendar.database import bound_answers
    from sfa_omf.cluster.agreement import STALE_S, peer_clocks
    from sfa_omf.cluster.clock import (
        WARN_OFFSET_S,
        ClockFrames,
        clashing_peer,
        measure_offset_s,
        peer_warning_text,
        refusal_text,
        warning_text,
        wrong_peers,
    )

    if settings.calendar_url.startswith("sqlite"):
        return []  # one host, one clock
    engine = create_engine(
        settings.calendar_url, poolclass=NullPool, connect_args={"connect_timeout": DATABASE_TIMEOUT_S}
    )
    bound_answers(engine, DATABASE_TIMEOUT_S)
    frames = ClockFrames(STALE_S)
    try:
        with engine.connect() as connection:
            offset_s = measure_offset_s(connection)
            frames.note(offset_s)
            # (This host's own serving processes, if any, have its clock: never a clash.)
            peers = peer_clocks(connection)
            first = clashing_peer(offset_s, peers)
            if first is not None:
                # Like with like: wait for the clashing processes' rows written after this measurement.
                clashing = {peer for peer in peers if clashing_peer(offset_s, [peer]) is not None}
                log.warning(
                    "%s; waiting for its next record (%g s at most): the database's clock may have been stepped since",
                    refusal_text(offset_s, first),
                    CLOCK_CLASH_WAIT_S,
                )
                deadline, pause = time.monotonic() + CLOCK_CLASH_WAIT_S, threading.Event()
                while clashing and time.monotonic() < deadline:
                    pause.wait(CLOCK_CLASH_POLL_S)  # (not time.sleep: EINVAL under libfaketime, as tests run it)
                    connection.rollback()  # (a new snapshot: the rows written meanwhile)
                    clashing &= set(peer_clocks(connection))  # the rows not rewritten yet (a row gone: not counted)
                offset_s = measure_offset_s(connection)
                frames.note(offset_s)
                peers = [peer for peer in peer_clocks(connection) if peer not in clashing]
    except DBAPIError:
        return []
    finally:
        engine.dispose()
    peer = clashing_peer(offset_s, peers, frames)
    if peer is not None:
        return [Finding("clock", f"{refusal_text(offset_s, peer)}; sfa-omf serve will not start until then")]
    found = [
        Finding("clock", peer_warning_text(offset_s, wrong), warning=True) for wrong in wrong_peers(offset_s, peers)
    ]
    if abs(offset_s) > WARN_OFFSET_S:
        found.append(Finding("clock", warning_text(offset_s), warning=True))
    return found


def database_owner(database: Database, authority_hrn: str) -> DatabaseOwner | None:
    """The other authority a calendar database belongs to, or None when it is this one's (or no authority's yet).

    The registry records its own authority (``import_authority``: at init and at each start) and never another's:
    peers' users and authorities are not stored. So an authority record that is neither ``authority_hrn`` nor under
    it tells that the database was made for that other authority; served under ``authority_hrn``, its users, slices
    and nodes would be served as this authority's. ``database`` (a calendar Database) must have a schema: a missing
    SQLite file would be created."""
    from sqlalchemy import inspect, select

    from sfa_omf.calendar.models import RegistryRecord

    with database.read() as session:
        if not inspect(session.connection()).has_table(RegistryRecord.__tablename__):
            return None
        # The authority records only (a few): the users' and slices' are read only when another authority is found.
        authorities = session.scalars(
            select(RegistryRecord.hrn).where(RegistryRecord.type == "authority").order_by(RegistryRecord.hrn)
        ).all()
        others = [hrn for hrn in authorities if not _is_under(authority_hrn, hrn)]
        if not others:
            return None
        owner = others[0]
        names = session.scalars(select(RegistryRecord.hrn)).all()
    return DatabaseOwner(owner, sum(1 for hrn in names if _is_under(owner, hrn)))


def _is_under(authority_hrn: str, hrn: str) -> bool:
    """``hrn`` is ``authority_hrn`` or named under it; False for a name that is no HRN."""
    from sfa_omf.xrn import is_authority_for

    try:
        return is_authority_for(authority_hrn, hrn)
    except GeniError:
        return False


def port_findings(settings: Settings) -> list[Finding]:
    """The registry's and the aggregate's addresses can be listened on now, and are not one address."""
    if settings.registry_port == settings.aggregate_port and _hosts_overlap(
        settings.registry_host, settings.aggregate_host
    ):
        # Each would bind alone; together the second fails as if another program held the port.
        return [
            Finding(
                "port",
                f"the registry ({settings.registry_host}:{settings.registry_port}) and the aggregate "
                f"({settings.aggregate_host}:{settings.aggregate_port}) would listen on the same port: give them "
                "different ones ([sfa_registry] port, [sfa_aggregate] port; SFA's are 12345 and 12346)",
            )
        ]
    findings = []
    for service, host, port, name in (
        ("registry", settings.registry_host, settings.registry_port, "[sfa_registry] port"),
        ("aggregate", settings.aggregate_host, settings.aggregate_port, "[sfa_aggregate] port"),
    ):
        reason = bind_problem(host, port)
        if reason:
            findings.append(Finding("port", listen_message(service, host, port, reason, name)))
    return findings


def _hosts_overlap(first: str, second: str) -> bool:
    """True when listening on both hosts with one port would collide: the same host, or either means every
    address."""
    every = ("", "0.0.0.0", "::")
    return first == second or first in every or second in every


def listen_message(service: str, host: str, port: int, reason: str, setting: str) -> str:
    """One line for an address the server cannot listen on, with what to do."""
    if "in use" in reason:
        fix = f"another program listens there (is sfa-omf already running? ss -ltnp 'sport = :{port}'); stop it or "
        fix += f"change {setting}"
    elif "permission" in reason.lower():
        fix = f"ports below 1024 need privileges; use a higher {setting}"
    else:
        fix = f"{host} is not an address of this machine; change the host next to {setting}"
    return f"the {service} cannot listen on {host}:{port}: {reason}; {fix}"


def bind_problem(host: str, port: int) -> str:
    """Why (host, port) cannot be listened on, or "" when it can (SO_REUSEADDR, as Twisted listens)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host} ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return _errno_text(exc)
    return ""


def _errno_text(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


def hostname_findings(settings: Settings) -> list[Finding]:
    """The advertised hostname resolves to an address of this machine (one it can bind)."""
    name = settings.hostname
    if name in ("0.0.0.0", "::"):
        return [
            Finding(
                "hostname",
                f"hostname {name} means 'every address' to a server, nothing peers can call: set [sfa_omf] hostname "
                "to this machine's public DNS name",
            )
        ]
    try:
        addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        return [
            Finding(
                "hostname",
                f"hostname {name} does not resolve ({exc.strerror}): federation peers could not reach the aggregate; "
                "set [sfa_omf] hostname to this machine's public DNS name",
            )
        ]
    for address in addresses:
        if not bind_problem(address, 0):
            return []
    return [
        Finding(
            "hostname",
            f"hostname {name} resolves to {', '.join(addresses)}, which is not an address of this machine; set "
            "[sfa_omf] hostname to this machine's public DNS name (or fix its DNS record; behind NAT, with the public "
            "address forwarded here, this is expected)",
        )
    ]


def log_file_findings(settings: Settings) -> list[Finding]:
    """The log file cannot be written (``config check`` only: ``serve`` says so when it opens it). A missing directory
    is a problem of the file (config.py)."""
    if not settings.log_file:
        return []
    directory = os.path.dirname(os.path.abspath(settings.log_file))
    if not os.path.isdir(directory):
        return []
    target = settings.log_file if os.path.exists(settings.log_file) else directory
    if os.access(target, os.W_OK):
        return []
    what = f"the log file {settings.log_file}" if target == settings.log_file else f"the log directory {directory}"
    return [
        Finding(
            "log_file",
            f"{what} is not writable by this user: give the service's user write access (the unit "
            "config/sfa-omf.service may write only /var/lib/sfa-omf and, with LogsDirectory=sfa-omf, "
            "/var/log/sfa-omf), or leave [sfa_omf] log_file empty (standard error: the journal under systemd)",
        )
    ]


def permission_findings(settings: Settings, config_path: str) -> list[Finding]:
    """What another local user could change (``config check`` only): the configuration file (it names commands the
    server runs, such as ``[sfa_agents] dns_reload``), the data directory, the trusted roots directory and the key
    directories (``authority/``, ``aggregate/``) and what they hold: each must be owned by root or by the user
    running this command (run as root: also by the data directory's owner, the service's user when the site was
    given to it with chown -R, as docs/operators.md does), and writable by no group and no other user. (A missing one
    is said by the other checks.)"""
    owners = {0, os.geteuid()}
    hint = os.geteuid()  # whom a chown should give a path to
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):  # missing: the file's own check says so
            hint = os.stat(settings.data_dir).st_uid
        owners.add(hint)
    directories = (
        settings.data_dir,
        settings.trusted_roots_dir,
        os.path.join(settings.data_dir, "authority"),
        os.path.join(settings.data_dir, "aggregate"),
    )
    paths = [os.path.abspath(config_path)]  # (as the data directory's entries: one line per file)
    for directory in dict.fromkeys(os.path.abspath(directory) for directory in directories):
        paths.append(directory)
        try:
            paths += sorted(os.path.join(directory, name) for name in os.listdir(directory))
        except OSError:
            continue  # missing or unreadable: identity_findings and trusted_roots_findings say so
    findings = []
    for path in dict.fromkeys(paths):
        problem = _changeable_by_others(path, owners, hint)
        if problem:
            findings.append(Finding("permissions", problem))
    return findings


def moved_site_findings(settings: Settings, config_path: str) -> list[Finding]:
    """A site directory moved (``mv site1 site2``): the data directory the file names is missing, and the file's own
    directory holds the authority's key. The settings to change, each with its new value."""
    from sfa_omf.registry.authority import LocalAuthority

    old = os.path.abspath(settings.data_dir)
    new = os.path.dirname(os.path.abspath(config_path))
    key = LocalAuthority.key_path(new, settings.interface_hrn)
    if os.path.isdir(old) or old == new or not os.path.isfile(key):
        return []
    changes = [f"[sfa] data_dir = {new}"]
    for name, value in (
        ("trusted_roots", settings.trusted_roots),
        ("database_url", settings.database_url),
        ("log_file", settings.log_file),
    ):
        if old + os.sep in value:  # a path under the old directory (in a URL too: sqlite:////old/...)
            changes.append(f"[sfa_omf] {name} = {value.replace(old + os.sep, new + os.sep)}")
    return [
        Finding(
            "identity",
            f"the site seems to have moved to {new} (it holds the authority's key {key}) from {old}: set "
            f"{', '.join(changes)} in {config_path}",
        )
    ]


def _changeable_by_others(path: str, owners: set[int], hint: int) -> str:
    """Why users other than ``owners`` could change ``path`` (followed if a link), with the command that stops it
    (a chown to ``hint``); "" when they could not (or it does not exist)."""
    try:
        status = os.stat(path)
    except OSError:
        return ""
    kind = "directory" if stat.S_ISDIR(status.st_mode) else "file"
    if status.st_uid not in owners:
        return (
            f"the {kind} {path} is owned by {_user_name(status.st_uid)}, not by root or by the user running sfa-omf "
            f"({_user_name(os.geteuid())}): that user could change it; chown {_user_name(hint)} {path}"
        )
    writable = [who for who, bit in (("its group", stat.S_IWGRP), ("every user", stat.S_IWOTH)) if status.st_mode & bit]
    if not writable:
        return ""
    return (
        f"the {kind} {path} is writable by {' and '.join(writable)} (mode {stat.S_IMODE(status.st_mode):04o}): another "
        f"local user could change {'what it holds' if kind == 'directory' else 'it'}; chmod go-w {path}"
    )


def _user_name(uid: int) -> str:
    """A user's login, else ``uid N``."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def certificate_findings(settings: Settings, now: datetime | None = None) -> list[Finding]:
    """Certificates out of their validity at ``now`` (default: the present), or ending within EXPIRY_WARNING: the
    authority's root (also the registry's TLS certificate), the aggregate's (am.gid), each trusted root, and the node
    VPN's CA and server certificate when the VPN is on. Expired or not yet valid: a problem for this site's own two
    (every call would fail: ``serve`` refuses to start), a warning for a peer's root (only that peer's calls fail) and
    for the VPN's (only the nodes' tunnels); ending soon: a warning. A file that cannot be read is left to
    identity_findings and trusted_roots_findings."""
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.times import utcnow

    now = now or utcnow()
    hrn = settings.interface_hrn
    root_path = LocalAuthority.gid_path(settings.data_dir, hrn)
    renew = "run sfa-omf authority renew"
    findings = []
    root = _first_certificate(root_path)
    if root is not None:
        findings += _validity_findings(
            f"the authority's root {root_path} (also the registry's TLS certificate)",
            root.not_before,
            root.not_after,
            now,
            f"no certificate or credential of {hrn} verifies, every call fails",
            f"{renew}, then give the renewed root to the peers that trust {hrn} (they run sfa-omf trust add-root)",
            own=True,
        )
    aggregate_path = os.path.join(settings.data_dir, "aggregate", "am.gid")
    aggregate = _first_certificate(aggregate_path)  # its leaf: the root it carries is checked above
    if aggregate is not None:
        findings += _validity_findings(
            f"the aggregate's certificate {aggregate_path}",
            aggregate.not_before,
            aggregate.not_after,
            now,
            "TLS clients refuse the aggregate",
            renew,
            own=True,
        )
    findings += _trusted_root_validity(settings, root, root_path, now)
    if settings.agent_vpn_remote:
        findings += _vpn_validity(os.path.join(settings.data_dir, "vpn"), now)
    return findings


def _first_certificate(path: str) -> Gid | None:
    """The first certificate of a GID file, or None when it cannot be read (another check says why)."""
    from sfa_omf.trust.gid import load_gid_chain_file

    try:
        return load_gid_chain_file(path)[0]
    except (OSError, ValueError, GeniError):
        return None


def validity_problem(not_before: datetime, not_after: datetime, now: datetime) -> str:
    """Why a certificate is not valid at ``now`` ("expired", "not yet valid"), or "" when it is."""
    if now > not_after:
        return "expired"
    if now < not_before:
        return "not yet valid"
    return ""


def _validity_findings(
    what: str, not_before: datetime, not_after: datetime, now: datetime, harm: str, fix: str, own: bool
) -> list[Finding]:
    """One finding when a certificate is out of its validity or ends within EXPIRY_WARNING, else none. ``harm``:
    what fails meanwhile; ``fix``: what to do; ``own``: one of this site's (out of its validity: a problem)."""
    from sfa_omf.times import format_time

    problem = validity_problem(not_before, not_after, now)
    if problem == "expired":
        message = f"{what} expired on {format_time(not_after)}: {harm}; {fix}"
    elif problem:
        message = (
            f"{what} is not valid before {format_time(not_before)}: {harm}; is this machine's clock right (date -u)? "
            f"If it is, {fix}"
        )
    elif not_after - now <= EXPIRY_WARNING:
        days = (not_after - now).days
        when = f"in {days} day{'s' if days != 1 else ''}" if days else "within a day"
        return [Finding("certificates", f"{what} expires on {format_time(not_after)} ({when}); {fix}", warning=True)]
    else:
        return []
    return [Finding("certificates", message, warning=not own)]


def _trusted_root_validity(settings: Settings, own_root: Gid | None, own_path: str, now: datetime) -> list[Finding]:
    """The trusted roots' validity; a copy of this authority's current root is said once, as the authority's."""
    from sfa_omf.trust.roots import ROOT_SUFFIXES

    directory = settings.trusted_roots_dir
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(ROOT_SUFFIXES))
    except OSError:
        return []  # trusted_roots_findings says so
    findings = []
    for name in names:
        path = os.path.join(directory, name)
        anchor = _first_certificate(path)
        if anchor is None or (own_root is not None and anchor.fingerprint == own_root.fingerprint):
            continue
        if anchor.hrn == settings.interface_hrn:  # an older copy of this authority's own root
            what = f"trusted root {path} (this authority's own, an older copy of {own_path})"
            harm = f"calls from {settings.interface_hrn}'s users fail"
            fix = f"sfa-omf trust add-root {own_path} puts the current one in its place"
        else:
            what = f"trusted root {path} (authority {anchor.hrn})"
            harm = f"calls from {anchor.hrn}'s users fail"
            fix = f"ask {anchor.hrn} for its renewed root and run sfa-omf trust add-root FILE"
        findings += _validity_findings(what, anchor.not_before, anchor.not_after, now, harm, fix, own=False)
    return findings


def _vpn_validity(directory: str, now: datetime) -> list[Finding]:
    """The node VPN's CA and server certificate (sfa_omf/agents/vpn.py makes them at the first start)."""
    from cryptography import x509

    fixes = {
        "ca.pem": "sfa-omf does not renew the VPN's CA: make a new VPN CA and a certificate for every node (sfa-omf "
        "agent vpn on each)",
        # (agents/vpn.py re-issues it before its end, at start and at each refresh, and signals OpenVPN.)
        "server.pem": "sfa-omf serve re-issues it with the same key 30 days before its end (at start and at each VPN "
        "refresh) and sends OpenVPN SIGHUP: start serve, and restart OpenVPN if its log says it could not be "
        "signalled",
    }
    findings = []
    for name, what in (("ca.pem", "the node VPN's CA"), ("server.pem", "the node VPN's server certificate")):
        fix = fixes[name]
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as handle:
                certificate = x509.load_pem_x509_certificate(handle.read())
        except (OSError, ValueError):
            continue  # not made yet (serve makes it), or the VPN says why when it starts
        findings += _validity_findings(
            f"{what} {path}",
            certificate.not_valid_before_utc,
            certificate.not_valid_after_utc,
            now,
            "nodes' tunnels are refused",
            fix,
            own=False,
        )
    return findings


def startup_findings(settings: Settings) -> list[Finding]:
    """What ``sfa-omf serve`` looks at before it starts: identity files, certificates' validity, trusted roots, the
    database (findings marked ``warning`` do not stop it)."""
    return (
        identity_findings(settings)
        + certificate_findings(settings)
        + trusted_roots_findings(settings)
        + database_findings(settings)
        + clock_findings(settings)
    )


def deployment_findings(settings: Settings) -> list[Finding]:
    """Everything ``config check`` looks at beyond the file: start-up, ports, hostname, log file."""
    return (
        startup_findings(settings) + port_findings(settings) + hostname_findings(settings) + log_file_findings(settings)
    )


def check_startup(settings: Settings, ports: bool = False) -> list[Finding]:
    """Raise StartupError with the first problem that would stop the server (and how many more there are); else
    return the warnings, for the log. ``ports``: also try to bind both addresses."""
    found = startup_findings(settings) + (port_findings(settings) if ports else [])
    findings = [finding for finding in found if not finding.warning]
    if findings:
        more = len(findings) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''}: sfa-omf config check lists them)" if more else ""
        raise StartupError(findings[0].message + suffix)
    return [finding for finding in found if finding.warning]
