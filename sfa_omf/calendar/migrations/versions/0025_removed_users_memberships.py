"""A user removed from the registry is no longer a researcher of any slice, a PI of any authority, nor a user of any
of the aggregate's slices: whoever registers the name next (the same HRN and URN) got slice credentials for the
removed user's slices and the authority's credential as a PI from the registry, the removed user's slices in their
private feed, and the removed user's SSH keys in their login at the next Provision. The registry's Remove now strips
them (registry/records.py Records.remove); this revision does the same for users removed before it (as 0022 and
0024). Nothing tells a removed user from a name that was never registered, so it strips every user HRN and URN under
one of the local registry's authorities that names no registry record: a user removed earlier, and also a local name
that was listed (Register or Update ``reg-researchers`` / ``reg-pis``) or sent to the aggregate (a slice user, with
its SSH keys) before it was registered; such a user is added again once registered. A URN is compared by the HRN it
names, as the registry reads it (xrn.py parse_urn: prefix and type in any case), not by its spelling. Other
authorities' users, and names that are registered, are left as they are. No schema change.

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import json
import re
import time

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

#: How many URNs one DELETE names (within SQLite's 999 parameters of old versions).
URNS_PER_DELETE = 500
#: A dot that separates HRN parts (``\.`` is a dot inside a part).
_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")


def upgrade() -> None:
    connection = op.get_bind()
    authorities = [
        _hrn_parts(str(hrn))
        for (hrn,) in connection.execute(sa.text("SELECT hrn FROM registry_record WHERE type = 'authority'"))
    ]
    if not authorities:  # no registry in this database: nothing tells a removed user from a foreign one
        return

    def is_local(authority: tuple[str, ...] | None) -> bool:
        return authority is not None and any(authority[: len(parts)] == parts for parts in authorities)

    recorded = [
        (str(hrn), str(kind)) for hrn, kind in connection.execute(sa.text("SELECT hrn, type FROM registry_record"))
    ]
    recorded_hrns = {hrn for hrn, _ in recorded}
    user_hrns = {hrn for hrn, kind in recorded if kind == "user"}

    def removed_hrn(hrn: object) -> bool:
        """A user HRN of a local authority (or one under it) that names no record: a user removed earlier."""
        return isinstance(hrn, str) and hrn not in recorded_hrns and is_local(_hrn_parts(hrn)[:-1] or None)

    def removed_user(urn: str) -> bool:
        """A user URN of a local authority (or one under it) whose HRN names no user record."""
        parts = _user_hrn_parts(urn)
        return parts is not None and _join_hrn(parts) not in user_hrns and is_local(parts[:-1])

    # Researchers and PIs: the lists of every slice and authority record (as Records.remove strips both).
    now_s = int(time.time())
    holders = connection.execute(
        sa.text(
            "SELECT id, CAST(researchers AS TEXT), CAST(pis AS TEXT) FROM registry_record "
            "WHERE type IN ('slice', 'authority') ORDER BY id"
        )
    ).all()
    changes = []
    for row_id, stored_researchers, stored_pis in holders:
        researchers = json.loads(stored_researchers) if stored_researchers else []
        pis = json.loads(stored_pis) if stored_pis else []
        kept_researchers = [member for member in researchers if not removed_hrn(member)]
        kept_pis = [pi for pi in pis if not removed_hrn(pi)]
        if kept_researchers != researchers or kept_pis != pis:
            changes.append({"id": row_id, "researchers": kept_researchers, "pis": kept_pis, "updated_s": now_s})
    if changes:
        rewrite = sa.text(
            "UPDATE registry_record SET researchers = :researchers, pis = :pis, updated_s = :updated_s WHERE id = :id"
        ).bindparams(sa.bindparam("researchers", type_=sa.JSON), sa.bindparam("pis", type_=sa.JSON))
        connection.execute(rewrite, changes)

    # The aggregate's slices: removed users' memberships, with the SSH keys they sent. A URN names a registered user
    # by the HRN it gives, as the registry reads it (xrn.py parse_urn: its prefix and type in any case), not by its
    # spelling: a user stored as urn:publicid:IDN+tb+USER+bob (before 6555b1c) keeps what tb.bob's URN holds.
    urns = {str(urn) for (urn,) in connection.execute(sa.text("SELECT DISTINCT user_urn FROM slice_user"))}
    removed_urns = sorted(urn for urn in urns if removed_user(urn))
    forget = sa.text("DELETE FROM slice_user WHERE user_urn IN :urns").bindparams(sa.bindparam("urns", expanding=True))
    for first in range(0, len(removed_urns), URNS_PER_DELETE):
        connection.execute(forget, {"urns": removed_urns[first : first + URNS_PER_DELETE]})


def _hrn_parts(hrn: str) -> tuple[str, ...]:
    """An HRN's parts, split at its unescaped dots (``\\.`` unescaped inside a part)."""
    return tuple(part.replace("\\.", ".") for part in _UNESCAPED_DOT.split(hrn))


def _join_hrn(parts: tuple[str, ...]) -> str:
    """An HRN of its parts, a dot inside a part written ``\\.`` (xrn.py join_hrn)."""
    return ".".join(part.replace(".", "\\.") for part in parts)


def _user_hrn_parts(urn: str) -> tuple[str, ...] | None:
    """The HRN's parts (the authority's, then the name) of ``urn:publicid:IDN+<authority>+user+<name>``, read as
    xrn.py parse_urn reads a URN: prefix and type in any case, the name whatever follows the type; None for anything
    else (another type, an empty authority part or name)."""
    prefix = "urn:publicid:idn+"
    if not urn.lower().startswith(prefix):
        return None
    fields = urn[len(prefix) :].split("+", 2)
    if len(fields) != 3 or fields[1].lower() != "user" or not fields[2]:
        return None
    authority = tuple(fields[0].split(":"))
    if not all(authority):
        return None
    return (*authority, fields[2])


def downgrade() -> None:
    pass  # the names and rows removed belonged to nobody who is registered; nothing to put back
