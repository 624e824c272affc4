"""How a credential names its owner, and what ``credential delegate`` refuses to write.

* ``<owner_urn>`` written in another case (``URN:PUBLICID:IDN+fed+USER+dave``) is the same user: the verified
  credential names them in the canonical form, the one their logins and leases are kept under.
* An owner GID without a URN (SFA's old form) beside an empty ``<owner_urn>`` names no one: the credential still
  verifies (docs/trust.md), but no use of it is authorized (CREDENTIAL_MISMATCH), so nothing is booked under an
  owner of no name.
* ``sfa-omf credential delegate --expires`` a time not after now is refused with exit code 2 and nothing written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.errors import REASON_CODES, BadArgs, GeniCode, Reason, TrustError
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.credential import delegate_credential
from sfa_omf.trust.roots import TrustedRoots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki
from tests.trust.test_trust_hunt_fixes import Authority


@pytest.fixture(scope="module")
def fed() -> Authority:
    return Authority.create("fed")


def test_an_owner_urn_in_another_case_is_read_in_the_canonical_form(fed: Authority) -> None:
    _, dave = fed.issue("user", "dave")
    _, exp = fed.issue("slice", "exp")
    verifier = CredentialVerifier(TrustedRoots((fed.gid,)), VerdictCache())
    shouted = fed.credential(dave, exp, owner_urn="URN:PUBLICID:IDN+fed+USER+dave")

    verified = verifier.verify(shouted, utcnow())

    assert verified.owner_urn == "urn:publicid:IDN+fed+user+dave" == dave[0].urn


def test_a_credential_naming_no_owner_is_refused_before_any_use(fed: Authority) -> None:
    _, dave = fed.issue_urnless("fed.dave")
    _, exp = fed.issue("slice", "exp")
    verifier = CredentialVerifier(TrustedRoots((fed.gid,)), VerdictCache())
    nameless = fed.credential(dave, exp, owner_urn="")
    assert verifier.verify(nameless, utcnow()).owner_urn == ""  # it verifies: the old form is read

    with pytest.raises(TrustError) as refused:
        verifier.check_call(dave, [nameless], exp[0].urn, "sliverstatus", utcnow())

    assert refused.value.reason == Reason.OWNER_MISMATCH
    assert REASON_CODES[refused.value.reason] == GeniCode.CREDENTIAL_MISMATCH
    assert "names no owner" in refused.value.message and "URN" in refused.value.message
    # Named by URN beside the same URN-less GID (docs/trust.md), the credential is of use.
    named = fed.credential(dave, exp, owner_urn="urn:publicid:IDN+fed+user+dave")
    assert verifier.check_call(dave, [named], exp[0].urn, "sliverstatus", utcnow()).owner_urn.endswith("+user+dave")


def test_delegating_with_an_expiry_in_the_past_is_refused(pki: DemoPki) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    with pytest.raises(BadArgs) as refused:
        delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, expires=utcnow().replace(year=2020))
    assert "is not after now" in refused.value.message


def test_credential_delegate_with_a_past_expiry_exits_2_and_writes_nothing(
    pki: DemoPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    written = tmp_path / "bob.cred"
    past = format_time(utcnow().replace(year=2020))

    code = main(
        [
            "credential",
            "delegate",
            str(alice.sfi_dir / "testbed.alice-testbed.demo.slice.cred"),
            "--key",
            str(alice.sfi_dir / "testbed.alice.pkey"),
            "--gid",
            str(alice.sfi_dir / "testbed.alice.user.gid"),
            "--to",
            str(bob.sfi_dir / "testbed.bob.user.gid"),
            "--expires",
            past,
            "-o",
            str(written),
        ]
    )

    assert code == 2, code  # BadArgs: the command line asked for something that cannot be done
    assert f"the expiry {past} is not after now" in capsys.readouterr().err
    assert not written.exists()
