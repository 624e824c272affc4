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
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from sfa_omf.errors import BadArgs, Reason, TrustError
from sfa_omf.files import PUBLIC_DIRECTORY, PUBLIC_FILE, create_file, make_directories, replace_file
from sfa_omf.times import format_time
from sfa_omf.trust.gid import Gid, GidChain, keep_verified, load_gid_chain
from sfa_omf.xrn import is_authority_for, is_authority_over_urn, shown_urn

log = logging.getLogger("sfa_omf.trust")

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
    return TrustedRoots(anchors=tuple(anchor for _, anchor in _root_files(directory)), source=directory)


def _root_files(directory: str) -> list[tuple[str, Gid]]:
    """(path, anchor) of every root file in directory, by name."""
    found: list[tuple[str, Gid]] = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(ROOT_SUFFIXES):
            continue
        path = os.path.join(directory, name)
        with open(path, "rb") as handle:
            try:
                chain = load_gid_chain(handle.read())
            except BadArgs as exc:  # named: the reader's words alone do not say which file of the directory it is
                raise BadArgs(
                    f"trusted root file {path}: {exc.message}; put the authority's root certificate (PEM) there, or "
                    "move the file out of the directory"
                ) from exc
        problem = chain[0].name_problem
        if problem is not None:
            # Not trusted, and said (logged at every reading): its name would reach every message of what it vouches
            # for. The others are: a site whose peer root was dropped in by hand before this rule still starts.
            log.warning(
                "trusted root %s is not trusted: the name its certificate gives is refused (%s); move it out of "
                "trusted_roots/ (or ask its authority for one without it)",
                path,
                problem,
            )
            continue
        found.append((path, chain[0]))
    return found


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
        # Not looked at yet: ``roots`` were loaded some time before (a server waits for the start-up lock between),
        # and a change made meanwhile would be in a signature taken now, never noticed. The first check loads the
        # directory and compares its certificates with ``roots``.
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._looked = False

    def check(self) -> RootsChange | None:
        """The new roots when the directory changed since the last check (at the first check: when what it holds
        differs from the roots given), else None. Raises what load_trusted_roots raises when the directory cannot be
        read; the roots in use stay as they were then, and the same state of the directory is not tried again (one
        warning per change, not one per check)."""
        signature = directory_signature(self.directory)
        if self._looked and signature == self._signature:
            return None
        self._looked = True
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


def is_valid_at(gid: Gid, at: datetime) -> bool:
    """Whether gid is inside its validity period at ``at`` (both ends included)."""
    return gid.not_before <= at <= gid.not_after


def check_validity(gid: Gid, at: datetime, role: str) -> None:
    """Raise CERTIFICATE_EXPIRED when gid is not valid at the time of verification."""
    if at < gid.not_before:
        raise TrustError(
            Reason.CERTIFICATE_EXPIRED,
            f"{_certificate(role)} {_describe(gid)} is not valid before {format_time(gid.not_before)} "
            f"(checked at {format_time(at)})",
        )
    if at > gid.not_after:
        raise TrustError(
            Reason.CERTIFICATE_EXPIRED,
            f"{_certificate(role)} {_describe(gid)} expired at {format_time(gid.not_after)} "
            f"(checked at {format_time(at)}); ask its authority for a new one",
        )


def _certificate(role: str) -> str:
    """The role's certificate, as messages say it: "caller certificate"; the default role once, not twice."""
    return role if role.endswith("certificate") else f"{role} certificate"


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
    if not may_name(parent, child):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} chain is invalid: authority {parent.hrn!r} may not name {child.urn or child.hrn!r} "
            "(an authority only names what lies under it: a user or slice by its URN's authority)",
        )


def may_name(authority: Gid, named: Gid) -> bool:
    """SFA's naming rule between certificates: ``authority`` is over the name ``named`` carries. With a URN, by
    xrn.is_authority_over_urn (a user's or slice's by the URN's authority field: sub-authority ``fed:sub`` may not
    name ``urn:publicid:IDN+fed+user+sub``, though its HRN is ``fed.sub``); without one (SFA's old form), by the HRN
    its CN gives."""
    if named.parsed_urn is not None:
        return is_authority_over_urn(authority.hrn, named.parsed_urn)
    return is_authority_for(authority.hrn, named.hrn)


@dataclass(frozen=True)
class VerifiedChain:
    """A chain found trusted: the anchor it ends at, and the certificates the verdict rests on."""

    anchor: Gid
    #: The chain's certificates up to the one the anchor signed (or the anchor itself, when the chain holds it), and
    #: the anchor. Certificates after them are not used: SFA/gcf chains end with a copy of their authority's root,
    #: which after a renewal is the old root, expired while the renewed one signs the same leaves.
    checked: tuple[Gid, ...]

    @property
    def valid_from(self) -> datetime:
        """The latest notBefore of the certificates checked."""
        return max(gid.not_before for gid in self.checked)

    @property
    def valid_until(self) -> datetime:
        """The earliest notAfter of the certificates checked (included, as check_validity has it)."""
        return min(gid.not_after for gid in self.checked)


def verify_chain(chain: GidChain, roots: TrustedRoots, at: datetime, role: str = "certificate") -> Gid:
    """Verify chain (leaf first) against roots at time ``at``; return the trusted anchor it ends at.

    ``role`` names the chain in messages ("caller", "owner", "signer"...). Raises TrustError.
    """
    return check_chain(chain, roots, at, role).anchor


def check_chain(chain: GidChain, roots: TrustedRoots, at: datetime, role: str = "certificate") -> VerifiedChain:
    """verify_chain, telling also which certificates the verdict rests on (see VerifiedChain.checked): a verdict
    kept for later holds only while each of them is valid."""
    if not chain:
        raise TrustError(Reason.MALFORMED, f"{role} chain holds no certificate")
    try:
        return _check_chain(chain, roots, at, role)
    except BadArgs as exc:  # the naming rules read each certificate's HRN (from its URN, else its CN)
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} chain is invalid: a certificate in it names nothing we can read ({exc.message})",
        ) from exc


def _check_chain(chain: GidChain, roots: TrustedRoots, at: datetime, role: str) -> VerifiedChain:
    # As SFA does: walk up from the leaf and stop at the first certificate that is a trusted root or that a trusted
    # root signed; what the chain carries after it is not used, so neither its validity nor its links are checked.
    leaf = chain[0]
    anchor: Gid | None = None
    for position, gid in enumerate(chain):
        # First: no refusal below may show a URN that holds a line break or a bidi override (logs, the caller).
        gid.check_urn_characters()
        check_validity(gid, at, role)
        if roots.contains(gid):
            anchor = gid
            break
        issuers = roots.issuers_of(gid)
        if issuers:
            anchor = issuers[0]
            if len(issuers) > 1:  # an authority's old and renewed roots both trusted (the same key): one valid now
                anchor = next((issuer for issuer in issuers if is_valid_at(issuer, at)), anchor)
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
    if not may_name(anchor, leaf):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{role} {_describe(leaf)} chains to trusted root {anchor.hrn!r}, which is no authority over {leaf.hrn!r}",
        )
    used = chain[: position + 1]
    checked = (*used, anchor)
    # Only now are these certificates worth keeping parsed, what a caller nobody trusts sent is not (gid.py): those
    # checked, and the root a chain usually ends with (a copy of the anchor, or its earlier self: the same name,
    # signed by the anchor's key), which only the root's authority can make.
    if position + 1 < len(chain) and _is_anchor_or_its_earlier_self(chain[position + 1], anchor):
        used = chain[: position + 2]
    keep_verified((*used, anchor), whole_chain=chain if len(used) == len(chain) else None)
    return VerifiedChain(anchor=anchor, checked=checked)


def _is_anchor_or_its_earlier_self(gid: Gid, anchor: Gid) -> bool:
    if gid.fingerprint == anchor.fingerprint:
        return True
    return gid.certificate.subject == anchor.certificate.subject and _signed_by(gid, anchor)


#: The longest file name most file systems allow, in bytes.
_MAX_FILE_NAME_BYTES = 255


def root_file_path(directory: str, anchor: Gid) -> str:
    """Where ``add_trusted_root`` writes a new root: ``<directory>/<hrn>.gid``. The HRN comes from the certificate,
    so a name that is not a plain file name (a path separator, ``..``, control characters) is refused rather than
    written somewhere else."""
    name = anchor.hrn
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if (
        not name
        or any(separator in name for separator in separators)
        or ".." in name
        or any(ord(character) < 32 or ord(character) == 127 for character in name)
        or len(f"{name}.gid".encode()) > _MAX_FILE_NAME_BYTES
    ):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{_describe(anchor)} names the authority {name!r}, which cannot be a file name in the trusted-roots "
            f"directory (a path separator, '..', a control character, or over {_MAX_FILE_NAME_BYTES} bytes): "
            "refused; ask the peer for a root GID of a plain name",
        )
    path = os.path.join(directory, f"{name}.gid")
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(directory):
        raise TrustError(Reason.INVALID_CHAIN, f"{path} would not lie in the trusted-roots directory {directory}")
    return path


@dataclass(frozen=True)
class RootAdded:
    """What ``trust_root`` did: ``outcome`` is "added" (a new file), "renewed" (the file of the authority's
    earlier root replaced), or "trusted already" (nothing written; ``anchor`` is the root kept)."""

    anchor: Gid
    path: str
    outcome: str


def add_trusted_root(directory: str, pem: bytes, now: datetime) -> tuple[Gid, bool]:
    """Trust another authority (see trust_root). Returns the anchor and whether a file was written (False when it
    was trusted already)."""
    added = trust_root(directory, pem, now)
    return added.anchor, added.outcome != "trusted already"


def trust_root(directory: str, pem: bytes, now: datetime) -> RootAdded:
    """Trust another authority: write its root (the first certificate of ``pem``) into ``directory`` as
    ``<hrn>.gid`` (see root_file_path).

    An authority's renewed root replaces the file of the root it renews: the same subject, URN and key, self-signed,
    expiring later (an older one offered again changes nothing). Refused: what cannot be an anchor (not a CA
    authority, expired), and a look-alike of an authority already trusted: the same subject or URN with another
    key, or with the same key but another subject or URN (a changed naming scope) or not signed by that key.
    """
    anchor = load_gid_chain(pem)[0]
    anchor.check_urn_characters("ask its authority for one without it")  # before any message shows its URN
    if not anchor.is_ca or not (anchor.type or "").startswith("authority"):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{_describe(anchor)} is not an authority's CA certificate; trust the authority's root GID instead",
        )
    check_validity(anchor, now, "the new root")
    current = _root_files(directory) if os.path.isdir(directory) else []
    for path, existing in current:
        if existing.fingerprint == anchor.fingerprint:
            return RootAdded(anchor, path, "trusted already")
    same_authority = [
        (path, existing)
        for path, existing in current
        if existing.certificate.subject == anchor.certificate.subject or (anchor.urn and existing.urn == anchor.urn)
    ]
    for path, existing in same_authority:
        _check_renewal(anchor, existing, path)
    if not same_authority:
        _check_self_signed(anchor)
    body = anchor.certificate.public_bytes(serialization.Encoding.PEM)
    if same_authority:  # a renewal, or an older copy of what we trust
        path, existing = same_authority[0]
        if anchor.not_after <= existing.not_after:
            return RootAdded(existing, path, "trusted already")
        # At once (a temporary file renamed over it, named with no root suffix): a server reading the directory
        # meanwhile sees the old root or the new one, never half a file.
        replace_file(path, body, PUBLIC_FILE)
        return RootAdded(anchor, path, "renewed")
    path = root_file_path(directory, anchor)
    # Not through the umask: a directory others may write to lets them add a root the server trusts at once.
    make_directories(directory, PUBLIC_DIRECTORY)
    create_file(path, body, PUBLIC_FILE)  # whole: the server's watcher never reads half a root
    return RootAdded(anchor, path, "added")


def _check_self_signed(anchor: Gid) -> None:
    """Refuse a new root that is not self-signed (signed by its own key): a certificate an authority issued, such as
    its aggregate's GID (the authority's name, CA, but signed by the authority's root), would be trusted in place of
    the root, and the real root then refused as a look-alike."""
    if _signed_by(anchor, anchor):
        return
    issuer = anchor.certificate.issuer
    names = issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer_hrn = str(names[0].value) if names else ""
    where = f" (its authority/{shown_urn(issuer_hrn)}.gid)" if issuer_hrn else ""
    raise TrustError(
        Reason.INVALID_CHAIN,
        f"{_describe(anchor)} is no root: this certificate is issued by {shown_urn(issuer.rfc4514_string())}, not "
        f"self-signed; trust that authority's root GID{where} instead",
    )


def _identity(gid: Gid) -> str:
    return f"subject {gid.certificate.subject.rfc4514_string()!r}, URN {gid.urn or 'none'}"


def _check_renewal(anchor: Gid, existing: Gid, path: str) -> None:
    """Refuse anchor as a renewal of the trusted root existing (read from path) unless it is one: the same key,
    subject and URN, and self-signed (by that key)."""
    trusted = f"{_describe(existing)} (fingerprint {existing.fingerprint[:16]}..., {path})"
    if existing.key_id != anchor.key_id and _signed_by(anchor, existing):
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"{_describe(anchor)} is no root: this certificate is issued by the trusted root {trusted}, which is "
            "the one to trust; nothing to add",
        )
    if existing.key_id != anchor.key_id:
        raise TrustError(
            Reason.UNTRUSTED_CHAIN,
            f"{_describe(anchor)} is trusted already with another key: {trusted}; a look-alike is refused: remove "
            "the old root file first if the authority really changed its key",
        )
    if existing.certificate.subject != anchor.certificate.subject or existing.urn != anchor.urn:
        raise TrustError(
            Reason.UNTRUSTED_CHAIN,
            f"the new root ({_identity(anchor)}) has the key of the trusted root {trusted} ({_identity(existing)}) "
            "under another name: a renewal keeps the subject and the URN, and a root that names another authority "
            "is a look-alike; remove the old root file first if the authority really changed its name",
        )
    if not _signed_by(anchor, anchor):
        raise TrustError(
            Reason.UNTRUSTED_CHAIN,
            f"{_describe(anchor)} claims to renew the trusted root {trusted} but is not signed by its key (not "
            "self-signed): a look-alike is refused; ask the authority for its renewed root GID",
        )
