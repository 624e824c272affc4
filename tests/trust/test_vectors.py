"""The verifier agrees with every verdict the real SFA trust code and geni-tools' clearinghouse gave
(../shared/vectors/{sfa,gcf}/manifest.json), at the manifests' verification times and at the later times gcf's
manifest lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.errors import REASON_CODES, GeniCode, Reason, TrustError
from sfa_omf.times import parse_time
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import VECTORS

pytestmark = pytest.mark.interop

# The manifests describe reasons in words; these are the reasons (and so GENI codes) we must give for them.
MANIFEST_REASONS = {
    "expired": Reason.CREDENTIAL_EXPIRED,
    "delegation": Reason.DELEGATION,
    "untrusted signer": Reason.UNTRUSTED_CHAIN,
    "untrusted root / signer chain": Reason.UNTRUSTED_CHAIN,
    "issuer": Reason.ISSUER,
    "signature": Reason.SIGNATURE,
    "caller is not the owner": Reason.OWNER_MISMATCH,
    "target mismatch": Reason.TARGET_MISMATCH,
    "insufficient privileges": Reason.INSUFFICIENT_PRIVILEGES,
}


def _manifest(vectors: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((vectors / name / "manifest.json").read_text()))


def _judge(verifier: CredentialVerifier, base: Path, vector: dict[str, Any], at_text: str) -> Reason | None:
    """Verify one vector as the AM would for its caller and target; None when valid, else the reason."""
    xml = (base / vector["file"]).read_bytes()
    caller = load_gid_chain_file(str(base / vector["caller_cert"]))[0]
    operations = vector.get("ops_checked") or ["listnodes"]
    if "privileges" in vector and "createsliver" not in operations and "control" in vector["privileges"]:
        operations = [*operations, "createsliver"]
    try:
        verified = verifier.verify(xml, parse_time(at_text))
        for operation in operations:
            verifier.authorize(verified, caller, vector["target"], operation)
    except TrustError as refusal:
        assert refusal.message, "every refusal carries a message"
        return refusal.reason
    return None


def _cases(name: str) -> list[tuple[str, int]]:
    path = VECTORS / name / "manifest.json"
    if not path.exists():
        return [(name, 0)]
    count = len(json.loads(path.read_text())["vectors"])
    return [(name, index) for index in range(count)]


@pytest.mark.parametrize(("source", "index"), _cases("sfa") + _cases("gcf"))
def test_verdict_matches_manifest(vectors: Path, source: str, index: int) -> None:
    manifest = _manifest(vectors, source)
    vector = manifest["vectors"][index]
    base = vectors / source
    verifier = CredentialVerifier(load_trusted_roots(str(base / "trusted_roots")))
    reason = _judge(verifier, base, vector, manifest["verify_at"])
    if vector["verdict"] == "valid":
        assert reason is None, f"{vector['file']}: {vector['why']}"
    else:
        assert reason == MANIFEST_REASONS[vector["reason"]], f"{vector['file']}: {vector['why']}"


def test_valid_vectors_report_manifest_facts(vectors: Path) -> None:
    """Owner, target, privileges, expiry and delegation depth are read as the real tools wrote them."""
    manifest = _manifest(vectors, "gcf")
    base = vectors / "gcf"
    verifier = CredentialVerifier(load_trusted_roots(str(base / "trusted_roots")))
    checked = 0
    for vector in manifest["vectors"]:
        if vector["verdict"] != "valid":
            continue
        verified = verifier.verify((base / vector["file"]).read_bytes(), parse_time(manifest["verify_at"]))
        assert verified.owner_urn == vector["owner"]
        assert verified.target_urn == vector["object"]
        assert list(verified.privileges) == vector["privileges"]
        assert sorted(verified.delegatable) == sorted(vector["delegatable"])
        assert verified.expires == parse_time(vector["expires"])
        assert verified.depth == vector["delegation_depth"]
        checked += 1
    assert checked == 6


@pytest.mark.parametrize("at_text", ["2029-06-01T00:00:00Z", "2030-12-01T00:00:00Z"])
def test_gcf_time_checks(vectors: Path, at_text: str) -> None:
    """gcf's manifest re-ran its verdicts under faketime; ours, given the same time, must agree."""
    manifest = _manifest(vectors, "gcf")
    base = vectors / "gcf"
    expired_by_2029 = {"creds/bob.s1.redelegatable.cred", "creds/carol.s1.delegated2.cred"}
    cache = VerdictCache()
    # A warm cache from 2028 must not carry a verdict into a time when the credential has expired.
    warm = CredentialVerifier(load_trusted_roots(str(base / "trusted_roots")), cache)
    for vector in manifest["vectors"]:
        if vector["verdict"] == "valid":
            assert _judge(warm, base, vector, manifest["verify_at"]) is None
    for vector in manifest["vectors"]:
        if vector["verdict"] != "valid":
            continue
        reason = _judge(warm, base, vector, at_text)
        if at_text.startswith("2030") or vector["file"] in expired_by_2029:
            assert reason == Reason.CREDENTIAL_EXPIRED, vector["file"]
        else:
            assert reason is None, vector["file"]


def test_reasons_map_to_credential_codes() -> None:
    assert REASON_CODES[Reason.CREDENTIAL_EXPIRED] == GeniCode.CREDENTIAL_EXPIRED
    assert REASON_CODES[Reason.OWNER_MISMATCH] == GeniCode.CREDENTIAL_MISMATCH
    assert REASON_CODES[Reason.UNTRUSTED_CHAIN] == GeniCode.CREDENTIAL_SIGNER_UNTRUSTED
    assert REASON_CODES[Reason.SIGNATURE] == GeniCode.CREDENTIAL_INVALID
    assert REASON_CODES[Reason.INSUFFICIENT_PRIVILEGES] == GeniCode.FORBIDDEN
    assert set(REASON_CODES) == set(Reason), "every reason has exactly one GENI code"


def test_sfa_vector_uses_described_in_manifest(vectors: Path) -> None:
    """The 'why' notes of the SFA manifest: info-only is no licence to allocate; otherslice on myslice is a target
    mismatch; alice presenting the credential she delegated to bob is an owner mismatch; nodelegate cannot be
    delegated."""
    base = vectors / "sfa"
    at = parse_time(_manifest(vectors, "sfa")["verify_at"])
    verifier = CredentialVerifier(load_trusted_roots(str(base / "trusted_roots")))
    alice = load_gid_chain_file(str(base / "gids/onelab.inria.alice.gid"))[0]
    myslice = "urn:publicid:IDN+onelab:inria+slice+myslice"

    def refusal(file: str, operation: str, caller: object = alice) -> Reason | None:
        try:
            verified = verifier.verify((base / file).read_bytes(), at)
            verifier.authorize(verified, caller, myslice, operation)  # type: ignore[arg-type]
        except TrustError as exc:
            return exc.reason
        return None

    assert refusal("creds/alice.myslice.infoonly.cred", "listnodes") is None
    assert refusal("creds/alice.myslice.infoonly.cred", "createsliver") == Reason.INSUFFICIENT_PRIVILEGES
    assert refusal("creds/alice.myslice.infoonly.cred", "deletesliver") == Reason.INSUFFICIENT_PRIVILEGES
    assert refusal("creds/alice.otherslice.slice.cred", "listnodes") == Reason.TARGET_MISMATCH
    assert refusal("creds/bob.myslice.delegated.cred", "createsliver") == Reason.OWNER_MISMATCH
    nodelegate = verifier.verify((base / "creds/alice.myslice.nodelegate.cred").read_bytes(), at)
    assert nodelegate.delegatable == ()
    assert refusal("creds/mallory.myslice.untrusted.cred", "listnodes") == Reason.UNTRUSTED_CHAIN
