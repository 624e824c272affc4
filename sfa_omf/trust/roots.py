"""Trusted roots, and verifying a GID chain up to one of them.

Trusting another authority is dropping its root certificate (PEM or GID) into the trusted-roots directory; a
running server notices (``TrustedRootsWatcher``).
The rules (SFA's and GENI's): every certificate is inside its validity period at the time of verification; each
link is signed by its parent; every parent is a CA whose URN type is ``authority`` and whose name is a naming
authority (part-wise prefix) over the child's; the chain ends at a trusted root that is itself an authority over the
leaf's name. A chain may stop short of the root (the root is then the issuer of its last certificate) or include it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sfa_omf.errors import Reason, TrustError
from sfa_omf.times import format_time
from sfa_omf.trust.gid import Gid, GidChain, load_gid_chain
from sfa_omf.xrn import is_authority_for

ROOT_SUFFIXES = (".gid", ".cert", ".pem", ".crt")


@dataclass(frozen=True)
class TrustedRoots:
    """The set of certificates we trust as anchors. ``fingerprint`` changes whenever the set changes."""

    anchors: tuple[Gid, ...]
    source: str = ""

    @functools.cached_property
    def fingerprint(self) -> str:  # cached: part of every verdict-cache key
        digest = hashlib.sha256()
        for fingerprint in sorted(anchor.fingerprint for anchor in self.anchors):
            digest.update(fingerprint.encode("ascii"))
        return digest.hexdigest()

    def names(self) -> str:
        return ", ".join(sorted(anchor.hrn for anchor in self.anchors)) or "none"

    def contains(self, gid: Gid) -> bool:
        return any(anchor.fingerprint == gid.fingerprint for anchor in self.anchors)

    def issuers_of(self, gid: Gid) -> list[Gid]:
        """The anchors that really signed gid (same subject as its issuer and a signature that verifies)."""
        found = []
        for anchor in self.anchors:
            if anchor.certificate.subject != gid.certificate.issuer:
                continue
            if _signed_by(gid, anchor):
                found.append(anchor)
        return found

    def impostors_of(self, gid: Gid) -> list[Gid]:
        """Anchors whose subject equals gid's issuer but whose key did not sign gid (a look-alike authority)."""
        return [
            anchor
            for anchor in self.anchors
            if anchor.certificate.subject == gid.certificate.issuer and not _signed_by(gid, anchor)
        ]


def load_trusted_roots(directory: str) -> TrustedRoots:
    """Load every *.gid/*.cert/*.pem/*.crt in directory; the first certificate of each file is the anchor."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"trusted roots directory {directory!r} does not exist")
    anchors: list[Gid] = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(ROOT_SUFFIXES):
            continue
        with open(os.path.join(directory, name), "rb") as handle:
            chain = load_gid_chain(handle.read())
        anchors.append(chain[0])
    return TrustedRoots(anchors=tuple(anchors), source=directory)


def directory_signature(directory: str) -> tuple[tuple[str, int, int, int], ...] | None:
    """What changes when a root file is added, removed or rewritten: (name, inode, size, mtime) of each root file;
    None when the directory does not exist."""
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(ROOT_SUFFIXES))
    except FileNotFoundError:
        return None
    signature = []
    for name in names:
        try:
            status = os.stat(os.path.join(directory, name))
        except FileNotFoundError:  # removed while we looked
            continue
        signature.append((name, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(signature)


@dataclass(frozen=True)
class RootsChange:
    """The trusted roots after a change of their directory, and the authorities added and removed."""

    roots: TrustedRoots
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def describe(self) -> str:
        parts = [f"{len(self.roots.anchors)} root(s) ({self.roots.names()})"]
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        return "; ".join(parts)


class TrustedRootsWatcher:
    """Notices when the trusted-roots directory changes, so that a running server trusts what the directory holds
    without a restart (``sfa-omf trust add-root``, or a file dropped in or removed by hand)."""

    def __init__(self, directory: str, roots: TrustedRoots) -> None:
        self.directory = directory
        self.roots = roots
        self._signature = directory_signature(directory)

    def check(self) -> RootsChange | None:
        """The new roots when the directory changed since the last check, else None. Raises what
        load_trusted_roots raises when the directory cannot be read; the roots in use stay as they were then, and
        the same state of the directory is not tried again (one warning per change, not one per check)."""
        signature = directory_signature(self.directory)
        if signature == self._signature:
            return None
        self._signature = signature
        roots = load_trusted_roots(self.directory)
        if roots.fingerprint == self.roots.fingerprint:
            return None  # touched or renamed, same certificates
        before = {anchor.fingerprint: _describe(anchor) for anchor in self.roots.anchors}
        after = {anchor.fingerprint: _describe(anchor) for anchor in roots.anchors}
        self.roots = roots
        return RootsChange(
            roots=roots,
            added=tuple(sorted(after[key] for key in after.keys() - before.keys())),
            removed=tuple(sorted(before[key] for key in before.keys() - after.keys())),
        )


#: Links (child, parent) whose signature verified, by the two certificates' SHA-256 fingerprints (their exact DER
#: bytes): a signature that verified once verifies forever, so each distinct link is checked once per process.
#: Only the signature is remembered; validity, CA and naming rules are checked on every chain. Refusals are not kept.
_VERIFIED_LINKS: OrderedDict[tuple[str, str], None] = OrderedDict()
_VERIFIED_LINKS_LOCK = threading.Lock()
VERIFIED_LINKS_SIZE = 4096


def forget_verified_links() -> None:
    """Empty the cache of verified links (see verifier.forget_certificates)."""
    with _VERIFIED_LINKS_LOCK:
        _VERIFIED_LINKS.clear()


def _signed_by(child: Gid, parent: Gid) -> bool:
    link = (child.fingerprint, parent.fingerprint)
    with _VERIFIED_LINKS_LOCK:
        if link in _VERIFIED_LINKS:
            _VERIFIED_LINKS.move_to_end(link)
            return True
    try:
        child.certificate.verify_directly_issued_by(parent.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    with _VERIFIED_LINKS_LOCK:
        _VERIFIED_LINKS[link] = None
        while len(_VERIFIED_LINKS) > VERIFIED_LINKS_SIZE:
            _VERIFIED_LINKS.popitem(last=False)
    return True


def _describe(gid: Gid) -> str:
    return gid.urn or repr(gid.subject_cn)


def check_validity(gid: Gid, at: datetime, role: str) -> None:
    """Raise CERTIFICATE_EXPIRED when gid is not valid at the time of verification."""
    if at < gid.not_before:
        raise TrustError(
            Reason.CERTIFICATE_EXPIRED,
            f"{role} certificate {_describe(gid)} is not valid before {format_time(gid.not_before)} "
            f"(checked at {format_time(at)})",
        )
    if at > gid.not_after:
        raise TrustError(
            Reason.CERTIFICATE_EXPIRED,
            f"{role} certificate {_describe(gid)} expired at {format_time(gid.not_after)} "
            f"(checked at {format_time(at)}); ask its authority for a new one",
        )


def _check_link(child: Gid, parent: Gid, role: str) -> None:
    if not _signed_by(child, parent):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} chain is broken: {_describe(child)} is not signed by {_describe(parent)}",
        )
    if not parent.is_ca or not parent.is_authority:
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} chain is invalid: {_describe(parent)} signs {_describe(child)} but is not an authority "
            "(it needs basicConstraints CA:TRUE and an authority URN)",
        )
    if not is_authority_for(parent.hrn, child.hrn):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} chain is invalid: authority {parent.hrn!r} may not name {child.hrn!r} "
            "(an authority only names what lies under it)",
        )


def verify_chain(chain: GidChain, roots: TrustedRoots, at: datetime, role: str = "certificate") -> Gid:
    """Verify chain (leaf first) against roots at time ``at``; return the trusted anchor it ends at.

    ``role`` names the chain in messages ("caller", "owner", "signer"...). Raises TrustError.
    """
    if not chain:
        raise TrustError(Reason.MALFORMED, f"{role} chain holds no certificate")
    leaf = chain[0]
    for gid in chain:
        check_validity(gid, at, role)
    anchor: Gid | None = None
    for position, gid in enumerate(chain):
        if roots.contains(gid):
            anchor = gid
            break
        issuers = roots.issuers_of(gid)
        if issuers:
            anchor = issuers[0]
            check_validity(anchor, at, "trusted root")
            _check_link(gid, anchor, role)
            break
        if position + 1 < len(chain):
            _check_link(gid, chain[position + 1], role)
            continue
        impostors = roots.impostors_of(gid)
        if impostors:
            raise TrustError(
                Reason.UNTRUSTED_CHAIN,
                f"{role} chain of {_describe(leaf)} ends at {gid.certificate.issuer.rfc4514_string()!r}, "
                "whose name matches a trusted root but whose key does not: not one of our trusted roots",
            )
        raise TrustError(
            Reason.UNTRUSTED_CHAIN,
            f"{role} chain of {_describe(leaf)} ends at {_describe(gid)} "
            f"(issued by {gid.certificate.issuer.rfc4514_string()!r}), which is not one of our "
            f"{len(roots.anchors)} trusted roots ({roots.names()}); an operator trusts an authority by adding "
            "its root certificate to trusted_roots/",
        )
    assert anchor is not None
    if not is_authority_for(anchor.hrn, leaf.hrn):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} {_describe(leaf)} chains to trusted root {anchor.hrn!r}, which is no authority over {leaf.hrn!r}",
        )
    return anchor


def add_trusted_root(directory: str, pem: bytes, now: datetime) -> tuple[Gid, bool]:
    """Trust another authority: write its root (the first certificate of ``pem``) into ``directory`` as
    ``<hrn>.gid``. Returns the anchor and False when it was trusted already. Refuses what cannot be an anchor (not
    a CA authority, expired) and a different key for an authority already trusted (a look-alike)."""
    anchor = load_gid_chain(pem)[0]
    if not anchor.is_ca or not (anchor.type or "").startswith("authority"):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{_describe(anchor)} is not an authority's CA certificate; trust the authority's root GID instead",
        )
    check_validity(anchor, now, "the new root")
    current = load_trusted_roots(directory) if os.path.isdir(directory) else TrustedRoots(())
    if current.contains(anchor):
        return anchor, False
    for existing in current.anchors:
        if existing.certificate.subject == anchor.certificate.subject or (anchor.urn and existing.urn == anchor.urn):
            raise TrustError(
                Reason.UNTRUSTED_CHAIN,
                f"{_describe(anchor)} is trusted already with another key "
                f"(fingerprint {existing.fingerprint[:16]}...); "
                "a look-alike is refused: remove the old root file first if the authority really changed its key",
            )
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{anchor.hrn or anchor.fingerprint[:16]}.gid")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(anchor.certificate.public_bytes(serialization.Encoding.PEM))
    return anchor, True
