"""Hostile and malformed calls to AM API v3 (at /) over real TLS, by class of issue 11; each case's expected answer
is beside it. See tests/hostile/__init__.py for the classes and tests/hostile/harness.py for what every case asserts
(the code, a message naming the problem, no crash in the server's log, no state change)."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from tests.hostile.harness import (
    GENI_V3,
    Args,
    Case,
    Env,
    Expect,
    World,
    cred,
    ids,
    node_urn,
    ol_request,
    plain_request,
    play,
    sfa_request,
    slice_urn,
    slot,
)
from tests.hostile.values import (
    ABSURD_TIMES,
    BAD_CREDS,
    BAD_USERS,
    BEYOND_POLICY_TIMES,
    BINARY,
    DEFAULT,
    NOT_A_SLICE,
    NOT_A_STRING_RSPEC,
    NOT_A_STRUCT,
    NOT_A_TIME,
    NOT_AN_ACTION,
    NOT_BOOL,
    NOT_RSPEC_VERSION,
    NOT_URNS,
    SFA_USERS,
    UNREADABLE_TIMES,
    absurd_word,
)


def v3(klass: str, method: str, name: str, args: Args, expect: Expect, caller: str = "alice") -> Case:
    return Case(klass, "v3", method, name, args, expect, caller)


# -- argument builders: the valid call, with one argument replaced ---------------------------------------------------
def allocate(
    slice_: Any = DEFAULT, creds: Any = DEFAULT, rspec: Any = DEFAULT, options: Any = DEFAULT, **option: Any
) -> Args:
    """Allocate(slice, creds, rspec, options); the default books node2 in a free slot (so a wrongly accepted call
    changes the state); ``option`` adds options."""

    def build(w: World) -> tuple[Any, ...]:
        opts = {} if options is DEFAULT else options
        if option and isinstance(opts, dict):
            opts = {**opts, **option}
        return (
            w.slice if slice_ is DEFAULT else slice_,
            w.slice_creds if creds is DEFAULT else creds(w) if callable(creds) else creds,
            w.free_request() if rspec is DEFAULT else rspec(w) if callable(rspec) else rspec,
            opts,
        )

    return build


URN_METHODS = ("Describe", "Status", "Provision", "Delete", "Renew", "PerformOperationalAction")


def urn_call(
    method: str, urns: Any = DEFAULT, creds: Any = DEFAULT, options: Any = DEFAULT, third: Any = DEFAULT
) -> Args:
    """A URN-list method with valid arguments but one. The defaults do harm if a bad argument is let through:
    Renew extends the booking, PerformOperationalAction stops it, Delete deletes it."""

    def build(w: World) -> tuple[Any, ...]:
        the_urns = [w.slice] if urns is DEFAULT else urns(w) if callable(urns) else urns
        the_creds = w.slice_creds if creds is DEFAULT else creds(w) if callable(creds) else creds
        if options is DEFAULT:
            the_options: Any = {"geni_rspec_version": GENI_V3} if method in ("Describe", "Provision") else {}
        else:
            the_options = options
        if callable(third):
            return (the_urns, the_creds, third(w), the_options)
        if method == "Renew":
            when = slot(4, 2)[1] if third is DEFAULT else third
            return (the_urns, the_creds, when, the_options)
        if method == "PerformOperationalAction":
            action = "geni_stop" if third is DEFAULT else third
            return (the_urns, the_creds, action, the_options)
        return (the_urns, the_creds, the_options)

    return build


def shutdown(slice_: Any = DEFAULT, creds: Any = DEFAULT, *options: Any) -> Args:
    def build(w: World) -> tuple[Any, ...]:
        return (
            w.slice if slice_ is DEFAULT else slice_,
            w.slice_creds if creds is DEFAULT else creds(w) if callable(creds) else creds,
            *options,
        )

    return build


def list_resources(creds: Any = DEFAULT, options: Any = DEFAULT) -> Args:
    def build(w: World) -> tuple[Any, ...]:
        return (
            w.user_creds if creds is DEFAULT else creds(w) if callable(creds) else creds,
            {"geni_rspec_version": GENI_V3} if options is DEFAULT else options,
        )

    return build


def named(cred_name: str) -> Any:
    return lambda w: [cred(w.creds[cred_name])]


# -- class 1: a half-done Allocate (users checked after booking) ------------------------------------------------------

CLASS_1 = [
    v3("1", "Allocate", f"geni_users-{name}", allocate(geni_users=value), Env(1, word))
    for name, value, word in BAD_USERS
] + [
    v3("1", "Allocate", f"sfa_users-{name}", allocate(sfa_users=value), Env(1, word.replace("geni_", "sfa_")))
    for name, value, word in BAD_USERS
    if name in SFA_USERS
]

# -- class 2: wrong types accepted silently ---------------------------------------------------------------------------


def _class_2() -> list[Case]:
    cases = [
        v3("2", "Allocate", f"slice-{name}", allocate(slice_=value), Env(1, "slice")) for name, value in NOT_A_SLICE
    ]
    cases += [
        v3("2", "Allocate", f"creds-{name}", allocate(creds=value), Env(1, "credential")) for name, value in BAD_CREDS
    ]
    cases += [
        v3("2", "Allocate", f"rspec-{name}", allocate(rspec=value), Env(1, "rspec"))
        for name, value in NOT_A_STRING_RSPEC
    ]
    cases += [
        v3("2", "Allocate", f"options-{name}", allocate(options=value), Env(1, "options"))
        for name, value in NOT_A_STRUCT
    ]
    cases += [
        v3("2", "Allocate", f"best_effort-{name}", allocate(geni_best_effort=value), Env(1, "geni_best_effort"))
        for name, value in NOT_BOOL
    ]
    cases += [
        v3(
            "2",
            "Allocate",
            f"start_time-{name}",
            allocate(rspec=plain_request("node2"), geni_start_time=value),
            Env(1, "geni_start_time"),
        )
        for name, value in [("list", ["+1d"]), ("struct", {"t": "+1d"}), ("bool", True), ("base64", BINARY)]
    ]
    cases += [
        v3(
            "2",
            "Allocate",
            f"end_time-{name}",
            allocate(rspec=plain_request("node2"), geni_end_time=value),
            Env(1, "geni_end_time"),
        )
        for name, value in [("list", ["+1d"]), ("struct", {"t": "+1d"})]
    ]
    for method in URN_METHODS:
        cases += [
            v3("2", method, f"urns-{name}", urn_call(method, urns=value), Env(1, "urn")) for name, value in NOT_URNS
        ]
        cases += [
            v3("2", method, f"creds-{name}", urn_call(method, creds=value), Env(1, "credential"))
            for name, value in BAD_CREDS[:4]
        ]
        cases += [
            v3("2", method, f"options-{name}", urn_call(method, options=value), Env(1, "options"))
            for name, value in NOT_A_STRUCT
        ]
    cases += [
        v3("2", "ListResources", f"creds-{name}", list_resources(creds=value), Env(1, "credential"))
        for name, value in BAD_CREDS[:4]
    ]
    cases += [
        v3("2", "ListResources", f"options-{name}", list_resources(options=value), Env(1, "options"))
        for name, value in NOT_A_STRUCT
    ]
    cases += [
        v3(
            "2",
            "ListResources",
            f"rspec_version-{name}",
            list_resources(options={"geni_rspec_version": value}),
            Env(1, "geni_rspec_version"),
        )
        for name, value in NOT_RSPEC_VERSION
    ]
    cases += [
        v3(
            "2",
            "ListResources",
            f"{option}-{name}",
            list_resources(options={"geni_rspec_version": GENI_V3, option: value}),
            Env(1, option),
        )
        for option in ("geni_compressed", "geni_available")
        for name, value in NOT_BOOL
    ]
    cases += [
        v3(
            "2",
            "Describe",
            f"rspec_version-{name}",
            urn_call("Describe", options={"geni_rspec_version": value}),
            Env(1, "geni_rspec_version"),
        )
        for name, value in NOT_RSPEC_VERSION
    ]
    cases += [
        v3(
            "2",
            "Describe",
            f"compressed-{name}",
            urn_call("Describe", options={"geni_rspec_version": GENI_V3, "geni_compressed": value}),
            Env(1, "geni_compressed"),
        )
        for name, value in NOT_BOOL[:2]
    ]
    provision_users = [u for u in BAD_USERS if u[0] in SFA_USERS]
    cases += [
        v3(
            "2",
            "Provision",
            f"geni_users-{name}",
            urn_call("Provision", options={"geni_rspec_version": GENI_V3, "geni_users": value}),
            Env(1, word),
        )
        for name, value, word in provision_users
    ]
    cases += [
        v3(
            "2",
            "Provision",
            f"best_effort-{name}",
            urn_call("Provision", options={"geni_rspec_version": GENI_V3, "geni_best_effort": value}),
            Env(1, "geni_best_effort"),
        )
        for name, value in NOT_BOOL[:1]
    ]
    cases += [
        v3(
            "2",
            "PerformOperationalAction",
            f"action-{name}",
            urn_call("PerformOperationalAction", third=value),
            Env(1, "action"),
        )
        for name, value in NOT_AN_ACTION
    ]
    cases += [
        v3(
            "2",
            "PerformOperationalAction",
            f"update_users-{name}",
            urn_call("PerformOperationalAction", third="geni_update_users", options={"geni_users": value}),
            Env(1, word),
        )
        for name, value, word in provision_users
    ]
    cases += [
        v3("2", "Shutdown", f"slice-{name}", shutdown(slice_=value), Env(1, "slice"))
        for name, value in NOT_A_SLICE
        if name in ("int", "nil", "list", "struct", "sliver-urn", "user-urn")
    ]
    cases += [
        v3("2", "Shutdown", f"creds-{name}", shutdown(DEFAULT, value), Env(1, "credential"))
        for name, value in BAD_CREDS[:3]
    ]
    cases += [
        v3("2", "Shutdown", f"options-{name}", shutdown(DEFAULT, DEFAULT, value), Env(1, "options"))
        for name, value in NOT_A_STRUCT[:2]
    ]
    return cases


CLASS_2 = _class_2()

# -- class 3: times out of range (a policy refusal, never arithmetic on them) -----------------------------------------

CLASS_3 = (
    [
        v3("3", "Renew", f"time-{name}", urn_call("Renew", third=value), Env(1, absurd_word(name)))
        for name, value in ABSURD_TIMES
    ]
    + [
        v3("3", "Renew", f"time-{name}", urn_call("Renew", third=value), Env(7, "credential"))
        for name, value in BEYOND_POLICY_TIMES
    ]
    + [
        v3(
            "3",
            "Allocate",
            f"geni_start_time-{name}",
            allocate(rspec=plain_request("node2"), geni_start_time=value),
            Env(7, "policy rule"),
        )
        for name, value in BEYOND_POLICY_TIMES
    ]
    + [
        v3("3", "Renew", f"unreadable-{name}", urn_call("Renew", third=value), Env(1, "time"))
        for name, value in UNREADABLE_TIMES
    ]
    + [
        v3(
            "3",
            "Allocate",
            f"geni_start_time-{name}",
            allocate(rspec=plain_request("node2"), geni_start_time=value),
            Env(1, "out of range"),
        )
        for name, value in ABSURD_TIMES[:6]
    ]
    + [
        v3(
            "3",
            "Allocate",
            f"geni_end_time-{name}",
            allocate(rspec=plain_request("node2"), geni_end_time=value),
            Env(1, "out of range"),
        )
        for name, value in ABSURD_TIMES[:4]
    ]
    + [
        v3(
            "3",
            "Allocate",
            f"geni_start_time-unreadable-{name}",
            allocate(rspec=plain_request("node2"), geni_start_time=value),
            Env(1, "geni_start_time"),
        )
        for name, value in UNREADABLE_TIMES[:2]
    ]
    + [
        v3(
            "3",
            "Allocate",
            "sfa-start_time-year-9999",
            allocate(rspec=sfa_request("node2", "253402300799", "2")),
            Env(1, "out of range"),
        ),
        v3(
            "3",
            "Allocate",
            "sfa-start_time-20-digits",
            allocate(rspec=sfa_request("node2", "99999999999999999999", "2")),
            Env(1, "start_time"),
        ),
        v3(
            "3",
            "Allocate",
            "sfa-duration-huge",
            allocate(rspec=lambda w: sfa_request("node2", str(_epoch(slot(6)[0])), "999999999999999999")),
            Env(1, "out of range"),
        ),
        v3(
            "3",
            "Allocate",
            "ol-valid_from-year-9999-west",
            allocate(rspec=ol_request(("node2",), ("9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59-14:00"))),
            Env(1, "out of range"),
        ),
        v3(
            "3",
            "Allocate",
            "ol-valid_from-year-0001-east",
            allocate(rspec=ol_request(("node2",), ("0001-01-01T00:00:00+14:00", "0001-01-01T01:00:00+14:00"))),
            Env(1, "out of range"),
        ),
    ]
)


def _epoch(moment: str) -> int:
    from sfa_omf.times import parse_time

    return int(parse_time(moment).timestamp())


# -- class 4: v3 Renew with a time that is not a time ------------------------------------------------------------

CLASS_4 = [
    v3("4", "Renew", f"time-{name}", urn_call("Renew", third=value), Env(1, "time")) for name, value in NOT_A_TIME
]

# -- class 8: a request over the policy's node limit ----------------------------------------------------------------
CLASS_8 = [
    v3(
        "8",
        "Allocate",
        "5000-nodes",
        allocate(rspec=lambda w: ol_request(("node2",), slot(6), extra_nodes=4999)),
        Env(7, "limit"),
    ),
]

# -- class 9: smaller contract points --------------------------------------------------------------------------------
CLASS_9 = [
    v3("9", "Describe", "no-rspec_version", urn_call("Describe", options={}), Env(1, "geni_rspec_version")),
    v3("9", "Describe", "no-options", lambda w: ([w.slice], w.slice_creds), Env(1, "geni_rspec_version")),
    v3(
        "9",
        "Describe",
        "sliver-no-rspec_version",
        urn_call("Describe", urns=lambda w: [w.sliver], options={}),
        Env(1, "geni_rspec_version"),
    ),
    v3("9", "ListResources", "no-rspec_version", list_resources(options={}), Env(1, "geni_rspec_version")),
    v3("9", "ListResources", "no-options", lambda w: (w.user_creds,), Env(1, "geni_rspec_version")),
    v3(
        "9",
        "Allocate",
        "rspec-base64",
        allocate(rspec=lambda w: xmlrpc.client.Binary(w.free_request().encode())),
        Env(1, "rspec"),
    ),
    v3(
        "9",
        "Allocate",
        "rspec-base64-invalid-utf8",
        allocate(
            rspec=lambda w: xmlrpc.client.Binary(w.free_request().replace('node2"', 'node2\xe9"', 1).encode("latin-1"))
        ),
        Env(1, "rspec"),
    ),
]

# -- well-typed hostile input: today's answers stay ---------------------------------------------------------------
FORGED: list[tuple[str, Any, int, str]] = [
    ("tampered", named("tampered"), 20, "verif"),
    ("garbage", ["<garbage"], 20, "well-formed"),
    ("of-another-user", named("bob_slice"), 22, "bob"),
    ("user-cred-for-slice", named("alice_user"), 22, "slice"),
    ("none", [], 3, "none"),
    ("expired", named("expired"), 21, "expired"),
    ("untrusted-signer", named("untrusted"), 23, "trusted"),
    ("other-slice", named("alice_other"), 22, "demo"),
]


def _typed() -> list[Case]:
    cases = [
        v3("typed", "Allocate", f"cred-{name}", allocate(creds=creds), Env(code, word))
        for name, creds, code, word in FORGED
    ]
    cases.append(v3("typed", "Allocate", "cred-info-only", allocate(creds=named("info_only")), Env(3)))
    for method in URN_METHODS:
        cases += [
            v3("typed", method, f"cred-{name}", urn_call(method, creds=creds), Env(code, word))
            for name, creds, code, word in FORGED
            if name in ("tampered", "of-another-user", "none", "expired", "untrusted-signer")
        ]
        cases.append(
            v3(
                "typed",
                method,
                "unknown-sliver",
                urn_call(method, urns=["urn:publicid:IDN+testbed+sliver+00000000000000000000000000000000"]),
                Env(12, "sliver"),
            )
        )
    cases += [
        v3(
            "typed",
            "ListResources",
            "cred-tampered",
            list_resources(creds=lambda w: [cred(w.creds["alice_user"].replace("<name>refresh", "<name>authority"))]),
            Env(20),
        ),
        v3("typed", "ListResources", "cred-garbage", list_resources(creds=["<garbage"]), Env(20, "well-formed")),
        v3("typed", "ListResources", "cred-none", list_resources(creds=[]), Env(3)),
        v3("typed", "ListResources", "cred-untrusted-signer", list_resources(creds=named("untrusted")), Env(23)),
        v3(
            "typed",
            "ListResources",
            "cred-entities",
            list_resources(creds=["<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"]),
            Env(20, "entit"),
        ),
        v3(
            "typed",
            "ListResources",
            "rspec_version-protogeni",
            list_resources(options={"geni_rspec_version": {"type": "ProtoGENI", "version": "2"}}),
            Env(4),
        ),
        v3(
            "typed",
            "Allocate",
            "conflict",
            lambda w: (slice_urn("other"), [cred(w.creds["alice_other"])], w.conflict_request(), {}),
            Env(7, "node1"),
        ),
        v3(
            "typed",
            "Allocate",
            "unknown-node",
            allocate(rspec=ol_request(("nosuchnode",), slot(6))),
            Env(1, "not a node"),
        ),
        v3("typed", "Allocate", "ends-before-start", allocate(rspec=ol_request(("node2",), slot(6)[::-1])), Env(1)),
        v3("typed", "Allocate", "in-the-past", allocate(rspec=ol_request(("node2",), slot(-5))), Env(7, "over")),
        v3(
            "typed",
            "Allocate",
            "off-the-grain",
            allocate(rspec=lambda w: ol_request(("node2",), (slot(6)[0].replace(":00:00Z", ":07:00Z"), slot(6)[1]))),
            Env(7, "grain"),
        ),
        v3("typed", "Allocate", "too-long", allocate(rspec=ol_request(("node2",), slot(6, 24 * 8))), Env(7, "max")),
        v3("typed", "Allocate", "too-far-ahead", allocate(rspec=ol_request(("node2",), slot(24 * 100))), Env(7)),
        v3(
            "typed",
            "Allocate",
            "billion-laughs",
            allocate(
                rspec=(
                    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                    '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">&b;</rspec>'
                )
            ),
            Env(1, "entit"),
        ),
        v3(
            "typed",
            "Allocate",
            "doctype-system",
            allocate(
                rspec=(
                    '<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd">'
                    '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3"/>'
                )
            ),
            Env(1, "DOCTYPE"),
        ),
        v3(
            "typed",
            "Allocate",
            "wrong-namespace",
            allocate(rspec=lambda w: w.free_request().replace("http://www.geni.net/resources/rspec/3", "urn:x")),
            Env(1),
        ),
        v3("typed", "Allocate", "truncated", allocate(rspec=lambda w: w.free_request()[:-20]), Env(1)),
        v3("typed", "Allocate", "not-xml", allocate(rspec="node2 please, tomorrow"), Env(1)),
        v3(
            "typed",
            "Allocate",
            "manifest",
            allocate(rspec=lambda w: w.free_request().replace('type="request"', 'type="manifest"')),
            Env(1),
        ),
        v3(
            "typed",
            "Allocate",
            "no-component_id",
            allocate(rspec=lambda w: w.free_request().replace(f'component_id="{node_urn("node2")}" ', "")),
            Env(1, "component_id"),
        ),
        v3("typed", "Describe", "node-urn", urn_call("Describe", urns=[node_urn("node1")]), Env(1, "neither")),
        v3(
            "typed",
            "Describe",
            "two-slices",
            urn_call("Describe", urns=lambda w: [w.slice, slice_urn("other")]),
            Env(1, "one slice"),
        ),
        v3(
            "typed",
            "Status",
            "slice-and-sliver",
            urn_call("Status", urns=lambda w: [w.slice, w.sliver]),
            Env(1, "one slice"),
        ),
        v3("typed", "Delete", "empty-urns", urn_call("Delete", urns=[]), Env(1)),
        v3(
            "typed",
            "PerformOperationalAction",
            "unknown-action",
            urn_call("PerformOperationalAction", third="geni_explode"),
            Env(1, "geni_start"),
        ),
        v3("typed", "PerformOperationalAction", "empty-action", urn_call("PerformOperationalAction", third=""), Env(1)),
        v3(
            "typed",
            "PerformOperationalAction",
            "update-users-without-users",
            urn_call("PerformOperationalAction", third="geni_update_users"),
            Env(1, "geni_users"),
        ),
        v3("typed", "Renew", "past-the-credential", urn_call("Renew", third="+8w"), Env(7, "geni_extend_alap")),
        v3("typed", "Renew", "before-the-start", urn_call("Renew", third=lambda w: w.window[0]), Env(1, "starts at")),
        v3("typed", "Delete", "other-slice-cred", urn_call("Delete", creds=named("alice_other")), Env(22)),
        v3("typed", "Shutdown", "user-cred", shutdown(DEFAULT, named("alice_user")), Env(22)),
        v3("typed", "Shutdown", "info-only", shutdown(DEFAULT, named("info_only")), Env(3)),
        v3("typed", "Shutdown", "tampered", shutdown(DEFAULT, named("tampered")), Env(20)),
        v3("typed", "Shutdown", "of-another-user", shutdown(DEFAULT, named("bob_slice")), Env(22)),
        v3("typed", "NoSuchMethod", "unknown-method", lambda w: (w.slice,), Env(13, "not an AM API v3 method")),
        v3("typed", "GetVersion", "extra-arguments", lambda w: ({"a": [1, 2]}, 5), Env(0)),
    ]
    return cases


TYPED = _typed()
CASES = CLASS_1 + CLASS_2 + CLASS_3 + CLASS_4 + CLASS_8 + CLASS_9 + TYPED


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_hostile_v3(world: World, case: Case) -> None:
    play(world, case)
