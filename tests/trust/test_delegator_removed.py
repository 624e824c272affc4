"""A credential delegated by a user of the authority stops working once the registry no longer holds that user.

The registered-keys rule (am/caller_keys.py) held for the credential's last owner only: alice, removed from the
registry, was refused with her own credentials, but bob went on acting with the slice or authority credential she
had delegated to him. Every delegation level's owner now answers for it: at the aggregate (in process, on both
databases, the registry's records in the aggregate's database as ``sfa-omf serve`` has them) and at the registry
(over TLS).
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.errors import GeniCode
from sfa_omf.registry.records import Records
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.trust.credential import delegate_credential
from sfa_omf.trust.gid import GidChain, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from tests.am.test_registered_caller_keys import aggregate as aggregate  # (fixture) its clock moved by later()
from tests.am.test_registered_caller_keys import later
from tests.conftest import DemoPki
from tests.registry.conftest import Registry
from tests.registry.conftest import registry as registry  # the running registry of tb (a fixture of another folder's)


def status(aggregate: Aggregate, pki: DemoPki, chain: GidChain, credential: str) -> Any:
    """Status of the demo slice through the v3 endpoint (its envelope), as the holder of ``chain``."""
    return ApiV3(aggregate)(CallContext(chain, "127.0.0.1", "/"), "Status", ([pki.slice_urn], [credential], {}))


def test_a_slice_credential_delegated_by_a_removed_user_is_refused(aggregate: Aggregate, pki: DemoPki) -> None:
    alice, bob = pki.users["alice"], pki.users["bob"]
    to_bob = delegate_credential(alice.slice_cred, bob.chain, alice.key, alice.chain, privileges=("info",))
    assert status(aggregate, pki, bob.chain, to_bob)["code"]["geni_code"] == 0  # the control: it works
    assert Records(aggregate.database).remove("testbed.alice")
    later(aggregate)

    answer = status(aggregate, pki, bob.chain, to_bob)

    assert answer["code"]["geni_code"] == GeniCode.CREDENTIAL_MISMATCH, answer
    assert "delegated by urn:publicid:IDN+testbed+user+alice" in answer["output"], answer
    assert "no longer registers" in answer["output"], answer
    # Bob's own credential is his own: not affected.
    assert status(aggregate, pki, bob.chain, bob.slice_cred)["code"]["geni_code"] == 0


def test_an_authority_credential_delegated_by_a_removed_pi_changes_nothing(registry: Registry) -> None:
    """Alice (a PI) delegates her authority credential to bob; removed, her delegation registers no one."""
    directory = registry.directory / "users"
    alice_chain = load_gid_chain_file(str(directory / "alice" / "sfi" / "tb.alice.user.gid"))
    bob_chain = load_gid_chain_file(str(directory / "bob" / "sfi" / "tb.bob.user.gid"))
    alice_key = load_private_key_file(str(directory / "alice" / "sfi" / "tb.alice.pkey"))
    to_bob = delegate_credential(registry.auth_cred, bob_chain, alice_key, alice_chain)
    assert registry.bob.Register({"hrn": "tb.first", "type": "user"}, [to_bob]).startswith("-----BEGIN")  # control
    bob_auth_cred = registry.bob.GetCredential(registry.bob_cred, "tb", "authority")
    assert registry.bob.Remove("tb.alice", [bob_auth_cred], "user") == 1
    before = registry.written()

    refused = registry.fault(registry.bob.Register, {"hrn": "tb.second", "type": "user"}, [to_bob])

    assert refused.faultCode == GeniCode.CREDENTIAL_MISMATCH, refused
    assert "urn:publicid:IDN+tb+user+alice" in refused.faultString and "delegator" in refused.faultString, refused
    assert "no longer registered" in refused.faultString, refused
    assert registry.written() == before, "a refused Register wrote something"
    with pytest.raises(xmlrpc.client.Fault):
        registry.bob.Remove("tb.first", [to_bob], "user")
