"""Hostile and malformed calls to the SFA Registry API over real TLS, by class of issue 11. The registry answers
refusals as XML-RPC faults whose faultCode is the GENI code; each case's expected fault is beside it
(tests/hostile/__init__.py, tests/hostile/harness.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.hostile.harness import ALICE_KEY, Args, Case, Expect, Fault, World, ids, play

AUTH = "testbed"
ALICE = f"{AUTH}.alice"
KEY_NEWLINE = ALICE_KEY + '\ncommand="/bin/sh" ssh-rsa AAAAB3NzaC1yc2E mallory@evil'
KEY_COMMAND = 'command="/bin/sh -c id" ' + ALICE_KEY


def reg(klass: str, method: str, name: str, args: Args, expect: Expect, caller: str = "alice") -> Case:
    return Case(klass, "registry", method, name, args, expect, caller)


def user_cred(w: World) -> str:
    return w.creds["alice_user"]


def operator(w: World) -> list[str]:
    return [w.creds["operator"]]


def update_own(**fields: Any) -> Args:
    """alice updates her own record (her user credential allows email and keys)."""
    return lambda w: ({"hrn": ALICE, **fields}, [user_cred(w)])


def update_as_operator(hrn: str, **fields: Any) -> Args:
    return lambda w: ({"hrn": hrn, **fields}, operator(w))


def register(**fields: Any) -> Args:
    """An operator registers a new user testbed.newcomer (a wrongly accepted call adds a record)."""
    record = {"hrn": f"{AUTH}.newcomer", "type": "user", "email": "newcomer@testbed.example.org", **fields}
    return lambda w: (record, operator(w))


def register_slice(**fields: Any) -> Args:
    record = {"hrn": f"{AUTH}.newslice", "type": "slice", "reg-researchers": [ALICE], **fields}
    return lambda w: (record, operator(w))


BAD_KEYS: list[tuple[str, Any, str]] = [
    ("int", 5, "key"),
    ("string", ALICE_KEY, "key"),
    ("struct", {"k": ALICE_KEY}, "key"),
    ("list-of-int", [5], "key"),
    ("list-of-list", [[ALICE_KEY]], "key"),
    ("not-a-key", ["not a key"], "key"),
    ("embedded-newline-command", [KEY_NEWLINE], "key"),
    ("command-option", [KEY_COMMAND], "key"),
    ("empty-string", [""], "key"),
]
BAD_EMAILS: list[tuple[str, Any]] = [
    ("struct", {"a": 1}),
    ("int", 5),
    ("list", ["alice@testbed.example.org"]),
    ("not-an-address", "not-an-email"),
    ("header-injection", "alice@testbed.example.org\nBcc: all@example.org"),
]
NOT_A_RECORD: list[tuple[str, Any]] = [("int", 5), ("string", ALICE), ("list", [{"hrn": ALICE}]), ("nil", None)]
NOT_A_NAME: list[tuple[str, Any]] = [
    ("int", 5),
    ("list", [ALICE]),
    ("struct", {"hrn": ALICE}),
    ("nil", None),
    ("bool", True),
]
BAD_CREDS: list[tuple[str, Any]] = [
    ("int", 5),
    ("list-of-int", [5]),
    ("list-of-nil", [None]),
    ("struct-without-value", {"geni_type": "geni_sfa"}),
]


def _class_2() -> list[Case]:
    cases: list[Case] = []
    for field in ("keys", "reg-keys"):
        cases += [
            reg("2", "Update", f"{field}-{name}", update_own(**{field: value}), Fault(1, word))
            for name, value, word in BAD_KEYS
            if name != "string"  # one key as a string is one key (SFA's registry takes it so)
        ]
    cases += [
        reg("2", "Register", f"keys-{name}", register(**{"reg-keys": value}), Fault(1, word))
        for name, value, word in BAD_KEYS
        if name in ("int", "string", "not-a-key", "embedded-newline-command", "command-option")
    ]
    cases += [
        reg("2", "Update", f"email-{name}", update_own(email=value), Fault(1, "email")) for name, value in BAD_EMAILS
    ]
    cases += [
        reg("2", "Register", f"email-{name}", register(email=value), Fault(1, "email")) for name, value in BAD_EMAILS
    ]
    cases += [
        reg("2", "Update", f"record-{name}", lambda w, value=value: (value, [user_cred(w)]), Fault(1, "record"))
        for name, value in NOT_A_RECORD
    ]
    cases += [
        reg("2", "Register", f"record-{name}", lambda w, value=value: (value, operator(w)), Fault(1, "record"))
        for name, value in NOT_A_RECORD
    ]
    cases += [
        reg(
            "2",
            "Update",
            f"hrn-{name}",
            lambda w, value=value: ({"hrn": value, "email": "x@y.org"}, [user_cred(w)]),
            Fault(1, "hrn"),
        )
        for name, value in NOT_A_NAME
        if name != "nil"
    ]
    cases += [
        reg("2", "Register", f"hrn-{name}", register(hrn=value), Fault(1, "hrn")) for name, value in NOT_A_NAME[:3]
    ]
    cases += [
        reg("2", "Register", f"type-{name}", register(type=value), Fault(1, "type"))
        for name, value in [("int", 5), ("list", ["user"])]
    ]
    cases += [
        reg("2", "Register", f"gid-{name}", register(gid=value), Fault(1, "certificate"))
        for name, value in [
            ("int", 5),
            ("not-pem", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----"),
            ("not-ascii", "caf\xe9"),
        ]
    ]
    cases += [
        reg(
            "2",
            "Update",
            f"researchers-{name}",
            update_as_operator(f"{AUTH}.demo", **{"reg-researchers": value}),
            Fault(1, "researchers"),
        )
        for name, value in [("string", ALICE), ("int", 5), ("list-of-int", [5]), ("struct", {"a": ALICE})]
    ]
    cases += [
        reg(
            "2",
            "Register",
            f"researchers-{name}",
            register_slice(**{"reg-researchers": value}),
            Fault(1, "researchers"),
        )
        for name, value in [("string", ALICE), ("list-of-int", [5])]
    ]
    cases += [
        reg("2", "Resolve", f"xrns-{name}", lambda w, value=value: (value, [user_cred(w)]), Fault(1, "hrn"))
        for name, value in [*NOT_A_NAME[::2], ("list-of-int", [5]), ("list-of-list", [[ALICE]])]
    ]
    cases += [
        reg("2", "Resolve", f"creds-{name}", lambda w, value=value: (ALICE, value), Fault(1, "credential"))
        for name, value in BAD_CREDS
    ]
    cases += [
        reg("2", "List", f"xrn-{name}", lambda w, value=value: (value, [user_cred(w)]), Fault(1, "hrn"))
        for name, value in NOT_A_NAME[:3]
    ]
    cases += [
        reg("2", "List", f"creds-{name}", lambda w, value=value: (AUTH, value), Fault(1, "credential"))
        for name, value in BAD_CREDS[:2]
    ]
    cases += [
        reg("2", "GetCredential", f"cred-{name}", lambda w, value=value: (value, ALICE, "user"), Fault(1, "credential"))
        for name, value in BAD_CREDS[:3]
    ]
    cases += [
        reg("2", "GetCredential", f"xrn-{name}", lambda w, value=value: (user_cred(w), value, "user"), Fault(1, "hrn"))
        for name, value in NOT_A_NAME[:3]
    ]
    cases += [
        reg("2", "GetCredential", f"type-{name}", lambda w, value=value: (user_cred(w), ALICE, value), Fault(1, "type"))
        for name, value in [("int", 5), ("list", ["user"])]
    ]
    cases += [
        reg(
            "2",
            "GetSelfCredential",
            f"certificate-{name}",
            lambda w, value=value: (value, ALICE, "user"),
            Fault(1, "certificate"),
        )
        for name, value in [
            ("int", 5),
            ("list", ["-----BEGIN CERTIFICATE-----"]),
            ("nil", None),
            ("not-ascii", "\xa0"),
        ]
    ]
    cases += [
        reg(
            "2",
            "GetSelfCredential",
            f"xrn-{name}",
            lambda w, value=value: (_alice_gid(w), value, "user"),
            Fault(1, "hrn"),
        )
        for name, value in NOT_A_NAME[:2]
    ]
    cases += [
        reg("2", "Remove", f"xrn-{name}", lambda w, value=value: (value, operator(w), "user"), Fault(1, "hrn"))
        for name, value in NOT_A_NAME[:3]
    ]
    cases += [
        reg(
            "2",
            "Remove",
            f"creds-{name}",
            lambda w, value=value: (f"{AUTH}.bob", value, "user"),
            Fault(1, "credential"),
        )
        for name, value in BAD_CREDS[:2]
    ]
    cases += [
        reg("2", "Remove", "type-list", lambda w: (f"{AUTH}.bob", operator(w), ["user"]), Fault(1, "type")),
    ]
    return cases


def _alice_gid(w: World) -> str:
    return (w.directory / "users" / "alice" / "sfi" / f"{AUTH}.alice.user.gid").read_text()


CLASS_2 = _class_2()

CLASS_3 = (
    [
        reg("3", "Register", f"expires-{name}", register_slice(expires=value), Fault(1, "expires"))
        for name, value in [
            ("plus-999999-weeks", "+999999w"),
            ("year-9999-west", "9999-12-31T23:59:59-14:00"),
            ("year-0001-east", "0001-01-01T00:00:00+14:00"),
        ]
    ]
    + [
        reg("3", "Update", f"expires-{name}", update_as_operator(f"{AUTH}.demo", expires=value), Fault(1, "expires"))
        for name, value in [("plus-999999-weeks", "+999999w"), ("year-9999-west", "9999-12-31T23:59:59-14:00")]
    ]
    + [
        reg("3", "Update", "expires-unreadable", update_as_operator(f"{AUTH}.demo", expires="soon"), Fault(1, "soon")),
        reg("3", "Register", "expires-list", register_slice(expires=["+1d"]), Fault(1, "expires")),
    ]
)

TYPED = [
    reg("typed", "GetSelfCredential", "someone-elses-key", lambda w: (_alice_gid(w), ALICE, "user"), Fault(22), "bob"),
    reg("typed", "Resolve", "unknown-record", lambda w: (f"{AUTH}.nobody", [user_cred(w)]), Fault(12, "nobody")),
    reg("typed", "Resolve", "no-credential", lambda w: (ALICE, []), Fault(3)),
    reg("typed", "Resolve", "someone-elses-credential", lambda w: (ALICE, [w.creds["bob_user"]]), Fault(22)),
    reg(
        "typed",
        "Resolve",
        "tampered-credential",
        lambda w: (ALICE, [w.creds["alice_user"].replace("<name>refresh", "<name>authority")]),
        Fault(20),
    ),
    reg("typed", "Resolve", "untrusted-credential", lambda w: (ALICE, [w.creds["untrusted"]]), Fault(23)),
    reg("typed", "Resolve", "garbage-credential", lambda w: (ALICE, ["<garbage"]), Fault(20)),
    reg(
        "typed",
        "Register",
        "exists-already",
        lambda w: ({"hrn": f"{AUTH}.bob", "type": "user"}, operator(w)),
        Fault(17, "Update"),
    ),
    reg(
        "typed",
        "Register",
        "user-credential",
        lambda w: ({"hrn": f"{AUTH}.eve", "type": "user"}, [user_cred(w)]),
        Fault(22, "credential"),
    ),
    reg("typed", "Register", "authority-type", register(type="authority"), Fault(1, "authority")),
    reg("typed", "Register", "outside-the-authority", register(hrn="elsewhere.eve"), Fault(22)),
    reg(
        "typed",
        "Update",
        "someone-else",
        lambda w: ({"hrn": f"{AUTH}.bob", "email": "x@y.org"}, [user_cred(w)]),
        Fault(3, "own"),
    ),
    reg(
        "typed",
        "Update",
        "own-researchers",
        lambda w: ({"hrn": ALICE, "reg-researchers": [ALICE]}, [user_cred(w)]),
        Fault(3),
    ),
    reg("typed", "Update", "unknown-record", update_as_operator(f"{AUTH}.nobody", email="x@y.org"), Fault(12)),
    reg("typed", "GetCredential", "another-user", lambda w: (user_cred(w), f"{AUTH}.bob", "user"), Fault(3)),
    reg("typed", "GetCredential", "unregistered-slice", lambda w: (user_cred(w), f"{AUTH}.other", "slice"), Fault(12)),
    reg("typed", "GetCredential", "wrong-type", lambda w: (user_cred(w), ALICE, "slice"), Fault(12)),
    reg("typed", "Remove", "user-credential", lambda w: (f"{AUTH}.bob", [user_cred(w)], "user"), Fault(22)),
    reg("typed", "Remove", "unknown-record", lambda w: (f"{AUTH}.nobody", operator(w), "user"), Fault(12)),
    reg("typed", "Remove", "too-few-arguments", lambda w: (f"{AUTH}.bob",), Fault(1, "Remove")),
    reg("typed", "Resolve", "no-arguments", lambda w: (), Fault(1, "Resolve")),
    reg("typed", "Delete", "not-a-registry-method", lambda w: (ALICE,), Fault(13, "not offered")),
]

CASES = CLASS_2 + CLASS_3 + TYPED


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_hostile_registry(world: World, case: Case) -> None:
    play(world, case)
