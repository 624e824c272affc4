"""A URN spelled with other capitals (prefix, type) names the same slice or user, over real TLS.

The credential check compares URNs with the prefix and the type case-insensitively, so the calendar must too: a
slice URN written ``URN:PUBLICID:IDN+testbed+SLICE+demo`` is the demo slice (shut down with it, limited with it),
never a second slice row beside it; a user URN spelled so in geni_users is the same user, login and record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from sfa_omf.calendar.models import Slice
from tests.hostile.harness import ALICE_KEY, GENI_V3, Case, Env, World, ol_request, play, slot, user_urn


def variant(urn: str) -> str:
    """The same URN with its prefix and type in capitals (and the rest as it was)."""
    for kind in ("slice", "sliver", "user"):
        urn = urn.replace(f"+{kind}+", f"+{kind.upper()}+")
    return urn.replace("urn:publicid:IDN+", "URN:PUBLICID:IDN+")


def slice_rows(world: World) -> list[str]:
    with world.aggregate.database.read() as session:
        return sorted(session.scalars(select(Slice.urn)))


@pytest.fixture
def shut_down_demo(world: World) -> Iterator[None]:
    """The demo slice shut down (canonical URN) for the test; reopened and booked again after it."""
    before = world.snapshot(light=True)
    try:
        answer = world.client("v3").Shutdown(world.slice, world.slice_creds, {})
        assert answer["code"]["geni_code"] == 0, answer
        yield
    finally:
        world.repair(before)


def after_shutdown_cases() -> list[Case]:
    """Calls that would book or start the demo slice, naming it in capitals: each is refused as the canonical name
    is. (Shutdown gave every lease back, so Provision finds nothing to provision, as for the canonical URN.)"""

    def allocate(w: World) -> tuple[Any, ...]:
        return (variant(w.slice), w.slice_creds, ol_request(("node3",), slot(8)), {})

    def provision(w: World) -> tuple[Any, ...]:
        return ([variant(w.slice)], w.slice_creds, {"geni_rspec_version": GENI_V3})

    def create_sliver(w: World) -> tuple[Any, ...]:
        return (variant(w.slice), [w.creds["alice_slice"]], ol_request(("node3",), slot(9)), w.alice_users(), {})

    return [
        Case("urn-case", "v3", "Allocate", "capital-slice-urn", allocate, Env(7, "shut down")),
        Case("urn-case", "v3", "Provision", "capital-slice-urn", provision, Env(12, "no allocated slivers")),
        Case("urn-case", "v2", "CreateSliver", "capital-slice-urn", create_sliver, Env(7, "shut down")),
    ]


@pytest.mark.parametrize("case", after_shutdown_cases(), ids=lambda case: case.id)
def test_shut_down_slice_named_in_capitals_is_refused(world: World, shut_down_demo: None, case: Case) -> None:
    play(world, case)  # the answer, nothing written, nothing crashed
    assert slice_rows(world) == [world.slice]


def test_capital_slice_urn_describes_the_same_slice(world: World) -> None:
    answer = world.client("v3").Describe([variant(world.slice)], world.slice_creds, {"geni_rspec_version": GENI_V3})
    assert answer["code"]["geni_code"] == 0, answer
    assert answer["value"]["geni_urn"] == world.slice
    assert sorted(s["geni_sliver_urn"] for s in answer["value"]["geni_slivers"]) == sorted(world.slivers)


def test_capital_user_urn_is_the_same_user(world: World) -> None:
    before = world.snapshot(light=True)
    alice = user_urn("alice")
    login = world.aggregate.accounts.login_for(alice, world.slice)
    try:
        answer = world.client("v3").Allocate(
            world.slice,
            world.slice_creds,
            ol_request(("node2",), slot(7)),
            {"geni_users": [{"urn": variant(alice), "keys": [ALICE_KEY]}]},
        )
        assert answer["code"]["geni_code"] == 0, answer
        users = world.aggregate.slices.get(world.slice).users
        assert [user.user_urn for user in users] == [alice]
        accounts = world.aggregate.local_accounts(world.slice)
        assert [(account.login, account.user_urns) for account in accounts] == [(login, (alice,))]
        assert slice_rows(world) == [world.slice]
    finally:
        world.repair(before)
