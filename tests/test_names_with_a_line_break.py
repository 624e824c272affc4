"""Names checked with a regular expression refuse one ending in a line break: with ``match``, ``$`` also matches
before a final newline, so ``alice\\n`` passed as a Unix login (handed to useradd and written into files), a
container name or a user of a new authority. Each check is called as its callers call it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.errors import BadArgs, GeniError
from sfa_omf.images.lxc import InstanceSpec, LxcHost
from sfa_omf.registry.accounts import check_login
from sfa_omf.registry.authority import AuthorityError
from sfa_omf.registry.bootstrap import init_directory


def test_a_login_ending_in_a_line_break_is_refused() -> None:
    check_login("alice")  # the same name without it is a login
    with pytest.raises(BadArgs, match="not a usable Unix login"):
        check_login("alice\n")


def test_a_new_authority_refuses_a_user_name_ending_in_a_line_break(tmp_path: Path) -> None:
    with pytest.raises(AuthorityError, match="is not usable"):
        init_directory(str(tmp_path / "site"), "lab", ("ann\n",))
    assert not (tmp_path / "site").exists()  # refused before anything is written


def test_a_container_name_ending_in_a_line_break_is_refused_before_lxc_runs(tmp_path: Path) -> None:
    host = LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc"))
    with pytest.raises(GeniError, match="is not valid for LXC"):
        host.create(InstanceSpec(name="c1\n", address="10.217.0.10/24", authorized_keys=()))
    assert not (tmp_path / "lxc").exists()
