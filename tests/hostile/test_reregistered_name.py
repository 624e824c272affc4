"""A name removed from the local registry and registered again for someone else, over real TLS (AM API v3 at /, the
SFA Registry API beside it): the removed holder's certificate (never revoked, valid for years) must not act with the
new holder's credentials, nor the new holder's key with the removed holder's credentials (am/caller_keys.py).

The removal and the new registration go through the registry's own API, as an operator does them (bob holds the
authority's credential here); the credentials are the authority's, as the registry's GetCredential gives them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.errors import GeniCode
from sfa_omf.registry.records import Records
from sfa_omf.trust.gid import load_gid_chain, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, new_private_key, private_key_pem
from tests.hostile.harness import AUTHORITY, Env, World, cred, judge, nothing_crashed, user_urn
from tests.tls_harness import proxy

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

ALICE_HRN = f"{AUTHORITY}.alice"


def test_the_name_s_earlier_and_new_holders_cannot_use_each_other_s_credentials(world: World, tmp_path: Path) -> None:
    # The earlier holder keeps her certificate and key (the registry's Remove deletes her sfi.py folder here).
    old_files = tuple(shutil.copy(path, tmp_path / f"old-{Path(path).name}") for path in world.tls_files("alice"))
    old_slice_cred = world.creds["alice_slice"]
    assert world.client("v3").Status([world.slice], world.slice_creds, {})["code"]["geni_code"] == 0  # the control

    # An operator (bob, with the authority's credential) removes alice and registers the name for someone else.
    bob_chain = load_gid_chain_file(world.tls_files("bob")[0])
    operator = world.authority.credential(bob_chain, world.authority.chain)
    registry = world.client("registry", "bob")
    assert registry.Remove(ALICE_HRN, [operator], "user") == 1
    new_key = new_private_key()
    request_gid = create_gid(user_urn("alice"), new_key.public_key(), new_key)  # carries the newcomer's key
    new_pem = registry.Register({"type": "user", "hrn": ALICE_HRN, "gid": request_gid.pem()}, [operator])
    new_chain = load_gid_chain(new_pem)
    (tmp_path / "new.gid").write_text(new_pem)
    (tmp_path / "new.pkey").write_bytes(private_key_pem(new_key))
    new_files = (str(tmp_path / "new.gid"), str(tmp_path / "new.pkey"))
    new_slice_cred = world.authority.credential(new_chain, world.authority.issued_chain(f"{AUTHORITY}.demo"))
    # As after the verdicts' time to live: a (user, key) accepted before is read from the registry again.
    world.aggregate.registered_keys = RegisteredKeys(Records(world.aggregate.database), AUTHORITY)

    before = world.snapshot(light=True)
    mark = world.logs.mark()
    old_caller = proxy(world.url("v3"), *old_files)
    new_caller = proxy(world.url("v3"), *new_files)
    problems = judge(
        Env(GeniCode.FORBIDDEN, "another key", user_urn("alice")),
        "envelope",
        old_caller.Delete([world.slice], [cred(new_slice_cred)], {}),
    )
    problems += judge(
        Env(GeniCode.CREDENTIAL_MISMATCH, "no longer holds", "new credential"),
        "envelope",
        new_caller.Delete([world.slice], [cred(old_slice_cred)], {}),
    )
    problems += before.differences(world.snapshot(light=True))
    problems += nothing_crashed(world, mark)
    assert not problems, "\n".join(problems)
    answer = new_caller.Status([world.slice], [cred(new_slice_cred)], {})
    assert answer["code"]["geni_code"] == 0, answer
