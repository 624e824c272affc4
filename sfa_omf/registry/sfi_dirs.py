"""Where the registry keeps the sfi.py directory (key pair, GID, sfi_config) of a user it made a key pair for, and
how it is deleted with the user's record, whichever way the user is removed (``sfa-omf user remove`` or the
registry's Remove)."""

from __future__ import annotations

import contextlib
import os
import shutil

from sfa_omf.xrn import join_hrn, split_hrn


def user_sfi_dir(authority_directory: str, authority_hrn: str, hrn: str) -> str:
    """DIR/users/NAME/sfi for a user directly under the authority (testbed.alice: users/alice/sfi, as ``init`` makes
    for the demo users), and DIR/users/HRN/sfi, the whole HRN, for one further down (testbed.x.erin:
    users/testbed.x.erin/sfi). Two users never share one: a name as written in an HRN holds no unescaped dot, a
    deeper HRN always does."""
    parts = split_hrn(hrn)
    direct = parts[:-1] == split_hrn(authority_hrn)
    return os.path.join(authority_directory, "users", join_hrn(parts[-1:]) if direct else hrn, "sfi")


def delete_user_sfi_dirs(authority_directory: str, authority_hrn: str, hrn: str) -> list[str]:
    """Delete the sfi.py directories the registry wrote for user ``hrn`` (where it writes them now, and
    DIR/users/<last part>/sfi, where it wrote them before whole-HRN names), each only if it holds that user's key;
    the directories deleted."""
    legacy = os.path.join(authority_directory, "users", split_hrn(hrn)[-1], "sfi")
    deleted = []
    for directory in dict.fromkeys([user_sfi_dir(authority_directory, authority_hrn, hrn), legacy]):
        if os.path.exists(os.path.join(directory, f"{hrn}.pkey")):
            delete_sfi_dir(directory)
            deleted.append(directory)
    return deleted


def delete_sfi_dir(sfi_dir: str) -> None:
    """Delete a user's sfi.py directory (DIR/users/NAME/sfi), and DIR/users/NAME when nothing else is in it."""
    shutil.rmtree(sfi_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty (the operator keeps something there), or gone already
        os.rmdir(os.path.dirname(sfi_dir))
