"""A peer authority we trust acts only on what it names, over real TLS (AM API v3 on 127.0.0.1).

The peer ``evil`` is trusted as ``sfa-omf trust add-root`` trusts one (its root written into trusted_roots/, the
server's roots reloaded). SFA's old GIDs carry no URN: their HRN is only in the CN. A credential carries the GID and,
beside it, the <target_urn> text: the naming rules (chains, issuer) are judged on the GID, the call's slice is
compared with the text. So evil signing a credential over one of its own URN-less GIDs (CN ``evil.foo``) whose text
names *our* slice must be refused, and nothing of the slice may change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import CredentialRequest, Privilege, _credential_element, new_document_root, sign_document
from sfa_omf.trust.gid import GidChain, chain_pem, gid_from_certificate
from sfa_omf.trust.pki import new_private_key, private_key_pem
from sfa_omf.trust.roots import add_trusted_root, load_trusted_roots
from tests.hostile.harness import GENI_V3, Env, World, cred, judge, nothing_crashed
from tests.tls_harness import proxy


@dataclass(frozen=True)
class Peer:
    """The trusted peer authority and its user mallory (TLS files to call with, and her chain)."""

    authority: LocalAuthority
    mallory_chain: GidChain
    mallory_files: tuple[str, str]

    def client(self, world: World) -> Any:
        return proxy(world.url("v3"), *self.mallory_files)


def urnless_gid(authority: LocalAuthority, hrn: str) -> GidChain:
    """A GID in SFA's old form, issued by ``authority``: the HRN only in the CN, no URN in subjectAltName."""
    key = new_private_key()
    start = utcnow() - timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hrn)]))
        .issuer_name(authority.chain[0].certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(authority.key, hashes.SHA256())
    )
    return (gid_from_certificate(certificate), *authority.chain)


def credential_naming(signer: LocalAuthority, owner: GidChain, target: GidChain, target_urn: str) -> str:
    """A credential over ``target`` whose <target_urn> says ``target_urn``, signed by the authority ``signer``."""
    request = CredentialRequest(
        owner_chain=owner,
        target_chain=target,
        expires=utcnow() + timedelta(days=1),
        privileges=(Privilege("control", False), Privilege("info", False)),
    )
    root = new_document_root()
    element = _credential_element(request, "ref0")
    written = element.find("target_urn")
    assert written is not None
    written.text = target_urn
    root.append(element)
    return sign_document(root, "ref0", signer.key, signer.chain)


@pytest.fixture(scope="module")
def peer(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    directory: Path = tmp_path_factory.mktemp("peer")
    evil = LocalAuthority.create(str(directory / "evil"), "evil")
    roots_dir = world.aggregate.verifier.roots.source
    _, added = add_trusted_root(roots_dir, evil.chain[0].pem().encode("ascii"), utcnow())
    assert added
    world.aggregate.verifier.roots = load_trusted_roots(roots_dir)  # what the server's watcher does on its next look
    chain, key = evil.issue_gid("evil.mallory", "user")
    assert key is not None
    (directory / "mallory.gid").write_text(chain_pem(chain))
    (directory / "mallory.pkey").write_bytes(private_key_pem(key))
    try:
        yield Peer(evil, chain, (str(directory / "mallory.gid"), str(directory / "mallory.pkey")))
    finally:
        os.remove(os.path.join(roots_dir, "evil.gid"))
        world.aggregate.verifier.roots = load_trusted_roots(roots_dir)


def test_the_peer_is_trusted_for_its_own_users(world: World, peer: Peer) -> None:
    """The control: mallory's own credential from evil works, so the refusals below are about what they name."""
    own = peer.authority.credential(peer.mallory_chain, peer.mallory_chain)
    answer = peer.client(world).ListResources([cred(own)], {"geni_rspec_version": GENI_V3})
    assert answer["code"]["geni_code"] == 0, answer


@pytest.mark.parametrize("method", ["Status", "Delete"])
def test_a_peer_cannot_name_our_slice_over_its_own_urnless_gid(world: World, peer: Peer, method: str) -> None:
    foo = urnless_gid(peer.authority, "evil.foo")
    forged = credential_naming(peer.authority, peer.mallory_chain, foo, world.slice)
    leases = [(lease.id, lease.state) for lease in world.aggregate.bookings.leases(slice_urn=world.slice)]
    assert leases  # the demo slice holds its provisioned booking
    before = world.snapshot()
    mark = world.logs.mark()
    answer = getattr(peer.client(world), method)([world.slice], [cred(forged)], {})
    problems = judge(Env(20, "target_urn", "evil.foo", "its CN"), "envelope", answer)
    problems += before.differences(world.snapshot())
    problems += nothing_crashed(world, mark)
    if problems:
        world.repair(before)
    assert not problems, "\n".join(problems)
    assert [(lease.id, lease.state) for lease in world.aggregate.bookings.leases(slice_urn=world.slice)] == leases
