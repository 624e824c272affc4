"""Who may change the image repository: the real group database of this host, for real users."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.operators import check_image_operator, current_login, is_member


def test_the_primary_group_counts_as_membership() -> None:
    me = pwd.getpwuid(os.geteuid())
    primary = grp.getgrgid(me.pw_gid).gr_name
    assert current_login() == me.pw_name
    assert is_member(primary, me.pw_name)
    assert check_image_operator(primary) == me.pw_name


def test_listed_members_count_and_others_do_not() -> None:
    """A group of our own, with nobody listed as a member (gpasswd), removed after. Needs root, as CI runs."""
    if os.geteuid() != 0:
        pytest.fail("creating a Unix group needs root (scripts/test.sh runs as root in CI)")
    group = f"sfa17-test-{os.getpid()}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        subprocess.run(["gpasswd", "-a", "nobody", group], check=True, capture_output=True)
        assert is_member(group, "nobody")
        assert check_image_operator(group, "nobody") == "nobody"
        assert not is_member(group, "root")
        with pytest.raises(GeniError) as refused:
            check_image_operator(group, "root")  # root is no exception
        assert refused.value.code == GeniCode.FORBIDDEN
    finally:
        subprocess.run(["groupdel", group], check=True, capture_output=True)


def test_a_user_outside_the_group_is_refused_with_what_to_do() -> None:
    me = pwd.getpwuid(os.geteuid())
    group = _a_group_without(me)
    with pytest.raises(GeniError) as refused:
        check_image_operator(group)
    assert refused.value.code == GeniCode.FORBIDDEN
    assert f"only members of the Unix group {group!r}" in refused.value.message
    assert f"usermod -aG {group} {me.pw_name}" in refused.value.message


def test_a_group_that_does_not_exist_is_refused() -> None:
    with pytest.raises(GeniError) as refused:
        check_image_operator("sfa-omf-no-such-group-17")
    assert refused.value.code == GeniCode.FORBIDDEN
    assert "does not exist on this host" in refused.value.message
    assert "groupadd sfa-omf-no-such-group-17" in refused.value.message


def test_no_group_configured_is_refused() -> None:
    with pytest.raises(GeniError) as refused:
        check_image_operator("")
    assert refused.value.code == GeniCode.FORBIDDEN
    assert "[sfa_omf] image_group" in refused.value.message


def _a_group_without(user: pwd.struct_passwd) -> str:
    for group in grp.getgrall():
        if group.gr_gid != user.pw_gid and user.pw_name not in group.gr_mem:
            return group.gr_name
    raise AssertionError("every group of this host has the test user as a member")
