"""A user of this aggregate's own authority acts with the key its registry holds for them now (am/caller_keys.py).

The registry removes alice and registers the name again for someone else (another key, the same URN). The removed
holder's GID stays valid for years (GIDs are not revoked): with the trust layer's same-URN rule alone it would work
with every credential the new holder gets, and the new holder's key with the earlier holder's credentials. In
process, on both databases, with the registry's records in the aggregate's database as ``sfa-omf serve`` has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.am.caller_keys import DEFAULT_TTL_S
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniCode
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.trust.gid import GidChain, chain_pem
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.xrn import hrn_to_urn
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

ALICE_HRN = "testbed.alice"


@dataclass
class Clock:
    """The verdict cache's monotonic clock, moved by the test (no sleeping, no timing)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1")) as made:
        Records(made.database).import_authority(pki.authority)  # what sfa-omf serve does at start
        made.registered_keys.monotonic = Clock()
        yield made


def later(aggregate: Aggregate) -> None:
    """Past the time an accepted (user, key) is believed without reading the registry again."""
    clock = aggregate.registered_keys.monotonic
    assert isinstance(clock, Clock)
    clock.now += DEFAULT_TTL_S + 1


def new_alice(pki: DemoPki) -> GidChain:
    """A GID for the name testbed.alice with another key, issued by the same authority (no file written)."""
    gid = create_gid(
        hrn_to_urn(ALICE_HRN, "user"), new_private_key().public_key(), pki.authority.key, issuer=pki.authority.chain[0]
    )
    return (gid, *pki.authority.chain)


def register_again(aggregate: Aggregate, chain: GidChain | None) -> None:
    """The registry removes alice; ``chain``: the name registered again for someone else."""
    records = Records(aggregate.database)
    assert records.remove(ALICE_HRN)
    if chain is not None:
        records.add(Record(ALICE_HRN, "user", hrn_to_urn(ALICE_HRN, "user"), chain_pem(chain)))


def status(aggregate: Aggregate, pki: DemoPki, chain: GidChain, credential: str) -> Any:
    """Status of the demo slice through the v3 endpoint (its envelope), as the holder of ``chain``."""
    return ApiV3(aggregate)(CallContext(chain, "127.0.0.1", "/"), "Status", ([pki.slice_urn], [credential], {}))


def test_the_removed_holder_s_certificate_is_refused_with_the_new_holder_s_credential(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    old = pki.users["alice"]
    assert status(aggregate, pki, old.chain, old.slice_cred)["code"]["geni_code"] == 0  # the control
    new = new_alice(pki)
    register_again(aggregate, new)
    later(aggregate)
    new_credential = pki.authority.credential(new, pki.slice_chain)

    answer = status(aggregate, pki, old.chain, new_credential)

    assert answer["code"]["geni_code"] == GeniCode.FORBIDDEN, answer
    assert "another key" in answer["output"] and "urn:publicid:IDN+testbed+user+alice" in answer["output"], answer
    assert status(aggregate, pki, new, new_credential)["code"]["geni_code"] == 0, "the new holder acts"


def test_the_new_holder_s_key_is_refused_with_the_removed_holder_s_credential(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    old = pki.users["alice"]
    new = new_alice(pki)
    register_again(aggregate, new)

    answer = status(aggregate, pki, new, old.slice_cred)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_MISMATCH, answer
    assert "no longer holds" in answer["output"] and "new credential" in answer["output"], answer


def test_a_removed_user_is_refused(aggregate: Aggregate, pki: DemoPki) -> None:
    old = pki.users["alice"]
    register_again(aggregate, None)

    answer = status(aggregate, pki, old.chain, old.slice_cred)

    assert answer["code"]["geni_code"] == GeniCode.FORBIDDEN, answer
    assert "no longer registered" in answer["output"], answer
    # A refusal is not kept: registered again (with her own GID), she acts at once.
    Records(aggregate.database).add(Record(ALICE_HRN, "user", hrn_to_urn(ALICE_HRN, "user"), chain_pem(old.chain)))
    assert status(aggregate, pki, old.chain, old.slice_cred)["code"]["geni_code"] == 0


def test_other_users_of_the_authority_are_not_affected(aggregate: Aggregate, pki: DemoPki) -> None:
    register_again(aggregate, new_alice(pki))
    bob = pki.users["bob"]
    assert status(aggregate, pki, bob.chain, bob.slice_cred)["code"]["geni_code"] == 0


def test_users_of_other_authorities_and_aggregates_without_a_registry_keep_the_urn_rule(
    aggregate: Aggregate,
) -> None:
    keys = aggregate.registered_keys
    assert not keys.is_local_user("urn:publicid:IDN+other+user+alice")
    assert not keys.is_local_user("urn:publicid:IDN+testbed2+user+alice")
    assert not keys.is_local_user("urn:publicid:IDN+testbed+slice+demo")
    assert keys.is_local_user("urn:publicid:IDN+testbed+user+alice")
    assert keys.is_local_user("urn:publicid:IDN+testbed:sub+user+alice")
    Records(aggregate.database).remove("testbed")  # no registry in this database: the URN rule alone
    assert keys.refusal("urn:publicid:IDN+testbed+user+nobody", "a-key") is None
