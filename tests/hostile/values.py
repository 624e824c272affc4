"""The hostile values the AM API tables share (tests/hostile/test_am_v3.py, test_am_v2.py): each a (name, value)
pair, the name going into the case's id."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

from tests.hostile.harness import ALICE_KEY, node_urn, slice_urn, user_urn

DEFAULT = object()  # "the valid value" for an argument a case leaves alone
BAD_KEY_NEWLINE = ALICE_KEY + "\nssh-rsa AAAAB3NzaC1yc2E mallory@evil"
BAD_KEY_COMMAND = 'command="/bin/sh -c id" ' + ALICE_KEY
BAD_KEY_EMBEDDED_COMMAND = ALICE_KEY + '\ncommand="/bin/sh" ssh-rsa AAAAB3NzaC1yc2E mallory@evil'

ALICE = user_urn("alice")
BINARY = xmlrpc.client.Binary(b"urn:publicid:IDN+testbed+slice+demo")
WHEN = xmlrpc.client.DateTime("20261201T10:00:00")

BAD_USERS: list[tuple[str, Any, str]] = [
    ("int", 5, "geni_users"),
    ("string", "alice", "geni_users"),
    ("struct", {"urn": ALICE, "keys": [ALICE_KEY]}, "geni_users"),
    ("bool", True, "geni_users"),
    ("base64", xmlrpc.client.Binary(b"alice"), "geni_users"),
    ("list-of-int", [5], "geni_users"),
    ("list-of-string", ["alice"], "geni_users"),
    ("list-of-nil", [None], "geni_users"),
    ("list-of-list", [[{"urn": ALICE, "keys": [ALICE_KEY]}]], "geni_users"),
    ("urn-int", [{"urn": 5, "keys": [ALICE_KEY]}], "urn"),
    ("urn-missing", [{"keys": [ALICE_KEY]}], "urn"),
    ("urn-list", [{"urn": [ALICE], "keys": [ALICE_KEY]}], "urn"),
    ("urn-not-a-urn", [{"urn": "alice", "keys": [ALICE_KEY]}], "urn"),
    ("urn-of-a-slice", [{"urn": slice_urn("demo"), "keys": [ALICE_KEY]}], "urn"),
    ("keys-string", [{"urn": ALICE, "keys": ALICE_KEY}], "keys"),
    ("keys-int", [{"urn": ALICE, "keys": 5}], "keys"),
    ("keys-struct", [{"urn": ALICE, "keys": {"k": ALICE_KEY}}], "keys"),
    ("keys-of-int", [{"urn": ALICE, "keys": [5]}], "keys"),
    ("keys-of-list", [{"urn": ALICE, "keys": [[ALICE_KEY]]}], "keys"),
    ("key-not-a-key", [{"urn": ALICE, "keys": ["not a key"]}], "key"),
    ("key-newline", [{"urn": ALICE, "keys": [BAD_KEY_NEWLINE]}], "key"),
    ("key-command-option", [{"urn": ALICE, "keys": [BAD_KEY_COMMAND]}], "key"),
    ("key-embedded-command", [{"urn": ALICE, "keys": [BAD_KEY_EMBEDDED_COMMAND]}], "key"),
    ("one-bad-user-of-two", [{"urn": ALICE, "keys": [ALICE_KEY]}, {"urn": 7, "keys": []}], "urn"),
]
SFA_USERS = ("int", "string", "struct", "list-of-int", "urn-int", "keys-string", "key-not-a-key", "key-command-option")

NOT_A_SLICE: list[tuple[str, Any]] = [
    ("int", 5),
    ("nil", None),
    ("bool", True),
    ("list", [slice_urn("demo")]),
    ("struct", {"urn": slice_urn("demo")}),
    ("base64", BINARY),
    ("datetime", WHEN),
    ("empty", ""),
    ("not-a-urn", "demo"),
    ("user-urn", ALICE),
    ("node-urn", node_urn("node2")),
    ("sliver-urn", "urn:publicid:IDN+testbed+sliver+0123456789abcdef"),
]
BAD_CREDS: list[tuple[str, Any]] = [
    ("int", 5),
    ("struct-without-value", {"geni_type": "geni_sfa", "geni_version": "3"}),
    ("list-of-int", [5]),
    ("list-of-nil", [None]),
    ("list-of-list", [[{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": "x"}]]),
    ("value-int", [{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": 5}]),
    ("type-unknown", [{"geni_type": "x509", "geni_version": "1", "geni_value": "<x/>"}]),
]
NOT_A_STRUCT: list[tuple[str, Any]] = [("int", 5), ("string", "geni_best_effort"), ("list", [{"a": 1}])]
NOT_URNS: list[tuple[str, Any]] = [
    ("int", 5),
    ("struct", {"urn": slice_urn("demo")}),
    ("list-of-int", [5]),
    ("list-of-nil", [None]),
    ("list-of-list", [[slice_urn("demo")]]),
    ("slice-and-int", [slice_urn("demo"), 5]),
    ("not-a-urn", ["demo"]),
    ("node-urn", [node_urn("node1")]),
    ("user-urn", [ALICE]),
]
NOT_BOOL: list[tuple[str, Any]] = [("word", "perhaps"), ("list", [True]), ("struct", {"yes": True})]
NOT_RSPEC_VERSION: list[tuple[str, Any]] = [("string", "GENI 3"), ("int", 3), ("list", ["GENI", "3"])]
NOT_AN_ACTION: list[tuple[str, Any]] = [
    ("int", 5),
    ("nil", None),
    ("list", ["geni_stop"]),
    ("struct", {"action": "geni_stop"}),
    ("base64", xmlrpc.client.Binary(b"geni_stop")),
]
NOT_A_STRING_RSPEC: list[tuple[str, Any]] = [
    ("int", 5),
    ("nil", None),
    ("bool", True),
    ("list", ["<rspec/>"]),
    ("struct", {"rspec": "<rspec/>"}),
    ("datetime", WHEN),
]

ABSURD_TIMES: list[tuple[str, str]] = [
    ("plus-999999-weeks", "+999999w"),
    ("plus-999999-months", "+999999m"),
    ("year-9999-west", "9999-12-31T23:59:59-14:00"),
    ("year-0001-east", "0001-01-01T00:00:00+14:00"),
    ("year-9999", "9999-12-31T23:59:59Z"),
    ("epoch-9999", "253402300799"),
    ("year-0001", "0001-01-01T00:00:00Z"),
    ("epoch-0", "0"),
]
#: Beyond what this aggregate allows, but representable: a policy refusal (7) naming the limit.
BEYOND_POLICY_TIMES: list[tuple[str, str]] = [
    ("plus-52-weeks", "+52w"),
    ("year-8999", "8999-06-01T00:00:00Z"),
]


def absurd_word(name: str) -> str:
    """What the refusal of an absurd time says: outside 1970..8999 is "out of range" (BADARGS, never arithmetic on
    it); "0" is too short to be read as epoch seconds (9 to 11 digits: shorter ones could be a year or a date)."""
    return "9 to 11 digits" if name == "epoch-0" else "out of range"


UNREADABLE_TIMES: list[tuple[str, str]] = [
    ("word", "tomorrow"),
    ("month-13", "2026-13-45T99:99:99Z"),
    ("empty", ""),
    ("years", "+1y"),
    ("eighteen-digits", "999999999999999999x"),
]

NOT_A_TIME: list[tuple[str, Any]] = [
    ("nil", None),
    ("empty-list", []),
    ("list", ["+1d"]),
    ("empty-struct", {}),
    ("struct", {"time": "+1d"}),
    ("base64", xmlrpc.client.Binary(b"+1d")),
    ("bool", True),
    ("double", 1.5),
]
