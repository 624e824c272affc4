"""Slice and sliver URNs with control characters (a line feed, ESC, NUL...) are refused at the call boundary with
BADARGS naming the character and the argument, before any work: such a name would reach e-mails (a new header),
iCal feeds and RSpecs. Every method of AM API v3 and v2 that takes a slice or sliver URN, through the real endpoints
(sans-IO) with alice's real certificate, on a real SQLite calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import BadArgs
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki

RSPEC = '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3"/>'
LATER = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
#: Each method that takes a slice or sliver URN, and its arguments with the URN as {urn}.
V3_CALLS: dict[str, tuple[Any, ...]] = {
    "Allocate": ("{urn}", [], RSPEC, {}),
    "Describe": (["{urn}"], [], {}),
    "Provision": (["{urn}"], [], {}),
    "Status": (["{urn}"], [], {}),
    "Renew": (["{urn}"], [], LATER, {}),
    "Delete": (["{urn}"], [], {}),
    "PerformOperationalAction": (["{urn}"], [], "geni_start", {}),
    "Shutdown": ("{urn}", [], {}),
}
V2_CALLS: dict[str, tuple[Any, ...]] = {
    "CreateSliver": ("{urn}", [], RSPEC, [], {}),
    "SliverStatus": ("{urn}", [], {}),
    "RenewSliver": ("{urn}", [], LATER, {}),
    "DeleteSliver": ("{urn}", [], {}),
    "Shutdown": ("{urn}", [], {}),
    "GetTicket": ("{urn}", [], RSPEC, [], {}),
}
BAD_URNS = {
    "line feed": ("urn:publicid:IDN+testbed+slice+demo\nBcc: everyone@example.org", "character 36", "U+000A"),
    "ESC": ("urn:publicid:IDN+testbed+slice+de\x1b[31mmo", "character 34", "U+001B"),
    "NUL": ("urn:publicid:IDN+testbed+slice+demo\x00", "character 36", "U+0000"),
    "sliver with a carriage return": ("urn:publicid:IDN+testbed+sliver+ab\rcd", "character 35", "U+000D"),
}


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory, pki: DemoPki) -> tuple[ApiV3, ApiV2, Aggregate]:
    path: Path = tmp_path_factory.mktemp("control")
    database = Database(sqlite_url(str(path / "c.sqlite")))
    database.upgrade()
    aggregate = Aggregate(AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots))
    aggregate.inventory.add_node(NodeSpec("urn:publicid:IDN+testbed+node+n1", "n1"))
    return ApiV3(aggregate), ApiV2(aggregate), aggregate


def with_urn(arguments: tuple[Any, ...], urn: str) -> tuple[Any, ...]:
    return tuple([urn] if item == ["{urn}"] else urn if item == "{urn}" else item for item in arguments)


#: (version, method, bad URN): a sliver URN only where a list of URNs goes.
CASES = [
    (version, method, bad)
    for version, calls in ((3, V3_CALLS), (2, V2_CALLS))
    for method, arguments in calls.items()
    for bad, (urn, _, _) in sorted(BAD_URNS.items())
    if "+sliver+" not in urn or arguments[0] == ["{urn}"]
]


@pytest.mark.parametrize(("version", "method", "bad"), CASES)
def test_a_urn_with_a_control_character_is_bad_arguments_naming_it(
    endpoints: tuple[ApiV3, ApiV2, Aggregate], pki: DemoPki, version: int, method: str, bad: str
) -> None:
    v3, v2, aggregate = endpoints
    urn, position, code = BAD_URNS[bad]
    calls = V3_CALLS if version == 3 else V2_CALLS
    before = aggregate.bookings.leases(active_only=False)
    endpoint = v3 if version == 3 else v2
    answer = endpoint(CallContext(pki.users["alice"].chain, "127.0.0.1", "/"), method, with_urn(calls[method], urn))
    assert answer["code"]["geni_code"] == 1, answer  # BADARGS
    assert position in answer["output"] and code in answer["output"], answer["output"]
    assert "argument 1" in answer["output"] and "control characters" in answer["output"]
    assert aggregate.bookings.leases(active_only=False) == before


@pytest.mark.parametrize("bad", ["urn:publicid:IDN+testbed+slice+\nmo", "urn:publicid:IDN+testbed+slice+\u2028x"])
def test_the_aggregate_itself_refuses_them_too(
    endpoints: tuple[ApiV3, ApiV2, Aggregate], pki: DemoPki, bad: str
) -> None:
    """The core's own check (for the CLI and other callers that do not come through the contract)."""
    aggregate = endpoints[2]
    for call in (
        lambda: aggregate.allocate(pki.users["alice"].chain, bad, [], RSPEC, {}),
        lambda: aggregate.shutdown(pki.users["alice"].chain, bad, []),
    ):
        with pytest.raises(BadArgs) as refusal:
            call()
        assert "character 32 of the URN" in refusal.value.message and "the slice URN" in refusal.value.message


@pytest.mark.parametrize("character", ["\n", "\x1b", "\x00", "\u202e", "\u200d"], ids=lambda c: f"U+{ord(c):04X}")
def test_user_urns_with_a_control_or_formatting_character_are_refused_plainly(character: str) -> None:
    """geni_users and geni_speaking_for: an ESC was stored as a slice user and reached the feeds; a NUL failed
    PostgreSQL's insert (an internal error); a bidi override or a zero-width joiner made the user display as another.
    Every URN argument goes through the one check (arguments.urn_of_type)."""
    from sfa_omf.am import contract
    from sfa_omf.errors import BadArgs

    urn = f"urn:publicid:IDN+testbed+user+al{character}ice"
    with pytest.raises(BadArgs) as sent_users:
        contract.users([{"urn": urn, "keys": []}], "geni_users")
    assert f"U+{ord(character):04X}" in str(sent_users.value) and "geni_users[0].urn" in str(sent_users.value)
    with pytest.raises(BadArgs) as speaking_for:
        contract.user_urn(urn, "geni_speaking_for")
    assert f"U+{ord(character):04X}" in str(speaking_for.value)


#: Invisible formatting characters (Unicode category Cf): a bidi override, an isolate, zero-width ones, the byte
#: order mark, a tag. Each changes how a URN displays (U+202E shows "demo" + "ecils+" reversed), so that a slice
#: reads as another's in e-mails, feeds, the Gantt and RSpecs.
FORMAT_CHARACTERS = ["\u202e", "\u202a", "\u2067", "\u200b", "\u200f", "\ufeff", "\u00ad", "\U000e0041"]


@pytest.mark.parametrize("character", FORMAT_CHARACTERS, ids=lambda char: f"U+{ord(char):04X}")
@pytest.mark.parametrize(("version", "method"), [(3, "Allocate"), (3, "Describe"), (2, "CreateSliver")])
def test_a_urn_with_a_formatting_character_is_bad_arguments_naming_it(
    endpoints: tuple[ApiV3, ApiV2, Aggregate], pki: DemoPki, version: int, method: str, character: str
) -> None:
    v3, v2, aggregate = endpoints
    urn = f"urn:publicid:IDN+testbed+slice+de{character}mo"
    before = aggregate.bookings.leases(active_only=False)
    endpoint, calls = (v3, V3_CALLS) if version == 3 else (v2, V2_CALLS)
    answer = endpoint(CallContext(pki.users["alice"].chain, "127.0.0.1", "/"), method, with_urn(calls[method], urn))
    assert answer["code"]["geni_code"] == 1, answer  # BADARGS
    output = answer["output"]
    assert f"U+{ord(character):04X}" in output and "character 34 of the URN" in output, output
    assert "argument 1" in output and "formatting character" in output, output
    assert aggregate.bookings.leases(active_only=False) == before


def test_letters_of_other_scripts_stay_welcome() -> None:
    """Only formatting characters are refused: accented and non-Latin letters are names like any other."""
    from sfa_omf.am import contract

    for urn in ("urn:publicid:IDN+testbed+slice+d\u00e9mo", "urn:publicid:IDN+testbed+slice+\u0434\u0435\u043c\u043e"):
        assert contract.slice_urn(urn, "argument 1 (slice_urn)") == urn


#: Blanks and characters shown as nothing outside category Cf: a trailing or no-break space, an ideographic space, the
#: combining grapheme joiner, a variation selector, a Hangul filler, the braille blank: "de\u034fmo" displays "demo".
BLANK_OR_INVISIBLE = [" ", "\u00a0", "\u3000", "\u034f", "\ufe0f", "\u3164", "\u2800"]


@pytest.mark.parametrize("character", BLANK_OR_INVISIBLE, ids=lambda char: f"U+{ord(char):04X}")
def test_a_urn_with_a_blank_or_a_character_shown_as_nothing_is_bad_arguments(
    endpoints: tuple[ApiV3, ApiV2, Aggregate], pki: DemoPki, character: str
) -> None:
    v3, _, aggregate = endpoints
    urn = f"urn:publicid:IDN+testbed+slice+de{character}mo"
    before = aggregate.bookings.leases(active_only=False)
    context = CallContext(pki.users["alice"].chain, "127.0.0.1", "/")
    answer = v3(context, "Allocate", with_urn(V3_CALLS["Allocate"], urn))
    assert answer["code"]["geni_code"] == 1, answer  # BADARGS
    assert "character 34 of the URN" in answer["output"] and "argument 1" in answer["output"], answer["output"]
    assert aggregate.bookings.leases(active_only=False) == before
