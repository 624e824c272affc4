"""The envelope and the credentials argument as the real clients send them."""

from __future__ import annotations

import pytest

from sfa_omf.am.credentials import split_credentials
from sfa_omf.am.envelope import failure, success
from sfa_omf.errors import BadArgs, GeniCode, GeniError, Reason


def test_success_has_empty_output() -> None:
    answer = success({"x": 1}, geni_api=3)
    assert answer == {
        "code": {"geni_code": 0, "am_type": "sfa-omf", "am_code": 0},
        "value": {"x": 1},
        "output": "",
        "geni_api": 3,
    }


def test_failure_carries_code_and_message() -> None:
    answer = failure(GeniError(Reason.BOOKING_CONFLICT, "node1 is booked"))
    assert answer["code"]["geni_code"] == int(GeniCode.REFUSED)
    assert answer["output"] == "node1 is booked" and answer["value"] == ""


def test_credentials_in_every_form() -> None:
    sfi = split_credentials(["<signed-credential/>"])
    assert sfi.privilege == ("<signed-credential/>",) and sfi.speaks_for == ()
    omni = split_credentials(
        [
            {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": "<a/>"},
            {"geni_type": "GENI_SFA", "geni_version": "2", "geni_value": "<b/>"},
            {"geni_type": "geni_abac", "geni_version": "1", "geni_value": "<c/>"},
        ]
    )
    assert omni.privilege == ("<a/>", "<b/>") and omni.speaks_for == ("<c/>",)
    assert split_credentials(None).privilege == ()


@pytest.mark.parametrize(
    "bad",
    [
        [{"geni_type": "ucred", "geni_value": "<a/>"}],
        [{"geni_type": "geni_sfa"}],
        [42],
        42,
    ],
)
def test_bad_credentials_are_badargs(bad: object) -> None:
    with pytest.raises(BadArgs) as refusal:
        split_credentials(bad)
    assert refusal.value.code == GeniCode.BADARGS and refusal.value.message


def test_an_unsupported_credential_type_is_named_shortened() -> None:
    """The refusal names the caller's geni_type, cut: 4 MB of it would come back whole in the answer otherwise."""
    with pytest.raises(BadArgs) as refusal:
        split_credentials([{"geni_type": "x" * 4_000_000, "geni_value": "<a/>"}])
    assert "'xxxx" in refusal.value.message and len(refusal.value.message) < 200
