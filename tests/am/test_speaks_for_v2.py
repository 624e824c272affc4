"""Speaks-for on AM API v2: v2 passes credentials as bare XML strings, so a speaks-for credential comes as one too; it
is told apart by its <credential><type>abac</type> (the v2 GetVersion advertises geni_handles_speaksfor). Served over
TLS at /am2, a tool (bob) calling for a user (alice) with her slice credential and her speaks-for statement."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sfa_omf.am.credentials import split_credentials
from sfa_omf.times import utcnow
from sfa_omf.trust.speaksfor import issue_speaks_for
from tests.am.test_api_v2_tls import Am2, am2
from tests.am.test_api_v3_tls import ok, ol_request, slot
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key

__all__ = ["am2"]  # the v2-and-v3 server fixture, used by the tests below


def bob_as_tool(am2: Am2, pki: DemoPki) -> Any:
    sfi = pki.users["bob"].sfi_dir
    return am2.client(sfi / "testbed.bob.user.gid", sfi / "testbed.bob.pkey")


def alices_statement_for_bob(pki: DemoPki) -> str:
    alice, bob = pki.users["alice"], pki.users["bob"]
    return issue_speaks_for(alice.key, alice.chain, bob.chain[0], utcnow() + timedelta(hours=1))


def test_a_tool_speaks_for_a_user_with_bare_string_credentials(am2: Am2, pki: DemoPki) -> None:
    """The hunt's case: CreateSliver and SliverStatus with [slice credential, speaks-for statement] as strings and
    geni_speaking_for; the booking is alice's. (Both used to be refused 3: "carries no geni_abac speaks-for
    credential", the statement being read as a privilege credential.)"""
    alice = pki.users["alice"]
    tool = bob_as_tool(am2, pki)
    assert ok(tool.GetVersion()).get("geni_handles_speaksfor")
    credentials = [alice.slice_cred, alices_statement_for_bob(pki)]  # v2: bare XML strings
    options = {"geni_speaking_for": alice.chain[0].urn}

    manifest = ok(
        tool.CreateSliver(
            pki.slice_urn,
            credentials,
            ol_request(("node1",), slot(2)),
            [{"urn": alice.chain[0].urn, "keys": [ssh_key("alice@laptop")]}],
            options,
        )
    )
    status = ok(tool.SliverStatus(pki.slice_urn, credentials, options))

    assert 'type="manifest"' in manifest
    assert status["geni_urn"] == pki.slice_urn and len(status["geni_resources"]) == 1
    (lease,) = am2.aggregate.bookings.leases()
    assert lease.owner_urn == alice.chain[0].urn, "booked for the user the tool speaks for"


def test_only_a_credential_of_type_abac_is_taken_for_a_speaks_for_one(pki: DemoPki) -> None:
    """A privilege credential stays one; a string that mentions abac but is not a well-formed abac credential (here
    with a DOCTYPE, which the hardened parser refuses) is left with the privilege ones, to be refused there."""
    statement = alices_statement_for_bob(pki)
    hostile = '<!DOCTYPE x [<!ENTITY e "abac">]><signed-credential><credential><type>&e;</type></credential>'
    hostile += "</signed-credential>"

    split = split_credentials([pki.users["alice"].slice_cred, statement, hostile])

    assert split.privilege == (pki.users["alice"].slice_cred, hostile)
    assert split.speaks_for == (statement,)
