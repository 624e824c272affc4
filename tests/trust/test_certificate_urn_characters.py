"""A URN taken from a certificate (a GID's subjectAltName) is held to the rule a URN argument is held to
(xrn.check_urn_characters): no control character, line break, blank or invisible character. Such a URN became a
caller's, a credential's owner's or a trusted peer's name in the calendar, e-mails and feeds: an authority (or a
peer's) signature does not make it a name. Each certificate here is real (made with cryptography, its URN written as
the UTF-8 bytes of an IA5String, as a peer could send it) and each refusal comes through the real path: AM API v3
over real TLS on loopback with a PostgreSQL calendar (nothing is written), the speaks-for check, ``trust add-root``
and the trusted-roots directory."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import BadArgs, GeniCode, Reason, TrustError
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.credential import (
    CredentialRequest,
    Privilege,
    _credential_element,
    issue_credential,
    new_document_root,
    sign_document,
)
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, gid_from_der
from sfa_omf.trust.pki import new_private_key, private_key_pem
from sfa_omf.trust.roots import load_trusted_roots, trust_root
from sfa_omf.trust.speaksfor import issue_speaks_for
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.xrn import check_urn_characters, urn_character_problem
from tests.conftest import DemoPki
from tests.postgres import empty_postgres
from tests.tls_harness import Listener, proxy, reactor

SLICE_PRIVILEGES = tuple(Privilege(name, True) for name in ("refresh", "embed", "bind", "control", "info"))


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _subject_alt_name(urn: str) -> x509.UnrecognizedExtension:
    """subjectAltName holding one URI, ``urn`` as its UTF-8 bytes (cryptography's own builder takes ASCII only; its
    reader takes these bytes as they are, so a peer's certificate can carry any character)."""
    uri = urn.encode("utf-8")
    name = b"\x86" + _der_length(len(uri)) + uri  # [6] uniformResourceIdentifier
    return x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30" + _der_length(len(name)) + name)


def certificate_naming(
    urn: str | None,
    common_name: str,
    public_key: rsa.RSAPublicKey,
    signing_key: rsa.RSAPrivateKey,
    issuer: Gid | None,
    ca: bool = False,
) -> Gid:
    """A real GID for ``urn`` (any text; None: no subjectAltName, SFA's old form whose CN is its HRN), CN
    ``common_name``, signed by ``signing_key`` (the issuer's, or its own when ``issuer`` is None: a root); read back
    from its DER bytes as every caller's certificate is."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = utcnow() - timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if urn is not None:
        builder = builder.add_extension(_subject_alt_name(urn), critical=False)
    certificate = builder.sign(signing_key, hashes.SHA256())
    return gid_from_der(certificate.public_bytes(serialization.Encoding.DER))


def issued_by_testbed(
    pki: DemoPki, urn: str | None, common_name: str, key: rsa.RSAPrivateKey | None = None
) -> GidChain:
    """A certificate the demo authority (trusted) signed for ``urn``, with ``key``'s public half (a new key's)."""
    public_key = (key or new_private_key()).public_key()
    gid = certificate_naming(urn, common_name, public_key, pki.authority.key, pki.authority.chain[0])
    return (gid, *pki.authority.chain)


def slice_credential(pki: DemoPki, owner: GidChain, target: GidChain) -> str:
    """The demo authority's credential for ``owner`` over ``target``, written as it reads the certificates."""
    request = CredentialRequest(owner, target, utcnow() + timedelta(days=1), SLICE_PRIVILEGES)
    return issue_credential(request, pki.authority.key, pki.authority.chain)


def credential_naming(pki: DemoPki, owner: GidChain, target: GidChain, owner_urn: str, target_urn: str) -> str:
    """slice_credential with these <owner_urn> and <target_urn> texts (its GIDs' URNs otherwise), signed by the
    demo authority: what an authority that writes them apart from its certificates issues."""
    request = CredentialRequest(owner, target, utcnow() + timedelta(days=1), SLICE_PRIVILEGES)
    element = _credential_element(request, "ref0")
    for tag, text in (("owner_urn", owner_urn), ("target_urn", target_urn)):
        found = element.find(tag)
        assert found is not None
        found.text = text
    root = new_document_root()
    root.append(element)
    return sign_document(root, "ref0", pki.authority.key, pki.authority.chain)


def assert_names_certificate_and_character(message: str, common_name: str, code_point: str) -> None:
    assert f"CN={common_name}" in message and code_point in message, message
    assert "\n" not in message and "\u202e" not in message and "\x07" not in message, "shown escaped, never as is"


# ---------------------------------------------------------------------------------------------------------------
# Over the AM API, on real TLS, with a PostgreSQL calendar


@dataclass
class Am:
    url: str
    directory: Path
    aggregate: Aggregate

    def client(self, chain: GidChain, key: rsa.RSAPrivateKey, name: str) -> Any:
        """An XML-RPC client presenting ``chain`` (leaf first) with ``key`` at the TLS handshake."""
        chain_path, key_path = self.directory / f"{name}.gid", self.directory / f"{name}.pkey"
        chain_path.write_text(chain_pem(chain))
        key_path.write_bytes(private_key_pem(key))
        return proxy(self.url, str(chain_path), str(key_path))

    def leases(self) -> list[Any]:
        return list(self.aggregate.bookings.leases(active_only=False))


@pytest.fixture
def am(listener: Listener, pki: DemoPki, tmp_path: Path) -> Iterator[Am]:
    database = Database(empty_postgres())
    database.upgrade()
    verifier = CredentialVerifier(load_trusted_roots(str(pki.directory / "trusted_roots")), VerdictCache())
    aggregate = Aggregate(AggregateSettings(authority_hrn="testbed"), database, verifier)
    aggregate.inventory.add_node(NodeSpec("urn:publicid:IDN+testbed+node+node1", "node1", hardware_type="icarus"))
    site = make_site({}, XmlRpcResource(ApiV3(aggregate), listener.pool(4), reactor, 1024 * 1024), 1024 * 1024, 60)
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    yield Am(f"https://127.0.0.1:{listener.listen(site, tls)}/", tmp_path, aggregate)
    database.engine.dispose()


def request_rspec() -> str:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l1" valid_from="{format_time(start)}" '
        f'valid_until="{format_time(start + timedelta(hours=1))}"/>'
        '<node client_id="n" component_id="urn:publicid:IDN+testbed+node+node1" exclusive="true">'
        '<ol:lease_ref id_ref="l1"/></node></rspec>'
    )


def allocate(client: Any, pki: DemoPki, credential: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    wrapped = {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": credential}
    answer: dict[str, Any] = client.Allocate(pki.slice_urn, [wrapped], request_rspec(), options or {})
    return answer


def test_a_caller_whose_certificate_urn_holds_a_line_break_is_refused_and_nothing_booked(am: Am, pki: DemoPki) -> None:
    """The caller's own certificate (issued by the trusted authority, with a credential for the slice issued to
    it): its URN would have become the lease's owner in the calendar, a header in the e-mails about it."""
    key = new_private_key()
    caller = issued_by_testbed(pki, "urn:publicid:IDN+testbed+user+mallory\nBcc: all@example.org", "mallory", key)
    credential = slice_credential(pki, caller, pki.slice_chain)

    answer = allocate(am.client(caller, key, "mallory"), pki, credential)

    assert answer["code"]["geni_code"] == GeniCode.FORBIDDEN, answer  # CALLER_UNTRUSTED, as any bad caller chain
    assert_names_certificate_and_character(answer["output"], "mallory", "U+000A")
    assert "character 38 of the URN is a line feed" in answer["output"], answer["output"]
    assert am.leases() == []


def test_a_caller_whose_certificate_urn_holds_a_bell_is_refused_with_any_credential(am: Am, pki: DemoPki) -> None:
    """alice's own credential, sent under a certificate of her name with a bell in it: the caller is refused as
    untrusted, naming the character (not a credential issued to someone else)."""
    alice = pki.users["alice"]
    key = new_private_key()
    caller = issued_by_testbed(pki, "urn:publicid:IDN+testbed+user+al\x07ice", "bell", key)

    answer = allocate(am.client(caller, key, "bell"), pki, alice.slice_cred)

    assert answer["code"]["geni_code"] == GeniCode.FORBIDDEN, answer
    assert_names_certificate_and_character(answer["output"], "bell", "U+0007")
    assert am.leases() == []


@pytest.mark.parametrize(
    ("urn", "code_point"),
    [
        ("urn:publicid:IDN+testbed+user+al\u202eice", "U+202E"),  # shows as "alecі" reversed: another user
        ("urn:publicid:IDN+testbed+user+alice ", "is a space"),
        ("urn:publicid:IDN+testbed+user+al\tice", "U+0009"),  # (XML holds no U+0007 for the <owner_urn> text)
    ],
    ids=["U+202E", "space", "tab"],
)
def test_a_credential_whose_owner_certificate_urn_holds_an_unfit_character_is_refused_and_nothing_booked(
    am: Am, pki: DemoPki, urn: str, code_point: str
) -> None:
    """alice calls with a credential whose owner GID holds her key under a URN that displays as hers (or is hers
    with a bell or a trailing space): the owner is hers by the key, and the URN was the lease's owner."""
    alice = pki.users["alice"]
    owner = issued_by_testbed(pki, urn, "look-alike", alice.key)
    credential = slice_credential(pki, owner, pki.slice_chain)

    answer = allocate(am.client(alice.chain, alice.key, "alice"), pki, credential)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED, answer  # INVALID_CHAIN
    assert_names_certificate_and_character(answer["output"], "look-alike", code_point)
    assert am.leases() == []


def test_a_credential_whose_target_certificate_urn_holds_a_control_character_is_refused_as_an_invalid_certificate(
    am: Am, pki: DemoPki
) -> None:
    """The target's GID is read as the owner's is: the refusal names it, not a mismatch with the slice named."""
    alice = pki.users["alice"]
    target = issued_by_testbed(pki, "urn:publicid:IDN+testbed+slice+de\x85mo", "bell-slice")  # a C1 control
    credential = slice_credential(pki, alice.chain, target)

    answer = allocate(am.client(alice.chain, alice.key, "alice"), pki, credential)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED, answer
    assert_names_certificate_and_character(answer["output"], "bell-slice", "U+0085")
    assert am.leases() == []


def test_a_speaks_for_credential_signed_under_an_unfit_urn_is_refused(am: Am, pki: DemoPki) -> None:
    """alice's tool speaks for "bob" on the word of a certificate whose URN is bob's with a zero-width space (it
    displays as bob's): refused as an invalid certificate, not taken as bob, nothing booked."""
    alice = pki.users["alice"]
    key = new_private_key()
    signer = issued_by_testbed(pki, "urn:publicid:IDN+testbed+user+bob\u200b", "not-bob", key)
    statement = issue_speaks_for(key, signer, alice.chain[0], utcnow() + timedelta(hours=1))
    credential = slice_credential(pki, signer, pki.slice_chain)
    options = {"geni_speaking_for": "urn:publicid:IDN+testbed+user+bob"}
    wrapped = [
        {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": credential},
        {"geni_type": "geni_abac", "geni_version": "1", "geni_value": statement},
    ]

    client = am.client(alice.chain, alice.key, "alice")
    answer = client.Allocate(pki.slice_urn, wrapped, request_rspec(), options)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED, answer
    assert_names_certificate_and_character(answer["output"], "not-bob", "U+200B")
    assert am.leases() == []


def test_a_credential_signed_by_an_authority_whose_urn_holds_a_blank_is_refused(am: Am, pki: DemoPki) -> None:
    """The signer's chain: the trusted authority made a second certificate of its own name (an
    authority over the slice), its URN ending in a no-break space."""
    alice = pki.users["alice"]
    key = new_private_key()
    sub = certificate_naming(
        "urn:publicid:IDN+testbed+authority+sa\u00a0",
        "sub-authority",
        key.public_key(),
        pki.authority.key,
        pki.authority.chain[0],
        ca=True,
    )
    signer_chain = (sub, *pki.authority.chain)
    request = CredentialRequest(alice.chain, pki.slice_chain, utcnow() + timedelta(days=1), SLICE_PRIVILEGES)
    credential = issue_credential(request, key, signer_chain)

    answer = allocate(am.client(alice.chain, alice.key, "alice"), pki, credential)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED, answer
    assert_names_certificate_and_character(answer["output"], "sub-authority", "U+00A0")
    assert am.leases() == []


@pytest.mark.parametrize(
    "subject_alt_name",
    [None, "\u202eurn:publicid:IDN+testbed+user+alice"],  # none, or one that is no URN: the CN is the name
    ids=["no-urn", "no-urn-but-a-reversed-one"],
)
def test_a_credential_whose_owner_certificate_has_no_urn_and_an_unfit_cn_is_refused_and_nothing_booked(
    am: Am, pki: DemoPki, subject_alt_name: str | None
) -> None:
    """SFA's old form: a GID with no URN, its HRN in its CN. The trusted authority signed one for alice's key whose
    CN is "testbed.al\u202eice" (it shows as another user), and the credential names the owner by that URN: it was
    booked with the lease's owner holding U+202E."""
    alice = pki.users["alice"]
    owner = issued_by_testbed(pki, subject_alt_name, "testbed.al\u202eice", alice.key)
    assert owner[0].urn is None
    credential = credential_naming(
        pki, owner, pki.slice_chain, "urn:publicid:IDN+testbed+user+al\u202eice", pki.slice_urn
    )

    answer = allocate(am.client(alice.chain, alice.key, "alice"), pki, credential)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED, answer  # INVALID_CHAIN
    assert_names_certificate_and_character(answer["output"], "testbed.al\\u202eice", "U+202E")
    assert "character 11 of the CN is RIGHT-TO-LEFT OVERRIDE" in answer["output"], answer["output"]
    assert am.leases() == []


@pytest.mark.parametrize("role", ["owner", "target"])
def test_a_credential_whose_owner_or_target_urn_text_holds_an_unfit_character_is_refused_as_malformed(
    am: Am, pki: DemoPki, role: str
) -> None:
    """The credential's own <owner_urn> or <target_urn> text, beside a GID of no URN whose CN is a plain HRN: the
    text's HRN matches the CN (the type is not part of it), so the text was taken as the owner's name (stored as
    the lease's owner) or the target's (shown as it is in the refusal). Refused as a malformed credential, as an
    owner_urn that does not parse is."""
    alice = pki.users["alice"]
    if role == "owner":
        owner = issued_by_testbed(pki, None, "testbed.alice", alice.key)
        credential = credential_naming(
            pki, owner, pki.slice_chain, "urn:publicid:IDN+testbed+us\u202eer+alice", pki.slice_urn
        )
    else:
        target = issued_by_testbed(pki, None, "testbed.demo")
        credential = credential_naming(
            pki, alice.chain, target, alice.chain[0].urn or "", "urn:publicid:IDN+testbed+sl\u202eice+demo"
        )

    answer = allocate(am.client(alice.chain, alice.key, "alice"), pki, credential)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_INVALID, answer  # MALFORMED
    assert f"{role}_urn 'urn:publicid:IDN+testbed+" in answer["output"], answer["output"]
    assert "is RIGHT-TO-LEFT OVERRIDE (U+202E)" in answer["output"], answer["output"]
    assert "\u202e" not in answer["output"], "shown escaped, never as is"
    assert am.leases() == []


# ---------------------------------------------------------------------------------------------------------------
# A peer authority's root


def peer_root(urn: str) -> Gid:
    key = new_private_key()
    return certificate_naming(urn, "peer", key.public_key(), key, None, ca=True)


@pytest.mark.parametrize(
    ("urn", "code_point"),
    [("urn:publicid:IDN+pe\u202eer+authority+sa", "U+202E"), ("urn:publicid:IDN+peer +authority+sa", "is a space")],
    ids=["U+202E", "space"],
)
def test_trust_add_root_refuses_a_peer_root_whose_urn_holds_an_unfit_character(
    tmp_path: Path, urn: str, code_point: str
) -> None:
    directory = tmp_path / "trusted_roots"
    directory.mkdir()
    with pytest.raises(TrustError) as refused:
        trust_root(str(directory), peer_root(urn).pem().encode("ascii"), utcnow())
    assert refused.value.reason is Reason.INVALID_CHAIN
    assert_names_certificate_and_character(refused.value.message, "peer", code_point)
    assert list(directory.iterdir()) == [], "nothing written"


def test_a_root_in_trusted_roots_whose_name_is_refused_is_not_trusted_and_the_log_says_which(
    pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropped in by hand (or before this rule): that root is not trusted, the others are, so the site still starts;
    the warning names the file and what to do with it. So is a root without a URN whose CN (its name then) has a
    blank (a plain CA certificate left there)."""
    directory = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", directory)
    (directory / "peer.gid").write_text(peer_root("urn:publicid:IDN+pe\u202eer+authority+sa").pem())
    caplog.set_level(logging.WARNING, logger="sfa_omf.trust")

    roots = load_trusted_roots(str(directory))

    assert [anchor.urn for anchor in roots.anchors] == [pki.authority.chain[-1].urn]
    assert str(directory / "peer.gid") in caplog.text and "U+202E" in caplog.text
    assert "move it out of trusted_roots/ (or ask its authority for one without it)" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# One rule for arguments and certificates


@pytest.mark.parametrize("character", ["\x07", "\n", "\u202e", " ", "\u3000", "\u034f"], ids=ascii)
def test_arguments_and_certificates_are_refused_for_the_same_characters(character: str) -> None:
    urn = f"urn:publicid:IDN+testbed+user+al{character}ice"
    problem = urn_character_problem(urn)
    assert problem is not None and problem.startswith("character 33 of the URN is ")
    with pytest.raises(BadArgs) as argument:
        check_urn_characters(urn, "argument 1 (user_urn)")
    assert argument.value.message.startswith(f"argument 1 (user_urn): {problem}: ")
    key = new_private_key()
    with pytest.raises(TrustError) as certificate:
        _ = certificate_naming(urn, "x", key.public_key(), key, None).hrn
    assert problem in certificate.value.message
    # No URN: the CN is the certificate's HRN, held to the same rule.
    with pytest.raises(TrustError) as certificate:
        _ = certificate_naming(None, f"testbed.al{character}ice", key.public_key(), key, None).hrn
    assert "character 11 of the CN is " in certificate.value.message, certificate.value.message
    assert urn_character_problem("urn:publicid:IDN+testbed+user+d\u00e9mo") is None
    assert certificate_naming(None, "testbed.d\u00e9mo", key.public_key(), key, None).hrn == "testbed.d\u00e9mo"


def test_the_call_log_line_shows_a_callers_urn_escaped(am: Am, pki: DemoPki, caplog: pytest.LogCaptureFixture) -> None:
    """GetVersion needs no trust, so its log line is written for any caller: a line break in the URN of the caller's
    certificate is logged escaped, on the one line, never as a second (forged) line."""
    key = new_private_key()
    forged = "urn:publicid:IDN+testbed+user+x\nINFO sfa_omf.am Delete caller=urn:publicid:IDN+testbed+user+bob"
    caller = issued_by_testbed(pki, forged, "x", key)
    caplog.set_level(logging.INFO, logger="sfa_omf")

    am.client(caller, key, "x").GetVersion()

    (line,) = [record.getMessage() for record in caplog.records if record.getMessage().startswith("GetVersion caller=")]
    assert "\n" not in line and repr(forged)[:60] in line
