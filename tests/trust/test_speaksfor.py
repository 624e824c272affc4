"""Speaks-for: a tool calls for a user with the user's signed geni_abac statement; every way it can be wrong."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.errors import GeniError, Reason, TrustError
from sfa_omf.times import utcnow
from sfa_omf.trust.speaksfor import issue_speaks_for, key_id, verify_speaks_for
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki


def statement(pki: DemoPki, tool: str = "bob", hours: float = 1) -> str:
    alice = pki.users["alice"]
    return issue_speaks_for(alice.key, alice.chain, pki.users[tool].chain[0], utcnow() + timedelta(hours=hours))


def test_the_tool_speaks_for_the_user(pki: DemoPki) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    chain = verify_speaks_for(bob.chain, [statement(pki)], alice.chain[0].urn or "", pki.roots, utcnow())
    assert chain[0].urn == alice.chain[0].urn
    assert (
        key_id(alice.chain[0])
        == alice.chain[0]
        .certificate.extensions.get_extension_for_oid(
            __import__("cryptography").x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER
        )
        .value.digest.hex()
    )


@pytest.mark.parametrize(
    ("caller", "document_of", "user", "reason"),
    [
        ("carol", lambda pki: statement(pki), "alice", Reason.OWNER_MISMATCH),  # another tool uses bob's statement
        ("bob", lambda pki: statement(pki), "carol", Reason.OWNER_MISMATCH),  # alice's statement, carol named
        ("bob", lambda pki: statement(pki, hours=-1), "alice", Reason.CREDENTIAL_EXPIRED),
        ("bob", lambda pki: statement(pki).replace("speaks_for_", "speaks_as_"), "alice", Reason.SIGNATURE),
        ("bob", lambda pki: "<!DOCTYPE x [<!ENTITY a 'b'>]><x/>", "alice", Reason.HOSTILE_XML),
        ("bob", lambda pki: pki.users["alice"].slice_cred, "alice", Reason.MALFORMED),
    ],
)
def test_refusals(pki: DemoPki, caller: str, document_of: object, user: str, reason: Reason) -> None:
    with pytest.raises(TrustError) as refusal:
        verify_speaks_for(
            pki.users[caller].chain,
            [document_of(pki)],  # type: ignore[operator]
            pki.users[user].chain[0].urn or "",
            pki.roots,
            utcnow(),
        )
    assert refusal.value.reason == reason and refusal.value.message


def test_no_statement_at_all(pki: DemoPki) -> None:
    with pytest.raises(TrustError) as refusal:
        verify_speaks_for(pki.users["bob"].chain, [], "urn:publicid:IDN+testbed+user+alice", pki.roots, utcnow())
    assert refusal.value.reason == Reason.NO_CREDENTIAL


def test_a_portal_lists_resources_and_reads_status_for_alice(pki: DemoPki, tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    aggregate = Aggregate(AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots))
    alice, bob = pki.users["alice"], pki.users["bob"]
    credentials = [
        {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": alice.slice_cred},
        {"geni_type": "geni_abac", "geni_version": "1", "geni_value": statement(pki)},
    ]
    options = {"geni_speaking_for": alice.chain[0].urn}
    verified = aggregate.authorize("Status", bob.chain, credentials, pki.slice_urn, options)
    assert verified.owner_urn == alice.chain[0].urn
    with pytest.raises(GeniError) as refusal:
        aggregate.authorize("Status", bob.chain, credentials, pki.slice_urn, {})
    assert refusal.value.reason == Reason.OWNER_MISMATCH
    assert aggregate.get_version()["geni_handles_speaksfor"] is True
