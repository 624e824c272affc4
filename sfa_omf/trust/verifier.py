"""Credential verification: may this caller do this operation on this object, at this time?

Two steps, so that the expensive one can be cached:

1. ``verify`` — everything intrinsic to the credential: its XML signatures (each credential up the parent chain has
   exactly one, verified in-process with xmlsec), each signer's chain to a trusted root, the issuer rule (the root
   credential is signed by an authority over its target), the delegation rules (each step is signed by the parent's
   owner, keeps the target, asks for no privilege the parent could not delegate, and does not outlive the parent),
   the owner and target chains, and expiry. The result, a ``VerifiedCredential``, is cached by the document's digest
   and the trusted-roots fingerprint, and is reused only inside the period where every certificate and credential
   involved is valid — so no later time can reuse it wrongly.
2. ``authorize`` — the use: the caller is the owner (same key, or same URN from a trusted chain, as gcf does), the
   target is the object of the call (or an authority over it, for authority credentials), and a privilege allows
   the operation. This step is cheap and runs on every call, so no other caller can reuse a verdict.

Speaks-for (geni_speaking_for with a geni_abac credential) changes only *who the caller is*; it is resolved before
``check_call`` and the effective caller's chain is passed in.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import PublicKeyAlgorithmOID
from lxml import etree

from sfa_omf.errors import Reason, TrustError
from sfa_omf.times import format_time
from sfa_omf.trust import gid as gid_module
from sfa_omf.trust import rights, xmldsig
from sfa_omf.trust import roots as roots_module
from sfa_omf.trust.credential import Credential, CredentialDocument, read_credential, same_urn
from sfa_omf.trust.gid import Gid, GidChain, der_of_base64, gid_from_der
from sfa_omf.trust.roots import TrustedRoots, VerifiedChain, check_chain, may_name
from sfa_omf.waits import blocking
from sfa_omf.xrn import is_authority_over_urn, is_urn, parse_urn

_DS = f"{{{xmldsig.DSIG_NS}}}"
#: The largest RSA key OpenSSL verifies a signature with (OPENSSL_RSA_MAX_MODULUS_BITS).
MAX_RSA_KEY_BITS = 16_384


@dataclass(frozen=True)
class VerifiedCredential:
    """A credential whose signatures, chains and delegation were checked. Plain data."""

    digest: str
    owner_urn: str
    owner_key_id: str
    target_urn: str
    target_key_id: str  # the key of the target's GID (a slice's: the registry tells which slice of that name)
    target_type: str
    privileges: tuple[str, ...]
    delegatable: tuple[str, ...]
    expires: datetime  # the credential's own expiry
    valid_from: datetime  # latest notBefore of every certificate involved
    valid_until: datetime  # earliest of every expiry involved (credentials and certificates)
    depth: int  # 0 = issued directly by an authority
    #: (owner URN, owner key id) of each credential up the delegation chain above this one, the delegator of this
    #: one first, the root credential's owner last: whoever delegated it answers for it on every use (an aggregate
    #: refuses a delegation by a local user its registry no longer holds, am/caller_keys.py).
    delegators: tuple[tuple[str, str], ...] = ()

    @property
    def delegated(self) -> bool:
        return self.depth > 0


@dataclass(frozen=True)
class ChainVerdict:
    """A caller chain found trusted: the anchor it ends at, and the span in which every certificate checked is
    valid (roots.VerifiedChain.checked: the chain's up to the one the anchor signed, and the anchor) —
    [valid_from, valid_until], both ends included as check_validity has it."""

    anchor: Gid
    valid_from: datetime
    valid_until: datetime


class VerdictCache:
    """Verified credentials by (document digest, trusted-roots fingerprint); thread-safe and bounded (LRU).

    An entry is returned only for a time inside its [valid_from, valid_until) period and is dropped after it.
    Only successful verifications are cached: a refusal is cheap to reproduce and may stop being one.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[tuple[str, str], VerifiedCredential] = OrderedDict()
        self._chains: OrderedDict[tuple[tuple[str, ...], str], ChainVerdict] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.chain_hits = 0

    def get_chain(self, key: tuple[tuple[str, ...], str], at: datetime) -> ChainVerdict | None:
        """A caller chain's earlier verdict, if ``at`` lies inside its validity (else None, and it is re-verified)."""
        with self._lock:
            entry = self._chains.get(key)
            if entry is None:
                return None
            if at > entry.valid_until:
                del self._chains[key]
                return None
            if at < entry.valid_from:
                return None
            self._chains.move_to_end(key)
            self.chain_hits += 1
            return entry

    def put_chain(self, key: tuple[tuple[str, ...], str], verdict: ChainVerdict) -> None:
        with self._lock:
            self._chains[key] = verdict
            self._chains.move_to_end(key)
            while len(self._chains) > self._max_entries:
                self._chains.popitem(last=False)

    def get(self, key: tuple[str, str], at: datetime) -> VerifiedCredential | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            if at >= entry.valid_until:
                del self._entries[key]
                self.misses += 1
                return None
            if at < entry.valid_from:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple[str, str], verified: VerifiedCredential) -> None:
        with self._lock:
            self._entries[key] = verified
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def forget_certificates() -> None:
    """Forget every parsed certificate, verified link and signer key this process keeps (benchmarks measure a
    first sight with it; nothing else needs it: those caches are keyed by exact bytes and never go stale)."""
    gid_module.forget_parsed()
    roots_module.forget_verified_links()
    xmldsig.forget_keys()


def credential_digest(xml: bytes | str) -> str:
    """SHA-256 of the document as received (text is hashed as UTF-8; text that is not valid Unicode is refused)."""
    try:
        data = xml.encode("utf-8") if isinstance(xml, str) else xml
    except UnicodeEncodeError as exc:
        raise TrustError(Reason.MALFORMED, f"credential text is not valid Unicode ({exc.reason})") from exc
    return hashlib.sha256(data).hexdigest()


class CredentialVerifier:
    """Verifies credentials against a set of trusted roots. Safe to share between threads."""

    def __init__(self, roots: TrustedRoots, cache: VerdictCache | None = None) -> None:
        self.roots = roots
        self.cache = cache

    # -- step 1 ---------------------------------------------------------------------------------------------
    def verify(self, xml: bytes | str, at: datetime) -> VerifiedCredential:
        """Verify everything intrinsic to the credential as of ``at``. Raise TrustError naming the reason."""
        roots = self.roots  # one set for the whole check: the server may swap in reloaded roots meanwhile
        key = (credential_digest(xml), roots.fingerprint)
        if self.cache is not None:
            cached = self.cache.get(key, at)
            if cached is not None:
                return cached
        # A cold check (milliseconds of CPU) never holds the reactor thread: in a call answered there, it runs in a
        # thread (waits.py).
        verified = blocking(self._read_and_verify, xml, key[0], at, roots)
        if self.cache is not None:
            self.cache.put(key, verified)
        return verified

    def _read_and_verify(self, xml: bytes | str, digest: str, at: datetime, roots: TrustedRoots) -> VerifiedCredential:
        return self._verify_document(read_credential(xml), digest, at, roots)

    def _verify_document(
        self, document: CredentialDocument, digest: str, at: datetime, roots: TrustedRoots
    ) -> VerifiedCredential:
        credential = document.credential
        lineage = credential.lineage
        signer_chains = _check_signatures(document.root, lineage)
        involved: list[Gid] = []
        # The same chains come back in one credential (a delegator is the parent's owner and the child's signer;
        # every step has the same target): each distinct chain is checked once, its first failure still raised
        # with the role it has where it first appears.
        trusted: dict[tuple[str, ...], VerifiedChain] = {}

        def check(chain: GidChain, role: str) -> None:
            key = tuple(gid.fingerprint for gid in chain)
            if key not in trusted:
                trusted[key] = check_chain(chain, roots, at, role=role)
                involved.extend(trusted[key].checked)  # what the verdict rests on, not what follows in the chain

        for item in lineage:
            check(signer_chains[item.xml_id], f"signer of credential {item.xml_id!r}")
        root_credential = lineage[-1]
        _check_issuer(root_credential, signer_chains[root_credential.xml_id][0])
        for child, parent in itertools.pairwise(lineage):
            _check_delegation(child, parent, signer_chains[child.xml_id][0])
        for item in lineage:
            for role, chain in (("owner", item.owner_chain), ("target", item.target_chain)):
                check(chain, f"{role} of credential {item.xml_id!r}")
        for item in lineage:
            if at >= item.expires:
                raise TrustError(
                    Reason.CREDENTIAL_EXPIRED,
                    f"credential for {item.owner_urn} over {item.target_urn} expired at "
                    f"{format_time(item.expires)} (checked at {format_time(at)}); get a fresh one from its "
                    "authority (sfi.py: remove the cached .cred file)",
                )
        valid_until = min([item.expires for item in lineage] + [gid.not_after for gid in involved])
        valid_from = max(gid.not_before for gid in involved)
        target = credential.target_chain[0]
        return VerifiedCredential(
            digest=digest,
            owner_urn=credential.owner_urn,
            owner_key_id=credential.owner_chain[0].key_id,
            target_urn=credential.target_urn,
            target_key_id=target.key_id,
            target_type=target.type or "",
            privileges=credential.privilege_names,
            delegatable=tuple(p.name for p in credential.privileges if p.can_delegate),
            expires=credential.expires,
            valid_from=valid_from,
            valid_until=valid_until,
            depth=credential.depth,
            delegators=tuple((item.owner_urn, item.owner_chain[0].key_id) for item in lineage[1:]),
        )

    # -- step 2 ---------------------------------------------------------------------------------------------
    def authorize(
        self,
        verified: VerifiedCredential,
        caller: Gid | None,
        target_urn: str | None,
        operation: str | None,
        caller_urn: str | None = None,
    ) -> None:
        """Check the use of a verified credential by caller on target_urn for operation. Raise TrustError.

        The caller is a verified certificate (same key as the owner's, or same URN) or, for offline checks by an
        operator, just a URN. None of them: the owner is not checked. A credential that names no owner (an owner
        GID without a URN, SFA's old form, and an empty <owner_urn>) is of no use: OWNER_MISMATCH.
        """
        if not verified.owner_urn:
            # Nothing could be booked or recorded under an owner with no name (a lease's owner is a URN).
            raise TrustError(
                Reason.OWNER_MISMATCH,
                "this credential names no owner: its owner certificate carries no URN (SFA's old form) and its "
                "<owner_urn> is empty; ask its authority for a credential that names you by URN",
            )
        if caller is not None:
            same_key = caller.key_id == verified.owner_key_id
            same_urn = bool(caller.urn) and _same_urn(caller.urn or "", verified.owner_urn)
            caller_name = caller.urn or caller.subject_cn
        elif caller_urn is not None:
            same_key, same_urn, caller_name = False, _same_urn(caller_urn, verified.owner_urn), caller_urn
        else:
            same_key, same_urn, caller_name = True, True, ""
        if not (same_key or same_urn):
            raise TrustError(
                Reason.OWNER_MISMATCH,
                f"this credential was issued to {verified.owner_urn}, not to the caller "
                f"{caller_name}; use a credential issued or delegated to you",
            )
        if (
            target_urn
            and not _same_urn(target_urn, verified.target_urn)
            and not _authority_credential_covers(verified, target_urn)
        ):
            raise TrustError(
                Reason.TARGET_MISMATCH,
                f"this credential is for {verified.target_urn}, not for {target_urn}; "
                "use the credential of the object you name",
            )
        if operation and not rights.allows(verified.privileges, operation):
            raise TrustError(
                Reason.INSUFFICIENT_PRIVILEGES,
                f"the credential's privileges ({', '.join(verified.privileges) or 'none'}) do not allow "
                f"{operation!r} on {verified.target_urn}",
            )

    def verify_caller(self, caller_chain: GidChain, at: datetime) -> Gid:
        """Verify the caller's own certificate chain (from TLS); return its leaf. Untrusted callers are FORBIDDEN.

        With a cache, a trusted chain's verdict is kept by (the chain's certificate fingerprints, the trusted roots'
        fingerprint) and reused only while every certificate checked is valid; refusals are never kept.
        """
        # Read once: the server swaps in reloaded roots from another thread, and a verdict made with the new roots
        # must not be kept under the old roots' fingerprint (a root removed again would stay trusted from it).
        roots = self.roots
        key = (tuple(gid.fingerprint for gid in caller_chain), roots.fingerprint)
        if self.cache is not None and self.cache.get_chain(key, at) is not None:
            return caller_chain[0]
        try:
            verified = blocking(functools.partial(check_chain, caller_chain, roots, at, role="caller"))
        except TrustError as exc:
            if exc.reason in (Reason.UNTRUSTED_CHAIN, Reason.INVALID_CHAIN):
                raise TrustError(Reason.CALLER_UNTRUSTED, exc.message) from exc
            raise
        if self.cache is not None:
            self.cache.put_chain(key, ChainVerdict(verified.anchor, verified.valid_from, verified.valid_until))
        return caller_chain[0]

    def check_call(
        self,
        caller_chain: GidChain,
        credentials: Sequence[bytes | str],
        target_urn: str | None,
        operation: str,
        at: datetime,
    ) -> VerifiedCredential:
        """Verify the caller's own chain, then return the first credential that allows the call.

        When none does, raise the most useful refusal: one about a credential that was for this caller and
        object beats one that merely belonged to someone or something else.
        """
        caller = self.verify_caller(caller_chain, at)
        if not credentials:
            raise TrustError(Reason.NO_CREDENTIAL, f"{operation!r} needs a credential and the call carried none")
        refusals: list[TrustError] = []
        for xml in credentials:
            try:
                verified = self.verify(xml, at)
                self.authorize(verified, caller, target_urn, operation)
                return verified
            except TrustError as exc:
                refusals.append(exc)
        best = min(refusals, key=lambda error: _REFUSAL_RANK.get(error.reason, 1))
        if len(refusals) == 1:
            raise best
        raise TrustError(best.reason, f"none of the {len(refusals)} credentials allows {operation!r}: {best.message}")


_REFUSAL_RANK = {Reason.INSUFFICIENT_PRIVILEGES: 0, Reason.OWNER_MISMATCH: 2, Reason.TARGET_MISMATCH: 2}


#: URN equality (credential.same_urn): a URN-like text that does not parse is a TrustError (MALFORMED), so that one
#: crafted credential is a refusal of that credential and the call's other credentials are still tried.
_same_urn = same_urn


def _authority_credential_covers(verified: VerifiedCredential, target_urn: str) -> bool:
    """An authority credential (privilege authority or sa) acts on everything its authority names."""
    if verified.target_type != "authority" or not is_urn(target_urn):
        return False
    if not {"authority", "sa"} & {name.lower() for name in verified.privileges}:
        return False
    # By the target's URN authority field (xrn.is_authority_over_urn): the credential of sub-authority fed.sub does
    # not cover urn:publicid:IDN+fed+slice+sub, a slice of fed whose HRN is fed.sub too.
    return is_authority_over_urn(parse_urn(verified.target_urn).hrn, parse_urn(target_urn))


# -- the rules ----------------------------------------------------------------------------------------------------
def _check_signatures(root: etree._Element, lineage: Iterable[Credential]) -> dict[str, GidChain]:
    """Every credential in the lineage has exactly one signature, which verifies; return each signer's chain."""
    signatures_element = [child for child in root if child.tag == "signatures"]
    if len(signatures_element) != 1:
        raise TrustError(Reason.SIGNATURE, "the credential carries no <signatures> element: it is not signed")
    wanted = {credential.xml_id for credential in lineage}
    by_reference: dict[str, etree._Element] = {}
    for signature in signatures_element[0]:
        if not isinstance(signature.tag, str):
            continue
        if signature.tag != f"{_DS}Signature":
            raise TrustError(Reason.SIGNATURE, f"unexpected <{signature.tag}> inside <signatures>")
        reference_id = signature_reference(signature)
        if reference_id not in wanted:
            raise TrustError(
                Reason.SIGNATURE,
                f"a signature refers to {reference_id!r}, which is not a credential of this chain "
                "(a signature over a different element than the one read is refused)",
            )
        if reference_id in by_reference:
            raise TrustError(Reason.SIGNATURE, f"two signatures refer to credential {reference_id!r}")
        by_reference[reference_id] = signature
    signer_chains: dict[str, GidChain] = {}
    for credential in lineage:
        covering = by_reference.get(credential.xml_id)
        if covering is None:
            raise TrustError(Reason.SIGNATURE, f"credential {credential.xml_id!r} is not signed")
        signer_chains[credential.xml_id] = verify_signature_element(covering, credential.xml_id)
    return signer_chains


def signature_reference(signature: etree._Element) -> str:
    signed_info = signature.findall(f"{_DS}SignedInfo")
    if len(signed_info) != 1:
        raise TrustError(Reason.SIGNATURE, "a signature must have exactly one SignedInfo")
    if signature.findall(f"{_DS}Object"):
        raise TrustError(Reason.SIGNATURE, "a signature carries <Object> content: refused (signature wrapping)")
    c14n = signed_info[0].findall(f"{_DS}CanonicalizationMethod")
    method = signed_info[0].findall(f"{_DS}SignatureMethod")
    if len(c14n) != 1 or c14n[0].get("Algorithm") not in xmldsig.ALLOWED_C14N:
        raise TrustError(Reason.SIGNATURE, "a signature uses a canonicalization method we do not accept")
    if len(method) != 1 or method[0].get("Algorithm") not in xmldsig.ALLOWED_SIGNATURE_METHODS:
        raise TrustError(
            Reason.SIGNATURE,
            f"a signature uses method {method[0].get('Algorithm') if method else None!r}; RSA with SHA-1/2 only",
        )
    references = signed_info[0].findall(f"{_DS}Reference")
    if len(references) != 1:
        raise TrustError(Reason.SIGNATURE, f"a signature has {len(references)} references; exactly one is allowed")
    reference = references[0]
    for transform in reference.iter(f"{_DS}Transform"):
        if transform.get("Algorithm") not in xmldsig.ALLOWED_REFERENCE_TRANSFORMS:
            raise TrustError(
                Reason.SIGNATURE,
                f"a signature uses transform {transform.get('Algorithm')!r}, which is refused",
            )
    digest = reference.findall(f"{_DS}DigestMethod")
    if len(digest) != 1 or digest[0].get("Algorithm") not in xmldsig.ALLOWED_DIGESTS:
        raise TrustError(Reason.SIGNATURE, "a signature uses a digest method we do not accept")
    uri = reference.get("URI") or ""
    if not uri.startswith("#") or len(uri) < 2:
        raise TrustError(Reason.SIGNATURE, f"a signature refers to {uri!r}; it must name a credential by '#<xml:id>'")
    return uri[1:]


def verify_signature_element(signature: etree._Element, xml_id: str) -> GidChain:
    certificates = signature.findall(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
    if not certificates:
        raise TrustError(
            Reason.SIGNATURE, f"the signature of credential {xml_id!r} names no signer certificate (X509Data)"
        )
    try:
        # Each certificate by its DER bytes: the same objects as the owner and target chains' PEM gave.
        chain = tuple(gid_from_der(der_of_base64(node.text or "")) for node in certificates)
    except Exception as exc:  # whatever the certificate parser raises on junk
        raise TrustError(Reason.SIGNATURE, f"cannot read the signer certificate of credential {xml_id!r}") from exc
    signer = chain[0]
    signer.check_urn_characters()  # before any message below shows its URN
    # Only plain RSA keys: the signature methods allowed are RSA ones, and an RSA key restricted to PSS
    # (id-RSASSA-PSS) would lose its restriction in the SubjectPublicKeyInfo re-encoded for xmlsec.
    if signer.certificate.public_key_algorithm_oid != PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5:
        raise TrustError(
            Reason.SIGNATURE,
            f"the signer certificate of credential {xml_id!r} ({signer.urn or signer.subject_cn}) holds a "
            f"key of algorithm {signer.certificate.public_key_algorithm_oid.dotted_string}, not RSA "
            "(1.2.840.113549.1.1.1): credentials are signed with RSA keys",
        )
    try:
        key = signer.public_key_der
        key_bits = signer.key_bits
    except (UnsupportedAlgorithm, ValueError) as exc:  # a key cryptography cannot load: no signature can verify
        raise TrustError(
            Reason.SIGNATURE, f"the signer certificate of credential {xml_id!r} holds a key that cannot be read"
        ) from exc
    if key_bits > MAX_RSA_KEY_BITS:  # said here rather than as a libxmlsec1 failure, and never loaded nor kept
        raise TrustError(
            Reason.SIGNATURE,
            f"the signer certificate of credential {xml_id!r} holds an RSA key of {key_bits} bits; keys of up to "
            f"{MAX_RSA_KEY_BITS} bits (OpenSSL's limit) are accepted",
        )
    try:
        # The key is the signer certificate's, chosen by us; xmlsec may not pick one from KeyInfo.
        xmldsig.verify(signature, key)
    except xmldsig.SignatureInvalid as exc:
        raise TrustError(
            Reason.SIGNATURE,
            f"the signature of credential {xml_id!r} by {chain[0].urn or chain[0].subject_cn} does not verify: "
            "the credential was altered after signing, or signed with another key",
        ) from exc
    return chain


def _check_issuer(root_credential: Credential, signer: Gid) -> None:
    """The credential an authority issued must be signed by an authority over its target."""
    target = root_credential.target_chain[0]
    if signer.is_authority and may_name(signer, target):
        return
    raise TrustError(
        Reason.ISSUER,
        f"credential {root_credential.xml_id!r} over {root_credential.target_urn} is signed by "
        f"{signer.urn or signer.subject_cn}, which is no authority over it",
    )


def _check_delegation(child: Credential, parent: Credential, child_signer: Gid) -> None:
    where = f"delegation {parent.xml_id!r} -> {child.xml_id!r}"
    if child_signer.key_id != parent.owner_chain[0].key_id:
        raise TrustError(
            Reason.DELEGATION,
            f"{where}: signed by {child_signer.urn or child_signer.subject_cn}, but only the parent's owner "
            f"{parent.owner_urn} may delegate it",
        )
    if not _same_urn(child.target_urn, parent.target_urn) or (
        child.target_chain[0].key_id != parent.target_chain[0].key_id
    ):
        raise TrustError(Reason.DELEGATION, f"{where}: the target changed from {parent.target_urn}")
    if child.expires > parent.expires:
        raise TrustError(
            Reason.DELEGATION,
            f"{where}: expires {format_time(child.expires)}, after its parent ({format_time(parent.expires)})",
        )
    for privilege in child.privileges:
        delegable = [p for p in parent.privileges if p.can_delegate and rights.covers(p.name, privilege.name)]
        if not delegable:
            raise TrustError(
                Reason.DELEGATION,
                f"{where}: privilege {privilege.name!r} was not delegatable by {parent.owner_urn}",
            )
