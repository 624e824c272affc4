"""The typed contract of the AM API (am/contract.py, arguments.py, times.py): each checker's refusals, and for every
method of v3 and v2, arguments of any XML-RPC type never crash a call (no geni_code 5) and never change the
calendar."""

from __future__ import annotations

import xmlrpc.client
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfa_omf.am import contract
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import BadArgs
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.sshkeys import is_ssh_public_key
from sfa_omf.times import parse_time
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key

USER = "urn:publicid:IDN+testbed+user+alice"


@pytest.mark.parametrize(
    "value",
    ["+999999w", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", "253402300799", -5, float("inf"), 1e300],
)
def test_times_out_of_range_are_bad_arguments_not_crashes(value: Any) -> None:
    with pytest.raises(BadArgs) as refusal:
        parse_time(value)
    assert "out of range" in refusal.value.message and "1970" in refusal.value.message


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, True, xmlrpc.client.Binary(b"x"), float("nan"), "x" * 100])
def test_things_that_are_no_time(value: Any) -> None:
    with pytest.raises(BadArgs):
        parse_time(value)


def test_times_in_range() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("+5d", now=now) == now + timedelta(days=5)
    assert parse_time(xmlrpc.client.DateTime("20261201T10:00:00")) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_time("8999-12-31T00:00:00Z").year == 8999


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        (ssh_key("alice@laptop"), True),
        ("ssh-rsa AAAA alice@laptop", False),  # looks like a key, is none
        ("not a key", False),
        (ssh_key("a") + '\ncommand="/bin/sh" ' + ssh_key("b"), False),  # a second line
        ('command="/bin/sh" ' + ssh_key("a"), False),  # options
        ("ssh-rsa " + ssh_key("a").split()[1], False),  # an ed25519 blob declared as RSA
    ],
)
def test_what_an_ssh_public_key_is(key: str, valid: bool) -> None:
    assert is_ssh_public_key(key) is valid


@pytest.mark.parametrize(
    ("users", "words"),
    [
        (5, "must be a list"),
        ("alice", "must be a list"),
        ({"urn": USER}, "must be a list"),
        ([5], "[0] must be a struct"),
        ([{"urn": 5}], "[0].urn must be a user URN"),
        ([{"urn": "urn:publicid:IDN+testbed+slice+x"}], "not a user URN"),
        ([{"urn": USER, "keys": ssh_key("a")}], "keys must be a list"),
        ([{"urn": USER, "keys": ["not a key"]}], "keys[0] is not an SSH public key"),
    ],
)
def test_users_are_checked(users: Any, words: str) -> None:
    with pytest.raises(BadArgs) as refusal:
        contract.options({"geni_users": users}, "argument 4 (options)")
    assert words in refusal.value.message and "geni_users" in refusal.value.message


def test_checked_options_come_out_in_one_form() -> None:
    checked = contract.options(
        {"geni_users": [{"urn": USER, "keys": [" " + ssh_key("a") + "\n"]}], "geni_best_effort": 1, "other": [1]},
        "options",
    )
    assert checked["geni_users"] == [{"urn": USER, "keys": [ssh_key("a")]}]
    assert checked["geni_best_effort"] is True and checked["other"] == [1]


def test_signatures_name_the_argument() -> None:
    with pytest.raises(BadArgs) as refusal:
        contract.V3["Renew"].check(([USER.replace("user", "slice")], [], None))
    assert "argument 3 (expiration time)" in refusal.value.message
    with pytest.raises(BadArgs) as missing:
        contract.V3["Allocate"].check(("urn:publicid:IDN+testbed+slice+x", []))
    assert "missing argument 3: rspec" in missing.value.message
    with pytest.raises(BadArgs) as binary:
        contract.V3["Allocate"].check(("urn:publicid:IDN+testbed+slice+x", [], xmlrpc.client.Binary(b"\xff\xfe<r")))
    assert "base64" in binary.value.message and "XML string" in binary.value.message


# -- every method, every type ----------------------------------------------------------------------------------------
xmlrpc_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.sampled_from(["urn:publicid:IDN+testbed+slice+demo", "+999999w", "9999-01-01", "geni_start", USER])
    | st.binary(max_size=20).map(xmlrpc.client.Binary),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
options_values = st.dictionaries(
    st.sampled_from([*sorted(contract.OPTION_CHECKERS), "geni_update_users", "x"]), xmlrpc_values, max_size=4
)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory, pki: DemoPki) -> tuple[ApiV3, ApiV2, Aggregate]:
    path: Path = tmp_path_factory.mktemp("contract")
    database = Database(sqlite_url(str(path / "c.sqlite")))
    database.upgrade()
    aggregate = Aggregate(AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots))
    aggregate.inventory.add_node(NodeSpec("urn:publicid:IDN+testbed+node+n1", "n1"))
    return ApiV3(aggregate), ApiV2(aggregate), aggregate


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("version", [3, 2])
def test_no_argument_of_any_type_crashes_a_call_or_writes(
    endpoints: tuple[ApiV3, ApiV2, Aggregate], pki: DemoPki, version: int, data: st.DataObject
) -> None:
    v3, v2, aggregate = endpoints
    endpoint = v3 if version == 3 else v2
    method = data.draw(st.sampled_from(sorted(endpoint.methods)), label="method")
    arguments = data.draw(st.lists(xmlrpc_values, max_size=5), label="arguments")
    if arguments and data.draw(st.booleans(), label="options last"):
        arguments[-1] = data.draw(options_values, label="options")
    alice = pki.users["alice"]
    before = aggregate.bookings.leases(active_only=False)
    answer = endpoint(CallContext(alice.chain, "127.0.0.1", "/"), method, tuple(arguments))
    assert answer["code"]["geni_code"] != 5, answer
    if answer["code"]["geni_code"] != 0:
        assert answer["output"], "a refusal says why"
    assert aggregate.bookings.leases(active_only=False) == before
