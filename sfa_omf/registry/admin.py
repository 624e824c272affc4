"""What an operator does to the local registry (``sfa-omf user|slice ...``): users, their keys, slices, researchers.

Every change goes to the same records the Registry API serves, so a running server sees it on the next call.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from sfa_omf.arguments import email as email_address
from sfa_omf.calendar.models import RegistryRecord
from sfa_omf.config import Settings
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.files import PUBLIC_FILE, replace_file
from sfa_omf.registry.accounts import retired_logins, urns_of_login
from sfa_omf.registry.api import DEFAULT_SLICE_LIFETIME
from sfa_omf.registry.authority import AuthorityError, LocalAuthority, same_key, write_new_file
from sfa_omf.registry.bootstrap import aggregate_gid_path, renewed_aggregate_gid, sfi_config
from sfa_omf.registry.records import Record, Records, new_record_urn, record_chain, record_email
from sfa_omf.registry.sfi_dirs import delete_sfi_dir, delete_user_sfi_dirs, user_sfi_dir
from sfa_omf.sshkeys import ssh_public_key
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import DEFAULT_GID_LIFETIME, load_private_key_file, private_key_pem, renew_gid
from sfa_omf.trust.roots import trust_root
from sfa_omf.xrn import is_urn, parse_urn, split_hrn


@dataclass(frozen=True)
class NewUser:
    record: Record
    sfi_dir: str  # empty when the user keeps their own private key


@dataclass(frozen=True)
class Removed:
    record: Record
    deleted_dirs: list[str] = field(default_factory=list)  # the user's sfi.py directories, deleted with the record
    retired_login: str = ""  # the local login it had (or would have had): never given to anyone registered later
    login_used_by: tuple[str, ...] = ()  # the URNs that still use that login (one pinned for several): keep its account


@dataclass(frozen=True)
class RenewedUser:
    """What ``user renew`` did: the user's new GID and the files rewritten or removed."""

    record: Record
    gid: Gid
    rewritten: list[str] = field(default_factory=list)  # the GID files (gids/, the user's sfi.py directory)
    dropped: list[str] = field(default_factory=list)  # cached credentials naming the earlier GID, deleted


@dataclass(frozen=True)
class RenewedAuthority:
    """What ``authority renew`` did: the renewed root (and where it is), the aggregate's GID, and the issued GIDs
    re-issued (their HRNs) or only given the renewed root as their chain's root (``rechained``: they last longer)."""

    root: Gid
    root_path: str
    trusted_copy: str
    aggregate: Gid | None
    reissued: list[str] = field(default_factory=list)
    rechained: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


class RegistryAdmin:
    def __init__(self, authority: LocalAuthority, records: Records, settings: Settings) -> None:
        self.authority = authority
        self.records = records
        self.settings = settings
        if records.get(authority.hrn) is None:
            records.import_authority(authority)  # the registry was never served: record what the authority issued

    def hrn(self, name: str) -> str:
        """A name under the authority (``alice`` -> ``testbed.alice``); a full HRN or URN is taken as it is."""
        if is_urn(name):
            return parse_urn(name).hrn
        under = name == self.authority.hrn or name.startswith(self.authority.hrn + ".")
        hrn = name if under else self.authority.child_hrn(name)
        split_hrn(hrn)
        return hrn

    # -- users --------------------------------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        email: str = "",
        ssh_keys: Sequence[str] = (),
        public_key: rsa.RSAPublicKey | None = None,
        pi: bool = False,
    ) -> NewUser:
        """Register a user: the authority issues their GID. Without ``public_key`` a key pair is made and an sfi.py
        directory written for them (private key, GID, sfi_config; ``sfi_dir``): they bootstrap with GetSelfCredential.
        All or nothing: on any failure the GID, the directory and the record go again."""
        hrn = self.hrn(name)
        urn = new_record_urn(hrn, "user")
        email = record_email(email_address(email, "--email"))
        if self.records.get(hrn) is not None:
            raise GeniError(Reason.ALREADY_EXISTS, f"{hrn} is registered already (sfa-omf user show {hrn})")
        self.records.refuse_same_but_for_case(hrn)  # tb.Bob beside tb.bob: one login for both
        self.records.refuse_if_removed_lately(hrn, urn)  # BUSY before the GID and the sfi.py directory are made
        keys = tuple(ssh_public_key(key) for key in ssh_keys)
        sfi_dir = self.sfi_dir(hrn) if public_key is None else ""
        if sfi_dir and os.path.exists(sfi_dir):
            raise GeniError(
                Reason.ALREADY_EXISTS,
                f"{sfi_dir} exists already (left by an earlier user of that name?): move it aside, then add {hrn}",
            )
        chain, private_key = self.authority.issue_gid(hrn, "user", public_key=public_key, email=email or None)
        recorded = False
        try:
            if private_key is not None:
                write_new_file(os.path.join(sfi_dir, f"{hrn}.pkey"), private_key_pem(private_key), private=True)
                write_new_file(os.path.join(sfi_dir, f"{hrn}.user.gid"), chain_pem(chain).encode("ascii"))
                config = sfi_config(self.authority.hrn, hrn, self.settings)
                write_new_file(os.path.join(sfi_dir, "sfi_config"), config.encode("utf-8"))
            record = Record(hrn, "user", urn, chain_pem(chain), email, keys, key_held=True)  # (theirs, or written)
            self.records.add(record)
            recorded = True
            if pi:
                self.records.add(Record(self.authority.hrn, "authority", self.authority.urn, "", pis=(hrn,)))
        except BaseException:
            # Left behind, any of these would block the name for good (the GID file, the directory) or half-register it.
            if recorded:
                self.records.remove(hrn, retire=False)  # nobody held the name: no login to retire
            if sfi_dir:
                delete_sfi_dir(sfi_dir)
            self.authority.forget(hrn)
            raise
        return NewUser(self.records.get(hrn) or record, sfi_dir)

    def sfi_dir(self, hrn: str) -> str:
        """Where the sfi.py directory of a user the registry makes a key pair for lives (registry/sfi_dirs.py)."""
        return user_sfi_dir(self.authority.directory, self.authority.hrn, hrn)

    def add_key(self, name: str, ssh_key: str) -> Record:
        """Add an SSH public key to a user's record (it reaches their accounts at the next provision/update)."""
        user = self._get(name, "user")
        return self._updated(
            self.records.update(user.hrn, keys=list(dict.fromkeys([*user.keys, ssh_public_key(ssh_key)])))
        )

    def remove(self, name: str, kind: str) -> Removed:
        """Remove a user or slice record; its GID is forgotten (not revoked: it stays valid until it expires). A user
        leaves every slice and authority they were a researcher or PI of, and the sfi.py directory the registry wrote
        for them (with their private key) is deleted, so the name can be given to someone new with nothing inherited:
        nor its local login, which is retired (never derived again; registry/accounts.py), nor that login's account."""
        if kind not in ("user", "slice"):
            raise BadArgs(f"only users and slices are removed this way, not {kind} records")
        record = self._get(name, kind)
        self.records.remove(record.hrn)
        self.authority.forget(record.hrn)
        deleted = []
        if record.type == "user":
            deleted = delete_user_sfi_dirs(self.authority.directory, self.authority.hrn, record.hrn)
        retired = retired_logins(self.records.database, record.urn)
        login = retired[-1] if retired else ""
        used_by = tuple(urns_of_login(self.records.database, login)) if login else ()
        return Removed(record, deleted, login, used_by)

    def renew_user(self, name: str, lifetime: timedelta = DEFAULT_GID_LIFETIME) -> RenewedUser:
        """Re-issue a user's GID with the same public key (renew_gid) for ``lifetime`` from now, at most until the
        authority's root expires: the record (keys, e-mail, slices, PI roles) stays as it is, its GID is replaced,
        and so are the GID files the registry keeps (gids/) and wrote into the user's sfi.py directory; the
        credentials cached there, which name the earlier GID, are deleted (sfi.py fetches new ones). Refused (the
        authority's root expired): renew the authority first."""
        # Under the lock a re-keying Update holds (RegistryApi): read, renewed and written before another key can
        # come between, which the renewal of the earlier key would otherwise put back.
        with self.authority.issued_lock():
            record = self._get(name, "user")
            self._refuse_expired_root()
            leaf = record_chain(record)[0]
            lifetime = min(lifetime, self.authority.chain[0].not_after - utcnow())
            gid = renew_gid(leaf, self.authority.key, self.authority.chain[0], lifetime)
            chain = (gid, *self.authority.chain)
            self._store_gids({record.hrn: chain})
            rewritten, dropped = self._write_user_files(record.hrn, chain)
        return RenewedUser(self._updated(self.records.get(record.hrn)), gid, [*rewritten], [*dropped])

    def renew_authority(self, lifetime: timedelta = DEFAULT_GID_LIFETIME) -> RenewedAuthority:
        """Renew the authority's root GID: the same key, subject and URN, valid from now for ``lifetime`` (which
        must end later than the current root). What it signed keeps verifying against the renewed root (a verifier
        finds an issuer by subject and key). Then, under the renewed root: the aggregate's GID (am.gid, the same key)
        and every GID the authority issued (gids/: users, slices, nodes) that would expire before the renewed root
        are re-issued with the same key to end with it; the others get the renewed root as their chain's root. The
        registry's records, the trusted-roots copy and the users' sfi.py GID files follow. Every certificate is made
        before anything is written."""
        authority = self.authority
        old_root = authority.chain[0]
        start = utcnow() - timedelta(minutes=5)  # as create_gid: a peer whose clock is behind accepts them
        root = renew_gid(old_root, authority.key, None, lifetime, start)
        if root.not_after <= old_root.not_after:
            raise BadArgs(
                f"the authority's root is valid until {format_time(old_root.not_after)} already; a renewal for "
                f"{lifetime.days} days would end at {format_time(root.not_after)}: give more days (--days)"
            )
        renewed = LocalAuthority(authority.directory, authority.hrn, authority.key, (root,))
        aggregate = renewed_aggregate_gid(renewed, root.not_after - start, start)  # it ends with the root
        issued: dict[str, GidChain] = {}
        reissued, rechained = [], []
        for path in sorted(glob.glob(os.path.join(glob.escape(authority.directory), "gids", "*.gid"))):
            leaf = load_gid_chain_file(path)[0]
            if leaf.certificate.issuer != old_root.certificate.subject or leaf.urn is None:
                continue  # not issued by this authority (put there by hand): left alone
            hrn = os.path.basename(path)[: -len(".gid")]
            if leaf.not_after < root.not_after:
                leaf = renew_gid(leaf, authority.key, root, root.not_after - start, start)
                reissued.append(hrn)
            else:
                rechained.append(hrn)
            issued[hrn] = (leaf, root)
        # The registry first (one transaction): if it fails, no file changed.
        self._store_gids({authority.hrn: (root,), **issued})
        root_path = LocalAuthority.gid_path(authority.directory, authority.hrn)
        replace_file(root_path, root.pem().encode("ascii"), PUBLIC_FILE)
        added = trust_root(authority.trusted_roots_dir, root.pem().encode("ascii"), utcnow())
        authority.chain = (root,)
        if aggregate is not None:
            replace_file(aggregate_gid_path(authority.directory), chain_pem(aggregate).encode("ascii"), PUBLIC_FILE)
        dropped: list[str] = []
        for hrn, chain in issued.items():
            replace_file(authority.issued_gid_path(hrn), chain_pem(chain).encode("ascii"), PUBLIC_FILE)
            if chain[0].type == "user":
                dropped += self._write_user_files(hrn, chain)[1]
        return RenewedAuthority(
            root, root_path, added.path, aggregate[0] if aggregate else None, reissued, rechained, dropped
        )

    # -- slices -------------------------------------------------------------------------------------------------
    def create_slice(self, name: str, researchers: Sequence[str], expires: datetime | None = None) -> Record:
        hrn = self.hrn(name)
        urn = new_record_urn(hrn, "slice")
        if self.records.get(hrn) is not None:
            raise GeniError(Reason.ALREADY_EXISTS, f"{hrn} is registered already")
        self.records.refuse_same_but_for_case(hrn)  # tb.Demo beside tb.demo: one login for both (per-slice)
        self.records.refuse_if_removed_lately(hrn, urn)  # BUSY before the GID is issued
        members = tuple(dict.fromkeys(self._get(member, "user").hrn for member in researchers))
        expires = expires or utcnow() + DEFAULT_SLICE_LIFETIME
        self._check_future(expires)
        chain, _ = self.authority.issue_gid(hrn, "slice")
        record = Record(hrn, "slice", urn, chain_pem(chain), researchers=members, expires=expires)
        try:
            self.records.add(record)
        except BaseException:
            self.authority.forget(hrn)  # else the GID file would block the name for good
            raise
        return record

    def renew_slice(self, name: str, expires: datetime) -> Record:
        """A new expiry for the slice; slice credentials issued from now on live until then."""
        self._check_future(expires)
        return self._updated(self.records.update(self._get(name, "slice").hrn, expires=expires))

    def add_researcher(self, name: str, user: str) -> Record:
        slice_record = self._get(name, "slice")
        member = self._get(user, "user").hrn
        return self._updated(
            self.records.update(slice_record.hrn, researchers=list(dict.fromkeys([*slice_record.researchers, member])))
        )

    def list(self, kind: str) -> list[Record]:
        return self.records.of_type(kind)

    def get(self, name: str) -> Record:
        return self._get(name, None)

    # -- helpers ------------------------------------------------------------------------------------------------
    def _get(self, name: str, kind: str | None) -> Record:
        hrn = self.hrn(name)
        record = self.records.get(hrn)
        if record is None or (kind is not None and record.type != kind):
            raise GeniError(Reason.NOT_FOUND, f"no {kind or 'record'} {hrn} in the registry of {self.authority.hrn}")
        return record

    def _refuse_expired_root(self) -> None:
        root = self.authority.chain[0]
        if root.not_after <= utcnow():
            raise AuthorityError(
                f"the authority's root GID expired at {format_time(root.not_after)}: renew it first (sfa-omf "
                "authority renew), which re-issues the users' GIDs too"
            )

    def _store_gids(self, chains: dict[str, GidChain]) -> None:
        """Replace the GIDs of these records (HRN: new chain), in one transaction; a record whose GID certifies
        another key than the new chain's (its name given to someone else since) is left alone."""
        with self.records.database.write() as session:
            rows = session.scalars(select(RegistryRecord).where(RegistryRecord.hrn.in_(list(chains))))
            now_s = int(utcnow().timestamp())
            for row in rows:
                chain = chains[row.hrn]
                if record_chain(Record(row.hrn, row.type, row.urn, row.gid))[0].key_id != chain[0].key_id:
                    continue
                row.gid = chain_pem(chain)
                row.updated_s = now_s

    def _write_user_files(self, hrn: str, chain: GidChain) -> tuple[Sequence[str], Sequence[str]]:
        """Write a user's renewed GID chain to gids/ and to the sfi.py directories the registry wrote for them (where
        they hold that key), and delete the credentials cached there (they name the earlier GID, and sfi.py would use
        them until they expire); (files rewritten, files deleted)."""
        rewritten, dropped = [], []
        issued = self.authority.issued_gid_path(hrn)
        if os.path.exists(issued):
            replace_file(issued, chain_pem(chain).encode("ascii"), PUBLIC_FILE)
            rewritten.append(issued)
        legacy = os.path.join(self.authority.directory, "users", split_hrn(hrn)[-1], "sfi")
        for directory in dict.fromkeys([self.sfi_dir(hrn), legacy]):
            key_path = os.path.join(directory, f"{hrn}.pkey")
            gid_path = os.path.join(directory, f"{hrn}.user.gid")
            if not os.path.exists(key_path) or not same_key(chain[0], load_private_key_file(key_path)):
                continue  # another user's directory, or one whose key changed: not theirs to rewrite
            replace_file(gid_path, chain_pem(chain).encode("ascii"), PUBLIC_FILE)
            rewritten.append(gid_path)
            for cached in sorted(glob.glob(os.path.join(glob.escape(directory), "*.cred"))):
                os.remove(cached)
                dropped.append(cached)
        return rewritten, dropped

    @staticmethod
    def _updated(record: Record | None) -> Record:
        if record is None:
            raise GeniError(Reason.NOT_FOUND, "the record was removed meanwhile")
        return record

    @staticmethod
    def _check_future(expires: datetime) -> None:
        if expires <= utcnow():
            raise BadArgs(f"the expiry {format_time(expires)} is in the past: give a later time (e.g. +30d)")
