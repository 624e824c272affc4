"""``sfa-omf init``: a local authority, the aggregate's identity and sfi-ready demo users, without questions.

Re-running on an initialised directory changes nothing that exists (keys are never overwritten); users named for the
first time are added. Asking for a different authority than the one the directory holds is refused
(``existing_authority`` tells which one it holds). ``demo=False`` makes no demo slice (a real site).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import make_url

from rspec.model import Request, RequestLease, RequestNode
from rspec.write_request import Dialect, write_request
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.intervals import align_up
from sfa_omf.config import CONFIG_FILE_NAME, DEFAULT_AUTHORITY, Settings, read_config, write_config
from sfa_omf.files import PRIVATE_DIRECTORY, PUBLIC_DIRECTORY, PUBLIC_FILE, make_directories, replace_file
from sfa_omf.registry.authority import (
    AuthorityError,
    LocalAuthority,
    drop_crash_leftover,
    is_empty_file,
    read_private_key,
    same_key,
    write_new_file,
)
from sfa_omf.registry.records import Records
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import DEFAULT_GID_LIFETIME, create_gid, new_private_key, private_key_pem, renew_gid
from sfa_omf.xrn import authority_hrn_problem, hrn_to_urn, join_hrn, split_hrn

log = logging.getLogger("sfa_omf.registry")
DEFAULT_USERS = ("alice",)
DEMO_SLICE = "demo"
OMNI_CONFIG_NAME = "omni_config"  # omni's configuration for a demo user, beside sfi_config
SSH_KEY_NAME = "id_ed25519"  # a demo user's SSH key pair, beside the sfi.py files (the .pub is registered)
#: The example requests quickstart writes into DIR/rspecs, one per way of asking for time (docs/experimenters.md).
EXAMPLE_REQUESTS = ("request-ol-lease.xml", "request-sfa-lease.xml", "request-no-time.xml", "request-asap.xml")
#: The data directory init makes: the service user's, readable by its group (the site's keys are 0700 inside).
DATA_DIRECTORY_MODE = 0o750
_USER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # fullmatch: "$" lets a final line break through
#: init re-issues the aggregate's GID (the same key) when it expires within this: TLS clients that check the
#: server's certificate refuse an expired one, and nothing else renews it.
RENEW_AHEAD = timedelta(days=30)


@dataclass
class InitReport:
    """What init did: files created, and things that were there already (left untouched)."""

    directory: str
    authority_hrn: str
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)  # certificates re-issued with the same key (about to expire)
    sfi_dirs: dict[str, str] = field(default_factory=dict)
    demo: bool = True  # the demo slice exists, with the demo users as its researchers


def init_directory(
    directory: str,
    authority_hrn: str = DEFAULT_AUTHORITY,
    users: tuple[str, ...] = DEFAULT_USERS,
    settings: Settings | None = None,
    demo: bool = True,
) -> InitReport:
    """Create (or complete) an authority directory; see the module docstring."""
    directory = os.path.abspath(directory)
    # Before anything is written: the authority's own root would be refused (a directory left half made).
    problem = authority_hrn_problem(authority_hrn)
    if problem is not None:
        raise AuthorityError(f"the authority HRN (--authority) {problem}: give one without it")
    for name in users:
        if not _USER_NAME.fullmatch(name):
            raise AuthorityError(
                f"user name {name!r} is not usable: lower-case letters, digits, '-' and '_', starting with a letter"
            )
    report = InitReport(directory=directory, authority_hrn=authority_hrn, demo=demo)
    config_path = os.path.join(directory, CONFIG_FILE_NAME)
    initialised = os.path.exists(config_path)
    if initialised:
        settings = read_config(config_path)
        if settings.interface_hrn != authority_hrn:
            raise AuthorityError(
                f"{directory} already holds authority {settings.interface_hrn!r}, not {authority_hrn!r}; "
                "use another directory"
            )
    else:
        settings = settings or Settings(interface_hrn=authority_hrn, data_dir=directory)
    if demo:  # before any file is written: a name refused now leaves nothing behind
        parts = split_hrn(authority_hrn)
        names = [(join_hrn([*parts, DEMO_SLICE]), "slice"), *((join_hrn([*parts, name]), "user") for name in users)]
        _refuse_names_removed_lately(settings, names)
    if initialised:
        report.kept.append(config_path)
        authority = LocalAuthority.load(directory, authority_hrn)
        report.kept.append(LocalAuthority.key_path(directory, authority_hrn))
    else:
        # Not through the umask: the data directory holds the calendar's SQLite file and the users' sfi.py folders.
        make_directories(directory, DATA_DIRECTORY_MODE)
        paths = [LocalAuthority.key_path(directory, authority_hrn), LocalAuthority.gid_path(directory, authority_hrn)]
        there = {path for path in paths if os.path.exists(path) and not is_empty_file(path)}
        authority = LocalAuthority.create(directory, authority_hrn)  # completes what a run cut short left
        report.created += [path for path in paths if path not in there]
        report.kept += [path for path in paths if path in there]
        write_config(config_path, settings)
        report.created.append(config_path)
    _ensure_aggregate_identity(authority, report)
    if not demo:
        return report
    slice_hrn = authority.child_hrn(DEMO_SLICE)
    slice_chain = _ensure_gid(authority, slice_hrn, "slice", report)
    for name in users:
        _ensure_user(authority, settings, name, slice_hrn, slice_chain, report)
    return report


def _refuse_names_removed_lately(settings: Settings, names: Sequence[tuple[str, str]]) -> None:
    """BUSY (GeniError, as the registry answers) when one of ``names`` ((HRN, "user" or "slice")) init would register
    has no record and was removed less than ``REGISTER_AGAIN_AFTER_S`` ago: registered now, the removed holder's
    last calls would become the new holder's (registry/records.py); ALREADY_EXISTS when it has no record but differs
    from a registered name only in case (tb.bob beside tb.Bob would share its local login). Checked before init
    writes anything, so that the name's GID file, sfi.py directory and place among the demo slice's researchers are
    not left without a record (and in the way of registering it later). A calendar not made yet (a new directory's
    SQLite file) holds no removal."""
    database = Database(settings.calendar_url)
    try:
        if database.is_sqlite:
            path = make_url(database.url).database
            if not path or path == ":memory:" or not os.path.exists(path):
                return  # (connecting would create the file)
        if database.schema_revision() is None:
            return
        database.upgrade()  # as init does next (cli.py _cmd_init): the removals are read in the current schema
        records = Records(database)
        for hrn, kind in names:
            if records.get(hrn) is None:
                records.refuse_same_but_for_case(hrn)
            records.refuse_if_removed_lately(hrn, hrn_to_urn(hrn, kind))
    finally:
        database.dispose()


def existing_authority(directory: str) -> str | None:
    """The authority HRN an initialised directory holds (its configuration's ``interface_hrn``), else None."""
    config_path = os.path.join(directory, CONFIG_FILE_NAME)
    if not os.path.exists(config_path):
        return None
    return read_config(config_path).interface_hrn


def _ensure_aggregate_identity(authority: LocalAuthority, report: InitReport) -> None:
    """aggregate/am.pkey and am.gid (the aggregate's TLS identity, issued by the authority): made when missing. An
    empty key (a crash's leftover) is replaced with its GID, which certifies a key that is lost: peers trust the
    authority's root, not this key. A key that cannot be read is refused; a key without its GID gets one."""
    key_path = os.path.join(authority.directory, "aggregate", "am.pkey")
    gid_path = os.path.join(authority.directory, "aggregate", "am.gid")
    make_directories(os.path.dirname(key_path), PRIVATE_DIRECTORY)
    if drop_crash_leftover(key_path, "aggregate key") and os.path.exists(gid_path):
        os.remove(gid_path)  # it certifies the key that is lost: a new one is issued below for the new key
    drop_crash_leftover(gid_path, "aggregate GID")
    if os.path.exists(key_path):
        key = read_private_key(
            key_path,
            "the aggregate's key",
            f"restore it from the backup, or move it and {gid_path} aside and run init again for a new one",
        )
        report.kept.append(key_path)
    else:
        key = new_private_key()
        write_new_file(key_path, private_key_pem(key), private=True)
        report.created.append(key_path)
    if os.path.exists(gid_path):
        if not same_key(load_gid_chain_file(gid_path)[0], key):
            raise AuthorityError(
                f"{gid_path} certifies another key than {key_path}: restore aggregate/ from the backup, or move both "
                "aside and run init again for a new aggregate identity"
            )
        current = load_gid_chain_file(gid_path)[0]
        if current.not_after - utcnow() > RENEW_AHEAD:
            report.kept.append(gid_path)
            return
        renewed = renew_aggregate_gid(authority)
        report.renewed.append(gid_path)
        # Said on standard error (init logs there): the certificate TLS clients see changed.
        log.warning(
            "%s %s at %s: re-issued with the same key, valid until %s (restart sfa-omf serve to serve it)",
            gid_path,
            "expired" if current.not_after <= utcnow() else "expires",
            format_time(current.not_after),
            format_time(renewed.not_after),
        )
        root = authority.chain[0]
        if root.not_after - utcnow() <= RENEW_AHEAD:
            log.warning(
                "the authority's root GID %s %s at %s: renew it with sfa-omf authority renew",
                LocalAuthority.gid_path(authority.directory, authority.hrn),
                "expired" if root.not_after <= utcnow() else "expires",
                format_time(root.not_after),
            )
        return
    gid = create_gid(hrn_to_urn(authority.hrn, "authority+am"), key.public_key(), authority.key, authority.chain[0])
    write_new_file(gid_path, chain_pem((gid, *authority.chain)).encode("ascii"))
    report.created.append(gid_path)


def aggregate_gid_path(directory: str) -> str:
    """DIR/aggregate/am.gid: the aggregate's GID chain (its TLS certificate)."""
    return os.path.join(directory, "aggregate", "am.gid")


def renewed_aggregate_gid(
    authority: LocalAuthority, lifetime: timedelta = DEFAULT_GID_LIFETIME, not_before: datetime | None = None
) -> GidChain | None:
    """The aggregate's GID (am.gid) re-issued with the same key under the authority's root as it is now (renewed or
    not), from ``not_before`` (default now) for ``lifetime``, as a chain to write; None when there is no am.gid.
    Nothing is written."""
    path = aggregate_gid_path(authority.directory)
    if not os.path.exists(path):
        return None
    gid = renew_gid(load_gid_chain_file(path)[0], authority.key, authority.chain[0], lifetime, not_before)
    return (gid, *authority.chain)


def renew_aggregate_gid(authority: LocalAuthority, lifetime: timedelta = DEFAULT_GID_LIFETIME) -> Gid:
    """Re-issue am.gid with the same key (renewed_aggregate_gid) and write it in place (at once: a server starting
    meanwhile reads the old file or the new one); the new GID."""
    chain = renewed_aggregate_gid(authority, lifetime)
    if chain is None:
        raise AuthorityError(f"no {aggregate_gid_path(authority.directory)} to renew: run sfa-omf init")
    replace_file(aggregate_gid_path(authority.directory), chain_pem(chain).encode("ascii"), PUBLIC_FILE)
    return chain[0]


def _ensure_gid(authority: LocalAuthority, hrn: str, type_: str, report: InitReport) -> GidChain:
    path = authority.issued_gid_path(hrn)
    if os.path.exists(path):
        report.kept.append(path)
        return authority.issued_chain(hrn)
    chain, _ = authority.issue_gid(hrn, type_)
    report.created.append(path)
    return chain


def _ensure_user(
    authority: LocalAuthority,
    settings: Settings,
    name: str,
    slice_hrn: str,
    slice_chain: GidChain,
    report: InitReport,
) -> None:
    user_hrn = authority.child_hrn(name)
    sfi_dir = os.path.join(authority.directory, "users", name, "sfi")
    report.sfi_dirs[name] = sfi_dir
    key_path = os.path.join(sfi_dir, f"{user_hrn}.pkey")
    write_client_files(sfi_dir, authority.hrn, user_hrn, settings, report)
    if is_empty_file(key_path):
        # Not replaced as the authority's or the aggregate's: the user's GID (gids/, and the registry's record once
        # registered) certifies the key that is lost, and a new key needs a new GID under the same name.
        raise AuthorityError(
            f"{key_path} is empty (left by a crash while it was written): the GID issued for {user_hrn} certifies "
            f"the key it should hold; restore {sfi_dir} from the backup, or remove the user (sfa-omf user remove "
            f"{user_hrn}; if it is not registered, delete {sfi_dir} and {authority.issued_gid_path(user_hrn)}) "
            "and run init again"
        )
    if os.path.exists(key_path):
        report.kept.append(key_path)
        return
    chain, key = authority.issue_gid(user_hrn, "user", email=f"{name}@{authority.hrn}.example.org")
    assert key is not None
    files = {
        key_path: (private_key_pem(key), True),
        os.path.join(sfi_dir, f"{user_hrn}.user.gid"): (chain_pem(chain).encode("ascii"), False),
        os.path.join(sfi_dir, f"{user_hrn}.user.cred"): (
            authority.credential(chain, chain, can_delegate=False).encode("utf-8"),
            False,
        ),
        os.path.join(sfi_dir, f"{user_hrn}-{slice_hrn}.slice.cred"): (
            authority.credential(chain, slice_chain).encode("utf-8"),
            False,
        ),
        os.path.join(sfi_dir, "sfi_config"): (
            sfi_config(authority.hrn, user_hrn, settings).encode("utf-8"),
            False,
        ),
    }
    for path, (data, private) in files.items():
        write_new_file(path, data, private=private)
        report.created.append(path)
    report.created.append(authority.issued_gid_path(user_hrn))


def write_client_files(
    sfi_dir: str,
    authority_hrn: str,
    user_hrn: str,
    settings: Settings,
    report: InitReport,
    ssh_key_files: Sequence[str] = (),
) -> None:
    """What a demo user's sfi.py folder holds besides sfi.py's own files: an SSH key pair (``ssh_public_key_in``
    reads its public half, to register) and an omni_config sending it; each kept when there. ``sfa-omf user add``
    writes them too for a user it makes a key pair for; given the user's own public key files (``ssh_key_files``),
    no pair is made and the omni_config sends those."""
    if not ssh_key_files:
        _ensure_ssh_key(sfi_dir, f"{split_hrn(user_hrn)[-1]}@{authority_hrn}", report)
    _ensure_omni_config(sfi_dir, authority_hrn, user_hrn, settings, report, ssh_key_files)


def ssh_public_key_in(sfi_dir: str) -> str | None:
    """The public key of the SSH key pair write_client_files wrote in ``sfi_dir`` (None when there is none)."""
    public_path = os.path.join(sfi_dir, f"{SSH_KEY_NAME}.pub")
    if not os.path.exists(public_path):
        return None
    with open(public_path, encoding="ascii") as handle:
        return handle.read().strip()


def _ensure_ssh_key(sfi_dir: str, comment: str, report: InitReport) -> None:
    """An SSH key pair for a demo user (private key 0600), so that logins the manifest names work at once."""
    private_path = os.path.join(sfi_dir, SSH_KEY_NAME)
    if drop_crash_leftover(private_path, "SSH key pair") and os.path.exists(f"{private_path}.pub"):
        os.remove(f"{private_path}.pub")  # the lost key's half: the new pair replaces it (and is registered too)
    if os.path.exists(private_path):
        report.kept.append(private_path)
        return
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_new_file(private_path, private, private=True)
    write_new_file(f"{private_path}.pub", public + f" {comment}\n".encode())
    report.created += [private_path, f"{private_path}.pub"]


def _ensure_omni_config(
    sfi_dir: str,
    authority_hrn: str,
    user_hrn: str,
    settings: Settings,
    report: InitReport,
    ssh_key_files: Sequence[str] = (),
) -> None:
    """An omni_config beside sfi_config, so that omni works at once (``omni -c SFI/omni_config -V3 ...``): omni has
    no --cert/--key options; it takes the user's certificate and key from this file. Written once: an operator's
    or user's edits are kept."""
    path = os.path.join(sfi_dir, OMNI_CONFIG_NAME)
    if os.path.exists(path):
        report.kept.append(path)
        return
    write_new_file(path, omni_config(sfi_dir, authority_hrn, user_hrn, settings, ssh_key_files).encode("utf-8"))
    report.created.append(path)


def omni_aggregate_nickname(authority_hrn: str) -> str:
    """The nickname omni_config gives the aggregate: the authority's HRN, lower case (omni lowercases nicknames)."""
    return authority_hrn.lower()


def omni_config(
    sfi_dir: str, authority_hrn: str, user_hrn: str, settings: Settings, ssh_key_files: Sequence[str] = ()
) -> str:
    """omni's configuration for a user of the local authority (its ``sfa`` framework: omni asks the registry for
    slice credentials itself), with absolute paths to the user's files in ``sfi_dir``; the SSH public keys omni
    sends are ``ssh_key_files``, by default the pair in ``sfi_dir``. Unlike sfi.py, omni is given https:// URLs. The
    aggregate has a nickname and is omni's default aggregate (``aggregates``): without ``-a`` omni would ask the
    framework's slice manager (``slicemgr``, this aggregate) for its peers and find none."""
    folder = os.path.abspath(sfi_dir)
    keys = ",".join(os.path.abspath(path) for path in ssh_key_files) or f"{os.path.join(folder, SSH_KEY_NAME)}.pub"
    # The user's section label is omni's own (only its urn counts): omni splits ``users`` at commas and its config
    # parser ends a section header at the first "]", so a name holding either crashed omni; other characters too go.
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", split_hrn(user_hrn)[-1]) or "user"
    nickname = omni_aggregate_nickname(authority_hrn)
    aggregate = f"{hrn_to_urn(authority_hrn, 'authority+am')},{settings.https_url(settings.aggregate_port)}/"
    return (
        "# omni (geni-tools): omni -c THIS_FILE -V3 COMMAND ... (docs/experimenters.md); the aggregate is the\n"
        f"# default (aggregates), or give -a {nickname} or -a AGGREGATE_URL\n"
        "[omni]\n"
        "default_cf = sfa\n"
        f"users = {name}\n"
        f"aggregates = {nickname}\n"
        "\n"
        "[aggregate_nicknames]\n"
        f"{nickname} = {aggregate}\n"
        "\n"
        f"[{name}]\n"
        f"urn = {hrn_to_urn(user_hrn, 'user')}\n"
        f"keys = {keys}\n"
        "\n"
        "[sfa]\n"
        "type = sfa\n"
        f"authority = {authority_hrn}\n"
        f"user = {user_hrn}\n"
        f"cert = {os.path.join(folder, f'{user_hrn}.user.gid')}\n"
        f"key = {os.path.join(folder, f'{user_hrn}.pkey')}\n"
        f"registry = {settings.https_url(settings.registry_port)}/\n"
        f"slicemgr = {settings.https_url(settings.aggregate_port)}/\n"
    )


def sfi_config(authority_hrn: str, user_hrn: str, settings: Settings) -> str:
    return (
        "# sfi.py opens TLS itself to the registry and the aggregate: keep these URLs http://\n"
        "# (an https:// URL breaks sfi.py; the server only speaks TLS all the same).\n"
        "[sfi]\n"
        f"auth = {authority_hrn}\n"
        f"user = {user_hrn}\n"
        f"registry = {settings.registry_url}\n"
        f"sm = {settings.aggregate_url}\n"
    )


def register_demo(report: InitReport, database: Database) -> None:
    """Record the authority's GIDs in its registry, with the demo users as researchers of the demo slice (when
    there is one)."""
    authority = LocalAuthority.load(report.directory, report.authority_hrn)
    users = [authority.child_hrn(name) for name in sorted(report.sfi_dirs)]
    records = Records(database)
    slices = {authority.child_hrn(DEMO_SLICE): users} if report.demo else {}
    records.import_authority(authority, slices)
    for name, sfi_dir in sorted(report.sfi_dirs.items()):  # their SSH keys: sfi show lists them, logins use them
        record = records.get(authority.child_hrn(name))
        if record is None:
            continue
        # Their GID certifies the key pair written in their sfi.py folder: an Update giving them an ssh-rsa login
        # key leaves it as it is (registry/api.py, _rekeyed_chain).
        public = ssh_public_key_in(sfi_dir)
        keys = [*record.keys, public] if public is not None and public not in record.keys else None
        if keys is not None or record.key_held is not True:
            records.update(record.hrn, keys=keys, key_held=True)


def write_example_requests(
    directory: str, component_ids: Sequence[str], now: datetime, grain: timedelta, duration: timedelta
) -> list[str]:
    """Write DIR/rspecs/request-*.xml (EXAMPLE_REQUESTS): one node each (the inventory's, in turn), asking for time in
    each dialect: an ol:lease, an SFA <lease>, no time (from now), and as soon as possible. Fixed slots start at the
    first grain boundary an hour from ``now``; the files are rewritten each time, so their times stay ahead."""
    if not component_ids:
        return []
    folder = os.path.join(directory, "rspecs")
    make_directories(folder, PUBLIC_DIRECTORY)
    grain_s = int(grain.total_seconds())
    start = datetime.fromtimestamp(align_up(int((now + timedelta(hours=1)).timestamp()), grain_s), now.tzinfo)
    examples = (
        (Dialect.OL, RequestLease(start, duration, (), client_id="slot1"), "a fixed slot as an ol:lease"),
        (Dialect.SFA, RequestLease(start, duration, ()), "a fixed slot as an SFA <lease> (duration in grains)"),
        (Dialect.SFA, None, "no time: booked from now when the node is free, else at its earliest free slot"),
        (Dialect.OL, RequestLease(None, duration, (), client_id="asap"), "as soon as possible, for a duration"),
    )
    written = []
    for index, (name, (dialect, lease, what)) in enumerate(zip(EXAMPLE_REQUESTS, examples, strict=True)):
        component_id = component_ids[index % len(component_ids)]
        client_id = component_id.rsplit("+", 1)[-1]
        node = RequestNode(client_id=client_id, component_id=component_id, exclusive=True, sliver_type="raw-pc")
        booked = (replace(lease, nodes=(client_id,)),) if lease else ()
        document, _ = write_request(Request((node,), booked), dialect, grain)
        declaration, _, body = document.partition(b"\n")
        path = os.path.join(folder, name)
        replace_file(path, declaration + f"\n<!-- sfa-omf example request: {what}. -->\n".encode() + body, PUBLIC_FILE)
        written.append(path)
    return written
