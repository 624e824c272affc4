"""The local authority: the testbed's own root of trust, stored in a directory.

Layout of an authority directory (``sfa-omf init DIR``)::

    DIR/sfa-omf.conf                     configuration in SFA's INI form (see config.py)
    DIR/authority/<hrn>.pkey, <hrn>.gid  the root authority's key and self-signed GID
    DIR/aggregate/am.pkey, am.gid        the aggregate manager's key and GID chain (URN ...+authority+am)
    DIR/trusted_roots/<hrn>.gid          roots we trust; trusting another authority = adding its root here
    DIR/gids/<hrn>.gid                   GID chains the authority issued (users, slices, nodes)
    DIR/users/<name>/sfi/                a ready sfi.py directory per demo user

Keys are written once with mode 0600 and never overwritten, GIDs 0644, whole or not at all (sfa_omf/files.py): the
key directories (authority/, aggregate/, users/NAME/sfi/) are made 0700, trusted_roots/ and gids/ 0755, whatever the
umask. An empty key file, which a crash left (versions before wrote keys in place), holds no key to lose: ``init``
replaces it when nothing certifies it yet.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.errors import BadArgs
from sfa_omf.files import (
    PRIVATE_DIRECTORY,
    PRIVATE_FILE,
    PUBLIC_DIRECTORY,
    PUBLIC_FILE,
    create_file,
    make_directories,
    replace_file,
)
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import CredentialRequest, Privilege, issue_credential
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file, new_private_key, private_key_pem
from sfa_omf.trust.rights import DEFAULT_PRIVILEGES
from sfa_omf.xrn import hrn_to_urn, join_hrn, split_hrn

log = logging.getLogger("sfa_omf.registry")
DEFAULT_CREDENTIAL_LIFETIME = timedelta(days=30)


class AuthorityError(Exception):
    """The authority directory is missing, inconsistent, or would be overwritten."""


class IssuedAlready(AuthorityError):
    """A GID for the name was issued already (its file in gids/ would be overwritten)."""


def write_new_file(path: str, data: bytes, private: bool = False) -> None:
    """Write a file that must not exist yet (never overwrite keys or GIDs; FileExistsError), whole or not at all:
    mode 0600 when ``private`` (a key), else 0644. Its directory, when missing, is made 0700, as any missing above it
    (a directory that must be readable by others, trusted_roots/ or gids/, is made by its caller first)."""
    make_directories(os.path.dirname(os.path.abspath(path)), PRIVATE_DIRECTORY, parents_mode=PRIVATE_DIRECTORY)
    create_file(path, data, PRIVATE_FILE if private else PUBLIC_FILE)


def is_empty_file(path: str) -> bool:
    """Whether ``path`` is an empty regular file (not a link to one)."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_size == 0


def drop_crash_leftover(path: str, what: str) -> bool:
    """Remove ``path`` when it is an empty file: a crash while it was written (before keys were written whole) left
    it, and it holds nothing to lose; says so in the log (on standard error for ``init``). True when removed."""
    if not is_empty_file(path):
        return False
    os.remove(path)
    log.warning("%s was empty (left by a crash while it was written): a new %s is made in its place", path, what)
    return True


def read_private_key(path: str, what: str, advice: str) -> rsa.RSAPrivateKey:
    """The RSA key in ``path`` (``what`` it is); AuthorityError saying what to do (``advice``) when the file holds no
    readable one: it is never replaced, a key that cannot be read may still be recovered."""
    try:
        return load_private_key_file(path)
    except (ValueError, TypeError):  # not PEM, cut short, encrypted, not RSA
        why = "it is empty" if is_empty_file(path) else "not an unencrypted PEM RSA key"
        raise AuthorityError(
            f"{path} ({what}) holds no readable private key ({why}); it is not replaced: {advice}"
        ) from None


def same_key(gid: Gid, key: rsa.RSAPrivateKey) -> bool:
    """Whether ``gid`` certifies ``key``'s public key."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return gid.public_key_der == der


@dataclass
class LocalAuthority:
    """A root authority with its key, able to issue GIDs and credentials."""

    directory: str
    hrn: str
    key: rsa.RSAPrivateKey
    chain: GidChain

    # -- paths ------------------------------------------------------------------------------------------------
    @staticmethod
    def key_path(directory: str, hrn: str) -> str:
        return os.path.join(directory, "authority", f"{hrn}.pkey")

    @staticmethod
    def gid_path(directory: str, hrn: str) -> str:
        return os.path.join(directory, "authority", f"{hrn}.gid")

    @property
    def trusted_roots_dir(self) -> str:
        return os.path.join(self.directory, "trusted_roots")

    def issued_gid_path(self, hrn: str) -> str:
        return os.path.join(self.directory, "gids", f"{hrn}.gid")

    @property
    def urn(self) -> str:
        return hrn_to_urn(self.hrn, "authority")

    # -- creation and loading --------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str, hrn: str) -> LocalAuthority:
        """Create a new root authority in directory: its key, its self-signed GID, the GID's copy in trusted_roots/.

        What a run cut short left is completed, nothing overwritten (``init`` writes the configuration after these,
        so a directory without one never served): a key without its GID gets one, and a missing root copy is made.
        An empty key file is a crash's leftover and replaced (saying so) when no GID certifies it yet. Refused: a key
        file that holds no readable key, a GID of another key, a GID whose key is missing or empty (lost)."""
        split_hrn(hrn)  # validates the name
        key_path = cls.key_path(directory, hrn)
        gid_path = cls.gid_path(directory, hrn)
        root_copy = os.path.join(directory, "trusted_roots", f"{hrn}.gid")
        # Made first, with their modes: write_new_file would make a missing trusted_roots/ private.
        make_directories(os.path.dirname(key_path), PRIVATE_DIRECTORY)
        make_directories(os.path.dirname(root_copy), PUBLIC_DIRECTORY)
        drop_crash_leftover(gid_path, "GID")
        drop_crash_leftover(root_copy, "root copy")
        if os.path.exists(gid_path) and (is_empty_file(key_path) or not os.path.exists(key_path)):
            raise AuthorityError(
                f"{gid_path} certifies an authority key that is {'empty' if os.path.exists(key_path) else 'missing'}"
                f" ({key_path}): restore authority/ from the backup; or, to make a new authority (every peer must "
                f"then trust its new root), move authority/, aggregate/, gids/ and {root_copy} aside and run init "
                "again"
            )
        drop_crash_leftover(key_path, "authority key")
        if os.path.exists(key_path):
            key = read_private_key(
                key_path,
                "the authority's key",
                "restore it from the backup; or, to make a new authority, move it aside and run init again",
            )
        else:
            key = new_private_key()
            write_new_file(key_path, private_key_pem(key), private=True)
        if os.path.exists(gid_path):
            gid = load_gid_chain_file(gid_path)[0]
            if not same_key(gid, key):
                raise AuthorityError(
                    f"{gid_path} certifies another key than {key_path}: restore authority/ from the backup"
                )
        else:
            gid = create_gid(hrn_to_urn(hrn, "authority"), key.public_key(), key)
            write_new_file(gid_path, gid.pem().encode("ascii"))
        if not os.path.exists(root_copy):
            write_new_file(root_copy, gid.pem().encode("ascii"))
        return cls(directory=directory, hrn=hrn, key=key, chain=(gid,))

    @classmethod
    def load(cls, directory: str, hrn: str) -> LocalAuthority:
        key_path = cls.key_path(directory, hrn)
        gid_path = cls.gid_path(directory, hrn)
        if not (os.path.exists(key_path) and os.path.exists(gid_path)):
            raise AuthorityError(f"no authority {hrn!r} in {directory} (expected {key_path} and {gid_path})")
        # An empty key here is not replaced: the GID, every GID issued and every peer's trust name its lost key.
        key = read_private_key(
            key_path,
            "the authority's key",
            f"restore it from the backup (its GID {gid_path} and every GID issued certify the key it held)",
        )
        return cls(directory=directory, hrn=hrn, key=key, chain=load_gid_chain_file(gid_path))

    # -- issuing ----------------------------------------------------------------------------------------------
    def issue_gid(
        self, hrn: str, type_: str, public_key: rsa.RSAPublicKey | None = None, email: str | None = None
    ) -> tuple[GidChain, rsa.RSAPrivateKey | None]:
        """Issue a GID (chain, leaf first) for hrn under this authority and record it in gids/.

        When no key is given a new one is made and returned (the caller decides where the private key lives).
        """
        self._refuse_unissuable(hrn)  # before a key pair is made for nothing
        new_key: rsa.RSAPrivateKey | None = None
        if public_key is None:
            new_key = new_private_key()
            public_key = new_key.public_key()
        chain = self.new_chain(hrn, type_, public_key, email)
        path = self.issued_gid_path(hrn)
        if os.path.exists(path):
            raise IssuedAlready(f"a GID for {hrn!r} exists already in {path}")
        make_directories(os.path.dirname(path), PUBLIC_DIRECTORY)
        try:
            write_new_file(path, chain_pem(chain).encode("ascii"))
        except FileExistsError:  # issued meanwhile by another process
            raise IssuedAlready(f"a GID for {hrn!r} exists already in {path}") from None
        return chain, new_key

    def new_chain(self, hrn: str, type_: str, public_key: rsa.RSAPublicKey, email: str | None = None) -> GidChain:
        """A GID chain (leaf first) for hrn under this authority certifying ``public_key``, written nowhere yet:
        AuthorityError for a name not under it, BadArgs for one no GID (or GID file name) can hold."""
        self._refuse_unissuable(hrn)
        try:
            gid = create_gid(hrn_to_urn(hrn, type_), public_key, self.key, issuer=self.chain[0], email=email)
        except ValueError as exc:  # a name or address X.509 cannot hold; nothing was written yet
            raise BadArgs(f"no GID can be issued for {hrn[:80]!r}: {exc}") from None
        return (gid, *self.chain)

    def _refuse_unissuable(self, hrn: str) -> None:
        """AuthorityError for a name not under this authority, BadArgs for one too long to name its GID file."""
        parts = split_hrn(hrn)
        if parts[: len(split_hrn(self.hrn))] != split_hrn(self.hrn):
            raise AuthorityError(f"{hrn!r} is not under authority {self.hrn!r}")
        path = self.issued_gid_path(hrn)
        if len(os.path.basename(path).encode("utf-8")) > 255:  # the longest file name Linux file systems hold
            raise BadArgs(f"no GID can be issued for {hrn[:80]!r}...: the name is too long to name its GID file")

    @contextmanager
    def issued_lock(self) -> Iterator[None]:
        """Hold the lock of gids/ (flock on the directory itself: every process and thread of this host that takes it
        waits for the holder) while a GID file and the registry's record of it are changed together (a user's GID
        re-issued by Update), so that of two such changes at once the later one's file and record are both the last
        ones. One lock for the directory rather than one per HRN: re-keys are rare and short, and it needs no lock
        file (none to make on a full file system, no name longer than a GID file's, none left behind).

        It holds on this host only. Hosts sharing the database each have their own copy of the data directory
        (operators.md, "Several hosts"): the record in the database is the GID that counts on every host; another
        host's gids/ keeps what that host last wrote for the name (as it lacks the GIDs Register issued through
        other hosts). A start there never brings the earlier key back (import_authority does not read the file of a
        recorded HRN); ``authority renew`` and ``credential issue`` read the gids/ of the host they run on."""
        directory = os.path.join(self.directory, "gids")
        make_directories(directory, PUBLIC_DIRECTORY)
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # flock, not fcntl's record locks: those are the process's, and would not keep two threads apart.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # (which releases the lock)

    def replace_issued(self, hrn: str, chain: GidChain) -> bytes | None:
        """Record ``chain`` in gids/ as the GID issued for hrn now, in place of an earlier one (a user's GID
        re-issued for another key): whole or not at all (OSError, and the file as it was, when it cannot be
        written). gids/ is what a start imports and ``authority renew`` re-issues from, so it must hold the
        registered GID. The file's earlier content (None: there was none), for ``restore_issued``; call it holding
        ``issued_lock``."""
        path = self.issued_gid_path(hrn)
        make_directories(os.path.dirname(path), PUBLIC_DIRECTORY)
        try:
            with open(path, "rb") as earlier:
                previous: bytes | None = earlier.read()
        except FileNotFoundError:
            previous = None
        replace_file(path, chain_pem(chain).encode("ascii"), PUBLIC_FILE)
        return previous

    def restore_issued(self, hrn: str, previous: bytes | None) -> None:
        """Put back the GID file of hrn as ``replace_issued`` found it (``previous``, its answer): the change it
        belonged to failed."""
        if previous is None:
            self.forget(hrn)
        else:
            replace_file(self.issued_gid_path(hrn), previous, PUBLIC_FILE)

    def forget(self, hrn: str) -> None:
        """Drop the record of a GID this authority issued (the registry removed it), so no import brings it back.
        The certificate itself stays valid until it expires: GIDs are not revoked."""
        path = self.issued_gid_path(hrn)
        if os.path.exists(path):
            os.remove(path)

    def has_issued(self, hrn: str) -> bool:
        """Whether a GID this authority issued for ``hrn`` is on record (gids/), registered or not."""
        return os.path.exists(self.issued_gid_path(hrn))

    def issued_chain(self, hrn: str) -> GidChain:
        path = self.issued_gid_path(hrn)
        if not os.path.exists(path):
            raise AuthorityError(f"authority {self.hrn!r} has issued no GID for {hrn!r} (no {path})")
        return load_gid_chain_file(path)

    def credential(
        self,
        owner_chain: GidChain,
        target_chain: GidChain,
        lifetime: timedelta = DEFAULT_CREDENTIAL_LIFETIME,
        privileges: tuple[str, ...] | None = None,
        can_delegate: bool = True,
    ) -> str:
        """Issue a credential for owner over target, with the privileges its target's type calls for."""
        target_type = target_chain[0].type or "user"
        names = privileges or DEFAULT_PRIVILEGES.get(target_type, DEFAULT_PRIVILEGES["user"])
        request = CredentialRequest(
            owner_chain=owner_chain,
            target_chain=target_chain,
            expires=utcnow() + lifetime,
            privileges=tuple(Privilege(name=name, can_delegate=can_delegate) for name in names),
        )
        return issue_credential(request, self.key, self.chain)

    def child_hrn(self, name: str) -> str:
        return join_hrn([*split_hrn(self.hrn), name])
