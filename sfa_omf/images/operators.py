"""Who may change the image repository: members of the operator group the configuration names
(``[sfa_omf] image_group``), checked on the Unix user running the command. Everybody may list and show."""

from __future__ import annotations

import grp
import os
import pwd

from sfa_omf.errors import GeniError, Reason


def current_login() -> str:
    """The Unix login of the effective user running this process (what ``added_by`` records)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no passwd entry (a container's arbitrary uid): name it by number
        return f"uid{os.geteuid()}"


def is_member(group: str, login: str) -> bool:
    """True when ``login`` belongs to ``group``: its primary group, or listed as a member in the group database."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    try:
        primary = pwd.getpwnam(login).pw_gid
    except KeyError:
        primary = None
    return primary == entry.gr_gid or login in entry.gr_mem


def check_image_operator(group: str, login: str | None = None) -> str:
    """The login (default: the user running the command) if it may change the image store, else FORBIDDEN saying
    what to do. Root is no exception: the group is the one rule (add root to it if root should manage images)."""
    login = login or current_login()
    if not group:
        raise GeniError(
            Reason.INSUFFICIENT_PRIVILEGES,
            "no operator group is configured for the image repository: set [sfa_omf] image_group to the Unix group "
            "whose members may add and remove images",
        )
    try:
        grp.getgrnam(group)
    except KeyError:
        raise GeniError(
            Reason.INSUFFICIENT_PRIVILEGES,
            f"the image operator group {group!r} ([sfa_omf] image_group) does not exist on this host: create it "
            f"(groupadd {group}) and add the operators (usermod -aG {group} LOGIN)",
        ) from None
    if not is_member(group, login):
        raise GeniError(
            Reason.INSUFFICIENT_PRIVILEGES,
            f"{login} may not change the image repository: only members of the Unix group {group!r} "
            f"([sfa_omf] image_group) may; ask an administrator to run: usermod -aG {group} {login}",
        )
    return login
