"""GIDs: X.509 certificates that carry a GENI URN, a UUID and maybe an e-mail in subjectAltName.

SFA writes the HRN as the subject CN (``onelab.inria.alice``); gcf writes ``geni//gpo//gcf.user.alice``. The URN in
subjectAltName is the identity that counts; the HRN comes from it. Chains are stored as concatenated PEM, leaf first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from sfa_omf.errors import BadArgs, Reason, TrustError
from sfa_omf.times import as_utc
from sfa_omf.xrn import Urn, is_urn, join_hrn, parse_urn, shown_urn, split_hrn, urn_character_problem


@dataclass(frozen=True)
class Gid:
    """One certificate and the GENI identity it names."""

    certificate: x509.Certificate
    urn: str | None
    uuid: str | None
    email: str | None
    is_ca: bool
    #: The certificate's DER bytes when the GID was read from them (its fingerprint is then a hash of these, not a
    #: re-encoding); None when built from a certificate object.
    der: bytes | None = field(default=None, repr=False, compare=False)

    # The identity read from the certificate is computed once per Gid (and a Gid once per distinct certificate:
    # load_gid_chain, gid_from_der): these are read on every check of every chain.
    @functools.cached_property
    def subject_cn(self) -> str:
        values = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(values[0].value) if values else ""

    @functools.cached_property
    def parsed_urn(self) -> Urn | None:
        """The URN parsed (once: type, HRN and its parts come from it), None when the GID carries no URN. Raises
        TrustError when the URN holds a character no URN holds (check_urn_characters)."""
        if not self.urn:
            return None
        self.check_urn_characters()
        return parse_urn(self.urn)

    @functools.cached_property
    def name_problem(self) -> str | None:
        """The first character of the name this certificate gives that no URN holds, said for a person
        (xrn.urn_character_problem): of its URN, or with none of its CN (its HRN then comes from it); None when
        there is none."""
        if self.urn:
            return urn_character_problem(self.urn)
        return urn_character_problem(self.subject_cn, "the CN")

    def check_urn_characters(self, advice: str = "the authority that issued it must issue one without it") -> None:
        """Refuse this certificate (TrustError INVALID_CHAIN, naming its subject, the character and ``advice``: what
        to do) when its URN holds a control character, a line break, a blank or an invisible character, or, when it
        carries no URN, its CN does (SFA's old form: the CN is its HRN). The name of a certificate an authority
        signed becomes a caller's, an owner's or a slice's name in the calendar, e-mails and feeds, as an
        argument's does, and is held to the same rule (xrn.check_urn_characters). Messages show the URN and subject
        escaped (repr), never the characters themselves."""
        problem = self.name_problem
        if problem is None:
            return
        subject = self.certificate.subject.rfc4514_string()
        issuer = self.certificate.issuer.rfc4514_string()
        named = f"names the URN {self.urn!r}" if self.urn else "carries no URN, so its CN is its name"
        raise TrustError(
            Reason.INVALID_CHAIN,
            f"certificate {subject!r} (issued by {issuer!r}) {named}, refused: {problem}; {advice}",
        )

    @functools.cached_property
    def type(self) -> str | None:
        """The URN's type (``user``, ``slice``, ``authority``, ``node``) or None when the GID carries no URN."""
        return self.parsed_urn.type if self.parsed_urn else None

    @functools.cached_property
    def hrn(self) -> str:
        """The HRN from the URN; SFA GIDs without a URN fall back to the CN (which SFA sets to the HRN). Raises
        TrustError when either holds a character no URN holds (check_urn_characters)."""
        if self.parsed_urn:
            return join_hrn(self.hrn_parts)
        self.check_urn_characters()  # the CN becomes the name: held to a URN's rule
        return self.subject_cn

    @functools.cached_property
    def hrn_parts(self) -> tuple[str, ...]:
        """The HRN's parts (see hrn); BadArgs when the CN of a GID without a URN is no HRN."""
        if self.parsed_urn:
            return self.parsed_urn.hrn_parts
        self.check_urn_characters()  # the CN becomes the name: held to a URN's rule
        return split_hrn(self.subject_cn)

    @property
    def is_authority(self) -> bool:
        return self.type == "authority"

    @functools.cached_property
    def not_before(self) -> datetime:
        return as_utc(self.certificate.not_valid_before_utc)

    @functools.cached_property
    def not_after(self) -> datetime:
        return as_utc(self.certificate.not_valid_after_utc)

    @functools.cached_property
    def public_key_der(self) -> bytes:
        """The subject public key as DER SubjectPublicKeyInfo (the key a signature by this GID is checked with).
        Raises TrustError (MALFORMED) for a key the cryptography library cannot read (an unknown algorithm): a
        refusal of the credential or chain that carries it, so the caller's other credentials are still tried."""
        return self.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @functools.cached_property
    def key_bits(self) -> int:
        """The size of the subject's RSA key in bits; 0 for a key of another algorithm (TrustError as
        ``public_key_der`` for one that cannot be read)."""
        key = self.public_key()
        return key.key_size if isinstance(key, rsa.RSAPublicKey) else 0

    def public_key(self) -> CertificatePublicKeyTypes:
        """The subject's public key; TrustError (MALFORMED) for one the cryptography library cannot read."""
        try:
            return self.certificate.public_key()
        except (UnsupportedAlgorithm, ValueError) as exc:
            who = shown_urn(self.urn or self.subject_cn)  # (escaped: it comes from the caller)
            raise TrustError(
                Reason.MALFORMED,
                f"certificate {who} holds a public key that cannot be read ({exc}); GENI certificates hold RSA keys: "
                "the authority that issued it must issue one with an RSA key",
            ) from exc

    @functools.cached_property
    def key_id(self) -> str:  # cached: compared on every call
        """SHA-256 of the subject public key (DER SubjectPublicKeyInfo): equal keys, equal ids."""
        return hashlib.sha256(self.public_key_der).hexdigest()

    @functools.cached_property
    def fingerprint(self) -> str:  # cached: part of every chain-verdict key
        """SHA-256 of the certificate's DER encoding (hashlib over bytes at hand: a third of cryptography's cost)."""
        der = self.der if self.der is not None else self.certificate.public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()

    @functools.cached_property
    def _pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def pem(self) -> str:
        return self._pem


GidChain = tuple[Gid, ...]


def gid_from_certificate(certificate: x509.Certificate, der: bytes | None = None) -> Gid:
    """Read the GENI identity out of a certificate (``der``: its DER bytes, when the caller read it from them)."""
    urn = uuid = email = None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if is_urn(uri) and urn is None:
                urn = uri
            elif uri.lower().startswith("urn:uuid:") and uuid is None:
                uuid = uri[len("urn:uuid:") :]
        emails = san.get_values_for_type(x509.RFC822Name)
        email = emails[0] if emails else None
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bool(constraints.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    return Gid(certificate=certificate, urn=urn, uuid=uuid, email=email, is_ca=is_ca, der=der)


#: Certificates of chains verified to a trusted root, kept parsed by their DER bytes. A server sees a few per user
#: and authority; the bound keeps a stream of new ones from growing memory.
PARSED_CACHE_SIZE = 4096
#: Certificates larger than this are parsed but never kept: the caches are keyed by the caller's bytes, and a real
#: GID is one or two KiB.
MAX_CACHED_BYTES = 32 * 1024
#: Certificates not (yet) verified to a trusted root are kept only among the most recent ones seen, up to this much
#: memory in all as estimated by recent_cost: enough for the certificates of a few calls (a credential's owner,
#: target and signer chains repeat the same certificates, parsed before any chain is checked); small, so that
#: callers nobody trusts cannot make a process hold much.
RECENT_CACHE_BYTES = 1024 * 1024
#: What a kept certificate holds, at most: cryptography keeps its subject, issuer and extensions as Python objects,
#: one or more per name entry, and verification caches a few values on the Gid. Measured (RSS; cryptography 45,
#: CPython 3.11): a 200-byte certificate 4.4 KB, a usual 860-byte GID 8.3 KB, and up to 68 times the DER size for a
#: certificate made of the shortest name entries (3 000 RDNs of an empty value: 54 KB of DER held 3.7 MB).
RECENT_ENTRY_OVERHEAD = 8 * 1024
RECENT_BYTES_FACTOR = 80
#: A certificate whose estimate is over this share of RECENT_CACHE_BYTES (DER over 3 174 bytes) is parsed but not kept
#: among the recent ones: one would push out many others.
RECENT_LARGEST_SHARE = 4
#: PEM texts of verified chains, kept up to this many bytes of text (and CHAIN_ENTRY_OVERHEAD each) in all (reading a
#: text again costs tens of microseconds a chain).
CHAIN_CACHE_BYTES = 4 * 1024 * 1024
CHAIN_ENTRY_OVERHEAD = 512
#: PEM texts whose chain is not (yet) verified as a whole, kept with their certificates' DER bytes (no parsed
#: certificate: those are kept, or not, as above) up to this many bytes, each text counted twice (text and DER) and
#: CHAIN_ENTRY_OVERHEAD: a credential's chains are read before they are verified, and read again on the next call.
PENDING_CACHE_BYTES = 256 * 1024


def _pem_size_allowed(gid: Gid) -> int:
    """The most text a kept chain text may spend on one certificate: its PEM (4/3 of the DER in base64, line breaks,
    CRLF or not, and the markers) with some room for whitespace around it; more is padding."""
    return len(gid.der or b"") * 3 // 2 + 128


def _pending_cost(text: bytes) -> int:
    """A pending text's count: the text, at most as many bytes of DER (held alone once their certificates are
    dropped), and the entry."""
    return 2 * len(text) + CHAIN_ENTRY_OVERHEAD


def recent_cost(der_size: int) -> int:
    """The memory a certificate of der_size DER bytes is taken to hold while kept (a conservative estimate)."""
    return RECENT_ENTRY_OVERHEAD + RECENT_BYTES_FACTOR * der_size


class CacheSizes(NamedTuple):
    """What ParsedCertificates holds (for tests and benchmarks)."""

    verified: int  # certificates
    recent: int  # certificates
    recent_cost: int  # their estimated memory (recent_cost)
    chains: int  # PEM texts of verified chains
    chain_bytes: int  # their bytes and CHAIN_ENTRY_OVERHEAD each
    pending: int  # PEM texts of chains not yet verified
    pending_bytes: int  # twice their bytes and CHAIN_ENTRY_OVERHEAD each


def load_gid_chain(pem: bytes | str) -> GidChain:
    """Load a PEM chain (leaf first). Raise BadArgs when there is no certificate in it.

    Each certificate is parsed once (see gid_from_der): credentials repeat the same chains in every signature,
    owner and target, and callers send the same credentials on every call.
    """
    if isinstance(pem, str):
        try:
            pem = pem.encode("ascii")
        except UnicodeEncodeError as exc:
            raise BadArgs(f"cannot read a PEM certificate chain: not ASCII ({exc.reason})") from exc
    found = PARSED.chain(pem)
    if found is not None:
        return found
    ders = PARSED.pending_chain(pem)
    if ders is not None:  # read before, its chain not yet verified: only the certificates are looked up
        chain = tuple(_read_der_of_chain(der) for der in ders)
        PARSED.remember_chain(pem, chain, ders)
        return chain
    blocks: list[bytes] = []
    only_pem = True  # nothing but PEM blocks and whitespace: only such a text is kept (ParsedCertificates)
    end = 0
    for match in _PEM_BLOCK.finditer(pem):
        only_pem = only_pem and _is_blank(pem[end : match.start()])
        blocks.append(match.group())
        end = match.end()
    if not blocks:
        raise BadArgs("cannot read a PEM certificate chain: no certificate in it")
    try:
        ders = tuple(der_of_base64(block[len(_BEGIN) : -len(_END)]) for block in blocks)
    except ValueError as exc:
        raise BadArgs(f"cannot read a PEM certificate chain: {exc}") from exc
    chain = tuple(_read_der_of_chain(der) for der in ders)
    if only_pem and _is_blank(pem[end:]):
        PARSED.remember_chain(pem, chain, ders)
    return chain


def _is_blank(text: bytes) -> bool:
    return not text or text.isspace()


# Only base64 and whitespace between the markers: a lazy ".*?" scanned to the end of the input from every BEGIN
# without an END, quadratic in the size of what a caller sends (minutes for a few hundred KiB).
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*-----END CERTIFICATE-----")
_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def _read_der_of_chain(der: bytes) -> Gid:
    """The GID of one certificate of a PEM chain (gid_from_der, its refusal said as BadArgs)."""
    try:
        return gid_from_der(der)
    except ValueError as exc:
        raise BadArgs(f"cannot read a PEM certificate chain: {exc}") from exc


def der_of_base64(text: bytes | str) -> bytes:
    """The bytes of base64 text with whitespace anywhere (PEM bodies, XML-DSig's X509Certificate). Raises
    ValueError (binascii.Error) on any other character or wrong padding."""
    if isinstance(text, str):
        text = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    return base64.b64decode(b"".join(text.split()), validate=True)


def _read_der(der: bytes) -> Gid:
    der = bytes(der)  # kept by the Gid: an immutable copy of whatever bytes-like object the caller passed
    return gid_from_certificate(x509.load_der_x509_certificate(der), der)


class ParsedCertificates:
    """Parsed certificates, so that what a caller nobody trusts sends cannot fill a process's memory nor push out
    what those it trusts send:

    * ``verified``: certificates of chains verified to a trusted root (``keep``, called by roots.verify_chain), by
      their DER bytes; at most PARSED_CACHE_SIZE, least recently used first out. Only an authority we trust mints
      these.
    * chain texts: the PEM text of a chain that roots.verify_chain accepted as a whole (every certificate in it
      used: no certificate repeated, reordered or added after the root), and that is nothing but PEM blocks and
      whitespace; one text per such chain (the latest read), at most CHAIN_CACHE_BYTES of text in all. Anyone can
      send a trusted authority's public certificates, but not make another such chain, so none of these texts can
      push out those of trusted callers.
    * ``recent``: any other certificate seen lately, by its DER bytes, up to RECENT_CACHE_BYTES of estimated memory
      (recent_cost) in all, oldest first out.
    * pending texts: other PEM texts of nothing but PEM blocks and whitespace seen lately, with the DER bytes of
      their certificates (not the parsed certificates), up to PENDING_CACHE_BYTES, oldest first out.

    Thread-safe. Keyed by exact bytes, the same bytes always giving the same Gid, so nothing here can go stale:
    validity and every rule are judged on each verification.
    """

    def __init__(
        self,
        verified_entries: int = PARSED_CACHE_SIZE,
        recent_bytes: int = RECENT_CACHE_BYTES,
        chain_bytes: int = CHAIN_CACHE_BYTES,
    ) -> None:
        self._lock = threading.Lock()
        self._verified: OrderedDict[bytes, Gid] = OrderedDict()
        self._recent: OrderedDict[bytes, Gid] = OrderedDict()
        self._recent_cost = 0
        #: Chains verified as a whole, by their certificates' fingerprints, and the one PEM text kept for each.
        self._whole_chains: OrderedDict[tuple[str, ...], bytes | None] = OrderedDict()
        self._chains: OrderedDict[bytes, GidChain] = OrderedDict()
        self._chain_bytes = 0
        self._pending: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
        self._pending_bytes = 0
        self._verified_entries = verified_entries
        self._recent_budget = recent_bytes
        self._chain_budget = chain_bytes

    # -- chains by their PEM text
    def chain(self, text: bytes) -> GidChain | None:
        """The chain of this PEM text when it is kept (remember_chain), else None."""
        with self._lock:
            found = self._chains.get(text)
            if found is not None:
                self._chains.move_to_end(text)
            return found

    def pending_chain(self, text: bytes) -> tuple[bytes, ...] | None:
        """The DER bytes of the certificates of this PEM text when it is kept pending (remember_chain), else None."""
        with self._lock:
            return self._pending.get(text)

    def remember_chain(self, text: bytes, chain: GidChain, ders: tuple[bytes, ...]) -> None:
        """Keep the chain of a PEM text that holds nothing but PEM blocks and whitespace (the caller checks; ders:
        its certificates' DER bytes): when the chain was verified as a whole, as the text kept for that chain
        (replacing any other); else pending, until it is."""
        if len(text) > min(MAX_CACHED_BYTES, sum(_pem_size_allowed(gid) for gid in chain)):
            return  # padded: a text of the same chain that only takes room
        fingerprints = tuple(gid.fingerprint for gid in chain)
        with self._lock:
            if text in self._chains:
                return
            if fingerprints not in self._whole_chains:
                self._remember_pending(text, ders)
                return
            if self._pending.pop(text, None) is not None:
                self._pending_bytes -= _pending_cost(text)
            self._drop_chain_text(fingerprints)
            self._whole_chains[fingerprints] = text
            self._chains[text] = chain
            self._chain_bytes += len(text) + CHAIN_ENTRY_OVERHEAD
            while self._chain_bytes > self._chain_budget:
                dropped, dropped_chain = self._chains.popitem(last=False)
                self._chain_bytes -= len(dropped) + CHAIN_ENTRY_OVERHEAD
                dropped_fingerprints = tuple(gid.fingerprint for gid in dropped_chain)
                if self._whole_chains.get(dropped_fingerprints) == dropped:
                    self._whole_chains[dropped_fingerprints] = None

    def _remember_pending(self, text: bytes, ders: tuple[bytes, ...]) -> None:
        if text in self._pending:
            self._pending.move_to_end(text)
            return
        self._pending[text] = ders
        self._pending_bytes += _pending_cost(text)
        while self._pending_bytes > PENDING_CACHE_BYTES:
            dropped, _ = self._pending.popitem(last=False)
            self._pending_bytes -= _pending_cost(dropped)

    def _drop_chain_text(self, fingerprints: tuple[str, ...]) -> None:
        """Forget the text kept for a chain verified as a whole (the chain stays known)."""
        text = self._whole_chains.get(fingerprints)
        if text is None:
            return
        self._whole_chains[fingerprints] = None
        if self._chains.pop(text, None) is not None:
            self._chain_bytes -= len(text) + CHAIN_ENTRY_OVERHEAD

    # -- certificates by their DER bytes
    def get(self, der: bytes) -> Gid:
        """The GID of these DER bytes, parsed now unless seen before. Raises ValueError (never kept) on junk."""
        with self._lock:
            found = self._lookup(der)
        if found is not None:
            return found
        gid = _read_der(der)
        cost = recent_cost(len(der))
        if len(der) > MAX_CACHED_BYTES or cost > self._recent_budget // RECENT_LARGEST_SHARE:
            return gid
        with self._lock:
            found = self._lookup(der)  # another thread parsed it meanwhile: hand out one object for the same bytes
            if found is not None:
                return found
            key = gid.der or der
            self._recent[key] = gid
            self._recent_cost += cost
            while self._recent_cost > self._recent_budget:
                dropped, _ = self._recent.popitem(last=False)
                self._recent_cost -= recent_cost(len(dropped))
        return gid

    def _lookup(self, der: bytes) -> Gid | None:
        found = self._verified.get(der)
        if found is not None:
            self._verified.move_to_end(der)
            return found
        return self._recent.get(der)

    def keep(self, gids: Iterable[Gid], whole_chain: GidChain | None = None) -> None:
        """Keep these certificates (of a chain verified to a trusted root) among the verified ones; whole_chain:
        the chain verified, when every certificate in it was used (its PEM text may then be kept)."""
        with self._lock:
            for gid in gids:
                der = gid.der
                if der is None or len(der) > MAX_CACHED_BYTES:
                    continue  # built from an object, not read from bytes: nothing can look it up by them
                if der in self._verified:
                    self._verified.move_to_end(der)
                    continue
                if self._recent.pop(der, None) is not None:
                    self._recent_cost -= recent_cost(len(der))
                self._verified[der] = gid
                while len(self._verified) > self._verified_entries:
                    self._verified.popitem(last=False)
            if whole_chain is not None:
                fingerprints = tuple(gid.fingerprint for gid in whole_chain)
                if fingerprints in self._whole_chains:
                    self._whole_chains.move_to_end(fingerprints)
                    return
                self._whole_chains[fingerprints] = None
                while len(self._whole_chains) > self._verified_entries:
                    oldest = next(iter(self._whole_chains))
                    self._drop_chain_text(oldest)
                    del self._whole_chains[oldest]

    def sizes(self) -> CacheSizes:
        with self._lock:
            return CacheSizes(
                len(self._verified),
                len(self._recent),
                self._recent_cost,
                len(self._chains),
                self._chain_bytes,
                len(self._pending),
                self._pending_bytes,
            )

    def clear(self) -> None:
        with self._lock:
            self._verified.clear()
            self._recent.clear()
            self._whole_chains.clear()
            self._chains.clear()
            self._pending.clear()
            self._recent_cost = self._chain_bytes = self._pending_bytes = 0


#: The process's parsed certificates (gid_from_der, load_gid_chain).
PARSED = ParsedCertificates()


def gid_from_der(der: bytes) -> Gid:
    """The GID of one DER certificate (a TLS peer's, a signature's, a PEM block's), parsed once per distinct
    certificate of a usual size while it is kept (see ParsedCertificates). Raises ValueError when the bytes are no
    certificate (never kept)."""
    return PARSED.get(der)


def keep_verified(checked: Iterable[Gid], whole_chain: GidChain | None = None) -> None:
    """Keep parsed the certificates of a chain verified to a trusted root (roots.verify_chain calls it); whole_chain:
    the chain, when every certificate in it was used."""
    PARSED.keep(checked, whole_chain)


def forget_parsed() -> None:
    """Empty the caches of parsed certificates (see verifier.forget_certificates)."""
    PARSED.clear()


def load_gid_chain_file(path: str) -> GidChain:
    with open(path, "rb") as handle:
        return load_gid_chain(handle.read())


def chain_pem(chain: GidChain) -> str:
    """The chain as concatenated PEM, leaf first: the GID file format SFA and sfi.py use."""
    return "".join(gid.pem() for gid in chain)
