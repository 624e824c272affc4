"""Credentials sfa-omf issues and delegates: they verify here, with independent tools (xmlsec1, openssl), and every
rule of use (owner, target, privileges, delegation, expiry) is enforced with its reason."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.errors import BadArgs, GeniCode, Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import delegate_credential, read_credential
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.roots import TrustedRoots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/test.sh installs it (apt-get install {name})")
    return path


def test_issued_credentials_read_back(pki: DemoPki) -> None:
    alice = pki.users["alice"]
    credential = read_credential(alice.slice_cred).credential
    assert credential.owner_urn == "urn:publicid:IDN+testbed+user+alice"
    assert credential.target_urn == pki.slice_urn
    assert credential.privilege_names == ("refresh", "embed", "bind", "control", "info")
    assert all(privilege.can_delegate for privilege in credential.privileges)
    assert credential.depth == 0
    user_credential = read_credential(alice.user_cred).credential
    assert user_credential.privilege_names == ("refresh", "resolve", "info")
    assert not any(privilege.can_delegate for privilege in user_credential.privileges)


def test_issued_credentials_verify(pki: DemoPki) -> None:
    verifier = CredentialVerifier(pki.roots)
    alice = pki.users["alice"]
    verified = verifier.check_call(alice.chain, [alice.slice_cred], pki.slice_urn, "createsliver", utcnow())
    assert verified.owner_urn == alice.chain[0].urn
    assert not verified.delegated


def test_xmlsec1_verifies_what_we_sign(pki: DemoPki, tmp_path: Path) -> None:
    """An independent verifier: Debian's xmlsec1, as SFA and gcf run it."""
    xmlsec1 = _tool("xmlsec1")
    alice, bob = pki.users["alice"], pki.users["bob"]
    delegated = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, privileges=("info",))
    root = pki.directory / "trusted_roots" / "testbed.gid"
    files = {"slice": alice.slice_cred, "user": alice.user_cred, "delegated": delegated}
    for name, xml in files.items():
        path = tmp_path / f"{name}.cred"
        path.write_text(xml)
        ids = ["Sig_ref0", "Sig_ref1"] if name == "delegated" else ["Sig_ref0"]
        for node_id in ids:
            result = subprocess.run(
                [xmlsec1, "--verify", "--trusted-pem", str(root), "--node-id", node_id, str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, f"{name} {node_id}: {result.stderr}"
    tampered = tmp_path / "tampered.cred"
    tampered.write_text(alice.slice_cred.replace("<name>info</name>", "<name>authority</name>"))
    result = subprocess.run(
        [xmlsec1, "--verify", "--trusted-pem", str(root), "--node-id", "Sig_ref0", str(tampered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, "xmlsec1 must refuse a credential changed after signing"


def test_openssl_verifies_our_chains(pki: DemoPki, tmp_path: Path) -> None:
    openssl = _tool("openssl")
    root = pki.directory / "trusted_roots" / "testbed.gid"
    for path in [
        pki.users["alice"].sfi_dir / "testbed.alice.user.gid",
        pki.directory / "aggregate" / "am.gid",
        pki.directory / "gids" / "testbed.demo.gid",
    ]:
        leaf = tmp_path / "leaf.pem"
        leaf.write_text(path.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
        result = subprocess.run(
            [openssl, "verify", "-CAfile", str(root), str(leaf)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr
    stranger_key = new_private_key()
    stranger = create_gid("urn:publicid:IDN+testbed+authority+sa", stranger_key.public_key(), stranger_key)
    other_root = tmp_path / "other.pem"
    other_root.write_text(stranger.pem())
    result = subprocess.run(
        [openssl, "verify", "-CAfile", str(other_root), str(pki.users["alice"].sfi_dir / "testbed.alice.user.gid")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_delegation_chain_of_two(pki: DemoPki) -> None:
    alice, bob, carol = pki.users["alice"], pki.users["bob"], pki.users["carol"]
    to_bob = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, can_delegate=True)
    to_carol = delegate_credential(to_bob, carol.chain, bob.key, bob.chain, privileges=("control", "info"))
    verifier = CredentialVerifier(pki.roots)
    now = utcnow()
    verified = verifier.check_call(carol.chain, [to_carol], pki.slice_urn, "deletesliver", now)
    assert verified.depth == 2 and verified.delegated
    assert verified.privileges == ("control", "info")
    assert verified.delegatable == ()
    with pytest.raises(TrustError) as refusal:
        verifier.check_call(bob.chain, [to_carol], pki.slice_urn, "deletesliver", now)
    assert refusal.value.reason == Reason.OWNER_MISMATCH
    assert refusal.value.code == GeniCode.CREDENTIAL_MISMATCH


def test_delegate_refuses_what_a_verifier_would_refuse(pki: DemoPki) -> None:
    alice, bob, carol = pki.users["alice"], pki.users["bob"], pki.users["carol"]
    to_bob = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain)
    with pytest.raises(BadArgs, match="does not allow delegating"):
        delegate_credential(to_bob, carol.chain, bob.key, bob.chain)
    with pytest.raises(BadArgs, match="only the owner"):
        delegate_credential(alice.slice_cred, carol.chain, bob.key, bob.chain)
    with pytest.raises(BadArgs, match="outlive"):
        delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, expires=utcnow() + timedelta(days=400))
    with pytest.raises(BadArgs, match="does not hold"):
        delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, privileges=("authority",))
    with pytest.raises(BadArgs, match="signing key"):
        delegate_credential(alice.slice_cred, bob.chain, bob.key, alice.chain)


def test_shorter_expiry_is_kept(pki: DemoPki) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    soon = utcnow() + timedelta(hours=1)
    delegated = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, expires=soon)
    verifier = CredentialVerifier(pki.roots)
    assert verifier.verify(delegated, utcnow()).expires == soon.replace(microsecond=0)
    with pytest.raises(TrustError) as refusal:
        verifier.verify(delegated, soon + timedelta(minutes=1))
    assert refusal.value.reason == Reason.CREDENTIAL_EXPIRED
    assert refusal.value.code == GeniCode.CREDENTIAL_EXPIRED


def test_rules_of_use(pki: DemoPki) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    verifier = CredentialVerifier(pki.roots)
    now = utcnow()
    cases = [
        (bob.chain, [alice.slice_cred], pki.slice_urn, "createsliver", Reason.OWNER_MISMATCH),
        (
            alice.chain,
            [alice.slice_cred],
            "urn:publicid:IDN+testbed+slice+other",
            "createsliver",
            Reason.TARGET_MISMATCH,
        ),
        (alice.chain, [alice.user_cred], alice.chain[0].urn, "createsliver", Reason.INSUFFICIENT_PRIVILEGES),
        (alice.chain, [], pki.slice_urn, "createsliver", Reason.NO_CREDENTIAL),
        (alice.chain, ["<not a credential"], pki.slice_urn, "createsliver", Reason.MALFORMED),
    ]
    for caller, credentials, target, operation, reason in cases:
        with pytest.raises(TrustError) as refusal:
            verifier.check_call(caller, credentials, target, operation, now)
        assert refusal.value.reason == reason, (reason, refusal.value)
        assert refusal.value.message


def test_slice_owner_may_shutdown_a_user_credential_may_not(pki: DemoPki) -> None:
    alice = pki.users["alice"]
    verifier = CredentialVerifier(pki.roots)
    now = utcnow()
    assert verifier.check_call(alice.chain, [alice.slice_cred], pki.slice_urn, "stopslice", now)
    with pytest.raises(TrustError) as refusal:
        verifier.check_call(alice.chain, [alice.user_cred], pki.slice_urn, "stopslice", now)
    assert refusal.value.reason == Reason.TARGET_MISMATCH


def test_the_best_refusal_is_reported_and_a_good_credential_wins(pki: DemoPki) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    verifier = CredentialVerifier(pki.roots)
    now = utcnow()
    picked = verifier.check_call(
        alice.chain, [bob.slice_cred, alice.user_cred, alice.slice_cred], pki.slice_urn, "createsliver", now
    )
    assert picked.owner_urn == alice.chain[0].urn and picked.target_urn == pki.slice_urn
    info_only = pki.authority.credential(alice.chain, pki.slice_chain, privileges=("info",))
    with pytest.raises(TrustError) as refusal:
        verifier.check_call(alice.chain, [bob.slice_cred, info_only], pki.slice_urn, "createsliver", now)
    assert refusal.value.reason == Reason.INSUFFICIENT_PRIVILEGES
    assert "none of the 2 credentials" in refusal.value.message


def test_authority_credential_covers_slices_under_it(pki: DemoPki) -> None:
    alice = pki.users["alice"]
    operator = pki.authority.credential(alice.chain, pki.authority.chain)
    verifier = CredentialVerifier(pki.roots)
    verified = verifier.check_call(alice.chain, [operator], pki.slice_urn, "stopslice", utcnow())
    assert "authority" in verified.privileges
    with pytest.raises(TrustError) as refusal:
        verifier.check_call(alice.chain, [operator], "urn:publicid:IDN+elsewhere+slice+x", "stopslice", utcnow())
    assert refusal.value.reason == Reason.TARGET_MISMATCH


def test_untrusted_caller_is_forbidden(pki: DemoPki) -> None:
    stranger_key = new_private_key()
    stranger = create_gid("urn:publicid:IDN+testbed+user+alice", stranger_key.public_key(), stranger_key)
    verifier = CredentialVerifier(pki.roots)
    with pytest.raises(TrustError) as refusal:
        verifier.check_call((stranger,), [pki.users["alice"].slice_cred], pki.slice_urn, "createsliver", utcnow())
    assert refusal.value.reason == Reason.CALLER_UNTRUSTED
    assert refusal.value.code == GeniCode.FORBIDDEN


def test_same_urn_from_a_trusted_chain_is_the_owner(pki: DemoPki) -> None:
    """gcf compares URNs: a user whose authority re-issued their GID with a new key keeps using old credentials."""
    alice = pki.users["alice"]
    new_key = new_private_key()
    reissued = create_gid(alice.chain[0].urn or "", new_key.public_key(), pki.authority.key, pki.authority.chain[0])
    verifier = CredentialVerifier(pki.roots)
    assert verifier.check_call(
        (reissued, *pki.authority.chain), [alice.slice_cred], pki.slice_urn, "createsliver", utcnow()
    )


class TestVerdictCache:
    def test_repeated_verification_hits_the_cache(self, pki: DemoPki) -> None:
        cache = VerdictCache()
        verifier = CredentialVerifier(pki.roots, cache)
        alice = pki.users["alice"]
        now = utcnow()
        first = verifier.verify(alice.slice_cred, now)
        second = verifier.verify(alice.slice_cred, now + timedelta(seconds=1))
        assert first == second
        assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)

    def test_another_caller_cannot_reuse_a_verdict(self, pki: DemoPki) -> None:
        verifier = CredentialVerifier(pki.roots, VerdictCache())
        alice, bob = pki.users["alice"], pki.users["bob"]
        now = utcnow()
        verifier.check_call(alice.chain, [alice.slice_cred], pki.slice_urn, "createsliver", now)
        with pytest.raises(TrustError) as refusal:
            verifier.check_call(bob.chain, [alice.slice_cred], pki.slice_urn, "createsliver", now)
        assert refusal.value.reason == Reason.OWNER_MISMATCH

    def test_a_verdict_never_outlives_the_credential(self, pki: DemoPki) -> None:
        cache = VerdictCache()
        verifier = CredentialVerifier(pki.roots, cache)
        alice = pki.users["alice"]
        now = utcnow()
        verified = verifier.verify(alice.slice_cred, now)
        assert verified.valid_until <= verified.expires
        with pytest.raises(TrustError) as refusal:
            verifier.verify(alice.slice_cred, verified.valid_until + timedelta(seconds=1))
        assert refusal.value.reason == Reason.CREDENTIAL_EXPIRED
        assert len(cache) == 0, "the expired entry is dropped"

    def test_a_verdict_is_not_used_before_its_certificates_are_valid(self, pki: DemoPki) -> None:
        cache = VerdictCache()
        verifier = CredentialVerifier(pki.roots, cache)
        alice = pki.users["alice"]
        verified = verifier.verify(alice.slice_cred, utcnow())
        with pytest.raises(TrustError) as refusal:
            verifier.verify(alice.slice_cred, verified.valid_from - timedelta(days=1))
        assert refusal.value.reason == Reason.CERTIFICATE_EXPIRED

    def test_changing_trusted_roots_invalidates(self, pki: DemoPki) -> None:
        cache = VerdictCache()
        alice = pki.users["alice"]
        CredentialVerifier(pki.roots, cache).verify(alice.slice_cred, utcnow())
        stranger_key = new_private_key()
        stranger = create_gid("urn:publicid:IDN+other+authority+sa", stranger_key.public_key(), stranger_key)
        with pytest.raises(TrustError) as refusal:
            CredentialVerifier(TrustedRoots(anchors=(stranger,)), cache).verify(alice.slice_cred, utcnow())
        assert refusal.value.reason == Reason.UNTRUSTED_CHAIN

    def test_the_cache_is_bounded(self, pki: DemoPki) -> None:
        cache = VerdictCache(max_entries=2)
        verifier = CredentialVerifier(pki.roots, cache)
        now = utcnow()
        for user in pki.users.values():
            verifier.verify(user.slice_cred, now)
        assert len(cache) == 2
