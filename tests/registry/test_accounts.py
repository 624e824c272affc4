"""Federation users to local Unix logins: valid, at most 32 characters, stable, collision-free; the policies; pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.errors import BadArgs
from sfa_omf.registry.accounts import Accounts, derived_login

VALID = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ALICE_ONELAB = "urn:publicid:IDN+onelab:inria+user+alice"
ALICE_GCF = "urn:publicid:IDN+geni:gpo:gcf+user+alice"
SLICE = "urn:publicid:IDN+onelab:inria+slice+myslice"


@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789.-_@é ", min_size=1, max_size=80).filter(
        lambda name: "+" not in name and name.strip()
    )
)
def test_derived_logins_are_valid_and_stable(name: str) -> None:
    urn = f"urn:publicid:IDN+some:where+user+{name}"
    login = derived_login(urn)
    assert VALID.match(login), login
    assert derived_login(urn) == login


def test_look_alike_names_differ() -> None:
    assert derived_login(ALICE_ONELAB).startswith("alice_")
    assert derived_login(ALICE_ONELAB) != derived_login(ALICE_GCF)


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(sqlite_url(str(tmp_path / "a.sqlite")))
    db.upgrade()
    return db


def test_policies(database: Database) -> None:
    per_user = Accounts(database)
    assert per_user.login_for(ALICE_ONELAB, SLICE) == derived_login(ALICE_ONELAB)
    assert per_user.login_for(ALICE_ONELAB, "urn:publicid:IDN+x+slice+y") == derived_login(ALICE_ONELAB)
    assert Accounts(database, "per-slice").login_for(ALICE_ONELAB, SLICE) == derived_login(SLICE)
    assert Accounts(database, "shared", "guests").login_for(ALICE_GCF, SLICE) == "guests"
    with pytest.raises(BadArgs):
        Accounts(database, "per-planet")


def test_collisions_grow_the_tag(database: Database) -> None:
    accounts = Accounts(database)
    accounts.pin("urn:publicid:IDN+other+user+squatter", derived_login(ALICE_ONELAB))
    login = accounts.login_for(ALICE_ONELAB, SLICE)
    assert login != derived_login(ALICE_ONELAB) and login == derived_login(ALICE_ONELAB, 7)
    assert accounts.login_for(ALICE_ONELAB, SLICE) == login, "stable once stored"


def test_pins_win_and_are_checked(database: Database) -> None:
    accounts = Accounts(database)
    accounts.login_for(ALICE_ONELAB, SLICE)
    accounts.pin(ALICE_ONELAB, "alice")
    assert accounts.login_for(ALICE_ONELAB, SLICE) == "alice"
    assert [(r.login, r.pinned) for r in accounts.list()] == [("alice", True)]
    with pytest.raises(BadArgs):
        accounts.pin(ALICE_GCF, "Root Account")
    with pytest.raises(BadArgs):
        accounts.pin("not-a-urn", "bob")
