"""Users and SSH keys attached to a slice: merging never wipes, replacing is exact; shut down and release."""

from __future__ import annotations

import pytest

from sfa_omf.calendar.policy import PolicyViolation
from sfa_omf.calendar.records import BookingRequest, SliceUserRecord
from sfa_omf.calendar.slices import Slices
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn

ALICE = "urn:publicid:IDN+testbed+user+alice"
BOB = "urn:publicid:IDN+testbed+user+bob"


def test_users_merge_and_replace(calendar: Calendar) -> None:
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    slices = Slices(calendar.database)
    slices.update_users(SLICE, {ALICE: ["ssh-rsa AAA alice@a", " "]})
    record = slices.update_users(SLICE, {ALICE: ["ssh-ed25519 BBB alice@b", "ssh-rsa AAA alice@a"], BOB: ["ssh-rsa C"]})
    assert record.users == (
        SliceUserRecord(ALICE, ("ssh-rsa AAA alice@a", "ssh-ed25519 BBB alice@b")),
        SliceUserRecord(BOB, ("ssh-rsa C",)),
    )
    replaced = slices.update_users(SLICE, {ALICE: ["ssh-ed25519 BBB alice@b"]}, replace=True)
    assert replaced.users == (SliceUserRecord(ALICE, ("ssh-ed25519 BBB alice@b",)),)
    assert slices.get(SLICE) == replaced
    assert replaced.expires == SLICE_EXPIRES


def test_unknown_slice(calendar: Calendar) -> None:
    with pytest.raises(GeniError) as refusal:
        Slices(calendar.database).update_users("urn:publicid:IDN+testbed+slice+none", {ALICE: []})
    assert refusal.value.reason == Reason.NOT_FOUND


def test_shut_down_and_release(calendar: Calendar) -> None:
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    slices = Slices(calendar.database)
    assert slices.set_shut_down(SLICE, True).shut_down
    with pytest.raises(PolicyViolation):
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(1), at(2))])
    slices.set_shut_down(SLICE, False)
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(1), at(2))])
