"""The local authority: the testbed's own root of trust, stored in a directory.

Layout of an authority directory (``sfa-omf init DIR``)::

    DIR/sfa-omf.conf                     configuration in SFA's INI form (see config.py)
    DIR/authority/<hrn>.pkey, <hrn>.gid  the root authority's key and self-signed GID
    DIR/aggregate/am.pkey, am.gid        the aggregate manager's key and GID chain (URN ...+authority+am)
    DIR/trusted_roots/<hrn>.gid          roots we trust; trusting another authority = adding its root here
    DIR/gids/<hrn>.gid                   GID chains the authority issued (users, slices, nodes)
    DIR/users/<name>/sfi/                a ready sfi.py directory per demo user

Keys are written once with mode 0600 and never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.errors import BadArgs
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import CredentialRequest, Privilege, issue_credential
from sfa_omf.trust.gid import GidChain, chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file, new_private_key, private_key_pem
from sfa_omf.trust.rights import DEFAULT_PRIVILEGES
from sfa_omf.xrn import hrn_to_urn, join_hrn, split_hrn

DEFAULT_CREDENTIAL_LIFETIME = timedelta(days=30)


class AuthorityError(Exception):
    """The authority directory is missing, inconsistent, or would be overwritten."""


class IssuedAlready(AuthorityError):
    """A GID for the name was issued already (its file in gids/ would be overwritten)."""


def write_new_file(path: str, data: bytes, private: bool = False) -> None:
    """Write a file that must not exist yet (never overwrite keys or GIDs)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    descriptor = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


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
        """Create a new root authority in directory. Refuses when one exists already."""
        split_hrn(hrn)  # validates the name
        key_path = cls.key_path(directory, hrn)
        if os.path.exists(key_path):
            raise AuthorityError(f"{key_path} exists already: refusing to overwrite an authority key")
        key = new_private_key()
        gid = create_gid(hrn_to_urn(hrn, "authority"), key.public_key(), key)
        write_new_file(key_path, private_key_pem(key), private=True)
        write_new_file(cls.gid_path(directory, hrn), gid.pem().encode("ascii"))
        root_copy = os.path.join(directory, "trusted_roots", f"{hrn}.gid")
        write_new_file(root_copy, gid.pem().encode("ascii"))
        return cls(directory=directory, hrn=hrn, key=key, chain=(gid,))

    @classmethod
    def load(cls, directory: str, hrn: str) -> LocalAuthority:
        key_path = cls.key_path(directory, hrn)
        gid_path = cls.gid_path(directory, hrn)
        if not (os.path.exists(key_path) and os.path.exists(gid_path)):
            raise AuthorityError(f"no authority {hrn!r} in {directory} (expected {key_path} and {gid_path})")
        return cls(
            directory=directory,
            hrn=hrn,
            key=load_private_key_file(key_path),
            chain=load_gid_chain_file(gid_path),
        )

    # -- issuing ----------------------------------------------------------------------------------------------
    def issue_gid(
        self, hrn: str, type_: str, public_key: rsa.RSAPublicKey | None = None, email: str | None = None
    ) -> tuple[GidChain, rsa.RSAPrivateKey | None]:
        """Issue a GID (chain, leaf first) for hrn under this authority and record it in gids/.

        When no key is given a new one is made and returned (the caller decides where the private key lives).
        """
        parts = split_hrn(hrn)
        if parts[: len(split_hrn(self.hrn))] != split_hrn(self.hrn):
            raise AuthorityError(f"{hrn!r} is not under authority {self.hrn!r}")
        path = self.issued_gid_path(hrn)
        if len(os.path.basename(path).encode("utf-8")) > 255:  # the longest file name Linux file systems hold
            raise BadArgs(f"no GID can be issued for {hrn[:80]!r}...: the name is too long to name its GID file")
        new_key: rsa.RSAPrivateKey | None = None
        if public_key is None:
            new_key = new_private_key()
            public_key = new_key.public_key()
        try:
            gid = create_gid(hrn_to_urn(hrn, type_), public_key, self.key, issuer=self.chain[0], email=email)
        except ValueError as exc:  # a name or address X.509 cannot hold; nothing was written yet
            raise BadArgs(f"no GID can be issued for {hrn[:80]!r}: {exc}") from None
        chain = (gid, *self.chain)
        if os.path.exists(path):
            raise IssuedAlready(f"a GID for {hrn!r} exists already in {path}")
        write_new_file(path, chain_pem(chain).encode("ascii"))
        return chain, new_key

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
