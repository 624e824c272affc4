"""Hypothesis over argument types, for every method of AM API v3, v2 and the registry, over real TLS: each argument
is either the valid one or a random XML-RPC value (int, string, bool, double, nil, base64, dateTime, lists and
structs nested a few deep, and strings and keys that matter to these APIs), and the argument count varies too.

Whatever the input: no answer is ever geni_code 5 or fault 5 or an HTTP error, the server logs no crash, and a call
that was refused changed nothing (the calendar's leases, the slices' users and keys, the registry's records and the
authority's issued GIDs). A call that succeeded may change the state (the random values can make a valid call); the
world is then put back for the next example."""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.harness import (
    ALICE_KEY,
    GENI_V3,
    World,
    cred,
    plain_request,
    slice_urn,
    user_urn,
)

EXAMPLES_PER_METHOD = 12

INTERESTING_STRINGS = [
    slice_urn("demo"),
    slice_urn("other"),
    user_urn("alice"),
    "urn:publicid:IDN+testbed+sliver+00000000000000000000000000000000",
    "urn:publicid:IDN+testbed+node+node2",
    "testbed.alice",
    "testbed.demo",
    "testbed",
    "user",
    "slice",
    "+1d",
    "+999999w",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "253402300799",
    "geni_start",
    "geni_stop",
    "geni_update_users",
    ALICE_KEY,
    'command="/bin/sh" ' + ALICE_KEY,
    ALICE_KEY + "\nssh-rsa AAAA evil",
    "<rspec/>",
    plain_request("node2"),
    "",
]
OPTION_KEYS = [
    "geni_users",
    "sfa_users",
    "geni_rspec_version",
    "geni_best_effort",
    "geni_compressed",
    "geni_available",
    "geni_start_time",
    "geni_end_time",
    "geni_extend_alap",
    "geni_slice_urn",
    "list_leases",
    "urn",
    "keys",
    "hrn",
    "type",
    "email",
    "reg-keys",
    "keys",
    "reg-researchers",
    "expires",
    "geni_type",
    "geni_version",
    "geni_value",
    "type",
    "version",
]
text = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cn", "Co")), max_size=24)
strings = st.one_of(text, st.sampled_from(INTERESTING_STRINGS))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
    st.binary(max_size=24).map(xmlrpc.client.Binary),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(xmlrpc.client.DateTime),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(OPTION_KEYS), text), children, max_size=4),
    ),
    max_leaves=10,
)

Valid = Callable[[World], tuple[Any, ...]]


def _slice(w: World) -> list[dict[str, str]]:
    return [cred(w.creds["alice_slice"])]


V3: dict[str, Valid] = {
    "GetVersion": lambda w: (),
    "ListResources": lambda w: (w.user_creds, {"geni_rspec_version": GENI_V3}),
    "Describe": lambda w: ([w.slice], _slice(w), {"geni_rspec_version": GENI_V3}),
    "Allocate": lambda w: (w.slice, _slice(w), w.free_request(), {"geni_users": w.alice_users()}),
    "Provision": lambda w: ([w.slice], _slice(w), {"geni_rspec_version": GENI_V3, "geni_users": w.alice_users()}),
    "Status": lambda w: ([w.slice], _slice(w), {}),
    "Renew": lambda w: ([w.slice], _slice(w), "+1d", {}),
    "Delete": lambda w: ([w.sliver], _slice(w), {}),
    "PerformOperationalAction": lambda w: ([w.slice], _slice(w), "geni_stop", {}),
    "Shutdown": lambda w: (w.slice, _slice(w), {}),
}
V2: dict[str, Valid] = {
    "GetVersion": lambda w: (),
    "ListResources": lambda w: ([w.creds["alice_user"]], {"geni_rspec_version": GENI_V3}),
    "CreateSliver": lambda w: (w.slice, [w.creds["alice_slice"]], w.free_request(), w.alice_users(), {}),
    "SliverStatus": lambda w: (w.slice, [w.creds["alice_slice"]], {}),
    "RenewSliver": lambda w: (w.slice, [w.creds["alice_slice"]], "+1d", {}),
    "DeleteSliver": lambda w: (w.slice, [w.creds["alice_slice"]], {}),
    "Shutdown": lambda w: (w.slice, [w.creds["alice_slice"]], {}),
    "ListSlices": lambda w: ([w.creds["alice_user"]], {}),
    "GetTicket": lambda w: (w.slice, [w.creds["alice_slice"]], w.free_request(), w.alice_users(), {}),
}
REGISTRY: dict[str, Valid] = {
    "GetVersion": lambda w: (),
    "GetSelfCredential": lambda w: (
        (w.directory / "users" / "alice" / "sfi" / "testbed.alice.user.gid").read_text(),
        "testbed.alice",
        "user",
    ),
    "GetCredential": lambda w: (w.creds["alice_user"], "testbed.demo", "slice"),
    "Resolve": lambda w: ("testbed.alice", [w.creds["alice_user"]]),
    "List": lambda w: ("testbed", [w.creds["alice_user"]]),
    "Register": lambda w: ({"hrn": "testbed.hypo", "type": "user", "reg-keys": [ALICE_KEY]}, [w.creds["operator"]]),
    "Update": lambda w: ({"hrn": "testbed.alice", "reg-keys": [ALICE_KEY]}, [w.creds["alice_user"]]),
    "Remove": lambda w: ("testbed.bob", [w.creds["operator"]], "user"),
}
METHODS = [(api, method) for api, table in (("v3", V3), ("v2", V2), ("registry", REGISTRY)) for method in table]
VALID = {"v3": V3, "v2": V2, "registry": REGISTRY}


def arguments(data: st.DataObject, valid: tuple[Any, ...]) -> tuple[Any, ...]:
    """Each valid argument kept or replaced by a random value; sometimes fewer or more arguments."""
    count = data.draw(st.sampled_from([len(valid)] * 4 + list(range(len(valid) + 2))), label="count")
    drawn = [
        data.draw(st.one_of(st.just(valid[index]), values) if index < len(valid) else values, label=f"arg{index}")
        for index in range(count)
    ]
    return tuple(drawn)


def outcome(world: World, api: str, method: str, args: tuple[Any, ...]) -> tuple[bool, list[str]]:
    """(whether the call succeeded, what is wrong with the answer)."""
    try:
        answer = getattr(world.client(api), method)(*args)
    except xmlrpc.client.Fault as fault:
        return False, [f"fault 5: {fault.faultString}"] if fault.faultCode == 5 else []
    except xmlrpc.client.ProtocolError as error:
        return False, [f"HTTP {error.errcode} {error.errmsg}"]
    except OSError as error:
        return False, [f"transport: {error!r}"]
    if api == "registry":
        return True, []
    if not (isinstance(answer, dict) and isinstance(answer.get("code"), dict)):
        return False, [f"not an envelope: {str(answer)[:300]}"]
    code = answer["code"].get("geni_code")
    return code == 0, [f"geni_code 5: {answer.get('output')}"] if code == 5 else []


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the arguments hold whole credentials
@pytest.mark.parametrize(("api", "method"), METHODS, ids=[f"{api}-{method}" for api, method in METHODS])
@settings(
    max_examples=EXAMPLES_PER_METHOD,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_argument_makes_a_server_error_or_a_half_done_call(
    world: World, api: str, method: str, data: st.DataObject
) -> None:
    args = arguments(data, VALID[api][method](world))
    before = world.snapshot(light=True)
    mark = world.logs.mark()
    succeeded, problems = outcome(world, api, method, args)
    after = world.snapshot(light=True)
    if after != before:
        world.repair(before)
        if not succeeded:
            problems += ["a refused call changed the state: " + change for change in before.differences(after)]
    problems += ["server log: " + line for line in world.logs.since(mark)]
    assert not problems, f"{api} {method}{args!r:.600}:\n" + "\n".join(problems)
