"""A call carries at most MAX_CREDENTIALS credentials (AM API v2, v3 and the registry, over real TLS).

Each credential of a call is verified in turn (XML parse, signatures, chains) until one allows the call, so the
number a call may carry bounds the work one call can make the server do; the 4 MiB request limit alone allows
hundreds. More is BADARGS naming the limit, and nothing changes.
"""

from __future__ import annotations

import pytest

from sfa_omf.am.credentials import MAX_CREDENTIALS
from tests.hostile.harness import GENI_V3, Case, Env, Fault, World, cred, ids, play

WORDS = (f"{MAX_CREDENTIALS + 1} credentials", f"at most {MAX_CREDENTIALS}")

CASES = [
    Case(
        "cap",
        "v3",
        "Status",
        "too-many-credentials",
        lambda w: ([w.slice], [cred(w.creds["alice_slice"])] * (MAX_CREDENTIALS + 1), {}),
        Env(1, *WORDS),
    ),
    Case(
        "cap",
        "v2",
        "SliverStatus",
        "too-many-credentials",
        lambda w: (w.slice, [w.creds["alice_slice"]] * (MAX_CREDENTIALS + 1), {}),
        Env(1, *WORDS),
    ),
    Case(
        "cap",
        "registry",
        "Resolve",
        "too-many-credentials",
        lambda w: ("testbed.alice", [w.creds["alice_user"]] * (MAX_CREDENTIALS + 1), {}),
        Fault(1, *WORDS),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_a_call_with_too_many_credentials_is_refused(world: World, case: Case) -> None:
    play(world, case)


def test_the_limit_itself_is_accepted(world: World) -> None:
    answer = world.client("v3").Status([world.slice], [cred(world.creds["alice_slice"])] * MAX_CREDENTIALS, {})
    assert answer["code"]["geni_code"] == 0, answer
    describe = world.client("v3").Describe([world.slice], world.slice_creds, {"geni_rspec_version": GENI_V3})
    assert describe["code"]["geni_code"] == 0, describe
