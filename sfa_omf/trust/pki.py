"""Making keys and GIDs: for the local authority, its users, slices, nodes and the aggregate itself.

GIDs are made the way SFA makes them, so that sfi.py, omni, xmlsec1 and openssl all read them: RSA 2048 keys, CN =
HRN (shortened when over X.509's 64 characters: ``common_name``), subjectAltName = URN + UUID (+ e-mail),
basicConstraints CA:TRUE for authorities only, and subject/authority key identifiers (GENI speaks-for names keys by
their subjectKeyIdentifier).
"""

from __future__ import annotations

import hashlib
import uuid as uuid_module
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sfa_omf.times import utcnow
from sfa_omf.trust.gid import Gid, GidChain, gid_from_certificate
from sfa_omf.xrn import parse_urn

DEFAULT_GID_LIFETIME = timedelta(days=5 * 365)
#: X.509's upper bound on a common name (RFC 5280 ub-common-name).
MAX_COMMON_NAME = 64
# Certificates start a little in the past so that a peer whose clock is slightly behind still accepts them.
_CLOCK_SKEW = timedelta(minutes=5)


def new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The key as PEM in the traditional OpenSSL form ("RSA PRIVATE KEY"), the form sfi.py's .pkey files use."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """Load a PEM private key; sfa-omf keys are RSA, which is what SFA, gcf and xmlsec1 all expect."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"expected an RSA private key, found {type(key).__name__}")
    return key


def load_private_key_file(path: str) -> rsa.RSAPrivateKey:
    with open(path, "rb") as handle:
        return load_private_key(handle.read())


def common_name(hrn: str) -> str:
    """The subject CN for an HRN: the HRN itself when it fits X.509's 64 characters (UTF-8 bytes), else its start, '~'
    and 12 hex digits of its SHA-256 (distinct names stay distinct). Only a fallback: readers take the HRN from the
    URN in subjectAltName (trust/gid.py), which has no such bound."""
    encoded = hrn.encode("utf-8")
    if len(encoded) <= MAX_COMMON_NAME:  # counted in UTF-8 bytes, as the certificate holds it
        return hrn
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    head = encoded[: MAX_COMMON_NAME - len(digest) - 1].decode("utf-8", "ignore")  # never half a character
    return f"{head}~{digest}"


def create_gid(
    urn: str,
    public_key: rsa.RSAPublicKey,
    signing_key: rsa.RSAPrivateKey,
    issuer: Gid | None = None,
    email: str | None = None,
    lifetime: timedelta = DEFAULT_GID_LIFETIME,
    not_before: datetime | None = None,
    subject_uuid: str | None = None,
    subject_name: x509.Name | None = None,
) -> Gid:
    """Create a GID for urn holding public_key, signed by signing_key: the issuer's key, or for a self-signed root
    (no issuer) the subject's own. ``subject_name``: the subject to give (a renewal keeps the one it renews); by
    default a CN made of the HRN (``common_name``).

    Authorities (URN type ``authority``) get CA:TRUE; everything else CA:FALSE.
    """
    parsed = parse_urn(urn)
    subject = subject_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name(parsed.hrn))])
    issuer_name = issuer.certificate.subject if issuer is not None else subject
    san: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(str(parsed)),
        x509.UniformResourceIdentifier(f"urn:uuid:{subject_uuid or uuid_module.uuid4()}"),
    ]
    if email:
        san.append(x509.RFC822Name(email))
    start = not_before or (utcnow() - _CLOCK_SKEW)
    issuer_public = signing_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=parsed.is_authority, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),
            critical=False,
        )
    )
    if parsed.is_authority:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
    certificate = builder.sign(signing_key, hashes.SHA256())
    return gid_from_certificate(certificate)


def renew_gid(
    gid: Gid,
    signing_key: rsa.RSAPrivateKey,
    issuer: Gid | None = None,
    lifetime: timedelta = DEFAULT_GID_LIFETIME,
    not_before: datetime | None = None,
) -> Gid:
    """The same GID again with a new validity (from ``not_before``, default now, for ``lifetime``): the same subject,
    URN, UUID, e-mail and public key, signed by signing_key (the issuer's, or for a self-signed root its own). A
    verifier finds the issuer of a certificate by its subject and checks the signature with its key, so what the
    earlier GID of an authority signed verifies against the renewed one, and a renewed leaf stands for the same
    holder (the registry knows users by their key). Raises ValueError for a GID without a URN (not one of ours)."""
    if gid.urn is None:
        raise ValueError(f"{gid.subject_cn!r} carries no URN: not a GID this authority issued, it cannot be renewed")
    public_key = gid.certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError(f"{gid.urn} holds no RSA key: it cannot be renewed")
    return create_gid(
        gid.urn,
        public_key,
        signing_key,
        issuer=issuer,
        email=gid.email,
        lifetime=lifetime,
        not_before=not_before,
        subject_uuid=gid.uuid,
        subject_name=gid.certificate.subject,
    )


def issue_chain(gid: Gid, issuer_chain: GidChain) -> GidChain:
    """gid followed by its issuer's chain: the form a GID file and a TLS client certificate chain take."""
    return (gid, *issuer_chain)
