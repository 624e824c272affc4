"""GIDs: X.509 certificates that carry a GENI URN, a UUID and maybe an e-mail in subjectAltName.

SFA writes the HRN as the subject CN (``onelab.inria.alice``); gcf writes ``geni//gpo//gcf.user.alice``. The URN in
subjectAltName is the identity that counts; the HRN comes from it. Chains are stored as concatenated PEM, leaf first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from sfa_omf.errors import BadArgs
from sfa_omf.times import as_utc
from sfa_omf.xrn import Urn, is_urn, join_hrn, parse_urn, split_hrn


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
        """The URN parsed (once: type, HRN and its parts come from it), None when the GID carries no URN."""
        return parse_urn(self.urn) if self.urn else None

    @functools.cached_property
    def type(self) -> str | None:
        """The URN's type (``user``, ``slice``, ``authority``, ``node``) or None when the GID carries no URN."""
        return self.parsed_urn.type if self.parsed_urn else None

    @functools.cached_property
    def hrn(self) -> str:
        """The HRN from the URN; SFA GIDs without a URN fall back to the CN (which SFA sets to the HRN)."""
        if self.parsed_urn:
            return join_hrn(self.hrn_parts)
        return self.subject_cn

    @functools.cached_property
    def hrn_parts(self) -> tuple[str, ...]:
        if self.parsed_urn:
            return self.parsed_urn.hrn_parts
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
        """The subject public key as DER SubjectPublicKeyInfo (the key a signature by this GID is checked with)."""
        return self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

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


#: Distinct certificates (and PEM chains) kept parsed. A server sees a few per user and authority; the bound keeps
#: a stream of new ones from growing memory.
PARSED_CACHE_SIZE = 4096
#: Inputs larger than this are parsed but not kept: the caches are keyed by the caller's bytes, and a chain of real
#: GIDs is a few KiB; without it, 4 096 entries of megabyte-sized junk would hold gigabytes.
MAX_CACHED_BYTES = 32 * 1024


def load_gid_chain(pem: bytes | str) -> GidChain:
    """Load a PEM chain (leaf first). Raise BadArgs when there is no certificate in it.

    The same bytes give the same (immutable) GIDs without being parsed again: credentials repeat the same chains
    in every signature, owner and target, and callers send the same credentials on every call.
    """
    if isinstance(pem, str):
        try:
            pem = pem.encode("ascii")
        except UnicodeEncodeError as exc:
            raise BadArgs(f"cannot read a PEM certificate chain: not ASCII ({exc.reason})") from exc
    return _parse_chain(pem) if len(pem) <= MAX_CACHED_BYTES else _read_chain(pem)


# Only base64 and whitespace between the markers: a lazy ".*?" scanned to the end of the input from every BEGIN
# without an END, quadratic in the size of what a caller sends (minutes for a few hundred KiB).
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*-----END CERTIFICATE-----")


def _read_chain(data: bytes) -> GidChain:
    # A refusal raises and is never cached. Each certificate is parsed once too, by its DER bytes: one credential
    # carries the same certificates in its owner, target and signer chains, as PEM text wrapped in different ways
    # and as the signatures' base64 DER.
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise BadArgs("cannot read a PEM certificate chain: no certificate in it")
    return tuple(_read_block(block) for block in blocks)


#: Keyed by the exact bytes (see load_gid_chain).
_parse_chain = functools.lru_cache(maxsize=PARSED_CACHE_SIZE)(_read_chain)

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def _read_block(block: bytes) -> Gid:
    """The GID of one PEM block (markers included; only base64 and whitespace between them, see _PEM_BLOCK)."""
    try:
        return gid_from_der(der_of_base64(block[len(_BEGIN) : -len(_END)]))
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


_parse_der = functools.lru_cache(maxsize=PARSED_CACHE_SIZE)(_read_der)


def gid_from_der(der: bytes) -> Gid:
    """The GID of one DER certificate (a TLS peer's, a signature's, a PEM block's), parsed once per distinct
    certificate of a usual size. Raises ValueError when the bytes are no certificate (never cached)."""
    return _parse_der(der) if len(der) <= MAX_CACHED_BYTES else _read_der(der)


def forget_parsed() -> None:
    """Empty the caches of parsed certificates (see verifier.forget_certificates)."""
    _parse_chain.cache_clear()
    _parse_der.cache_clear()


def load_gid_chain_file(path: str) -> GidChain:
    with open(path, "rb") as handle:
        return load_gid_chain(handle.read())


def chain_pem(chain: GidChain) -> str:
    """The chain as concatenated PEM, leaf first: the GID file format SFA and sfi.py use."""
    return "".join(gid.pem() for gid in chain)
