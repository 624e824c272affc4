"""A user removed from the registry no longer owns what the calendar recorded of them: the leases they booked,
the images they saved and the recorded events naming them as recipients. These name the user's URN, which whoever
registers the name next holds too: the next holder saw the leases as their own (private feed, /calendar/me, the web
calendar), was told of them, was charged for them in the per-user limit and could use the private images. The
registry's Remove now puts "URN (removed TIME)" there (registry/records.py removed_holder); this revision does the same
for users removed before it: user URNs under one of the local registry's authorities that have no registry record
any more (as 0022). Other authorities' users are left as they are. No schema change.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

#: What the columns hold (lease.owner_urn, repository_image.added_by).
MAX_CHARS = 300
#: The payload fields of a recorded event that name a user it goes to.
EVENT_USER_FIELDS = ("caller", "owner")


def upgrade() -> None:
    connection = op.get_bind()
    authorities = [
        tuple(str(hrn).split("."))
        for (hrn,) in connection.execute(sa.text("SELECT hrn FROM registry_record WHERE type = 'authority'"))
    ]
    if not authorities:  # no registry in this database: nothing tells a removed user from a foreign one
        return
    recorded = {str(urn) for (urn,) in connection.execute(sa.text("SELECT urn FROM registry_record"))}

    def removed(urn: str) -> bool:
        authority = _user_authority(urn)
        return (
            urn not in recorded
            and " " not in urn  # a URN holds no space: already marked (by a Remove of the new code)
            and authority is not None
            and any(authority[: len(parts)] == parts for parts in authorities)
        )

    # When they were removed is not known: before now.
    mark = f" (removed before {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ})"
    for table, column in (("lease", "owner_urn"), ("repository_image", "added_by")):
        urns = {str(urn) for (urn,) in connection.execute(sa.text(f"SELECT DISTINCT {column} FROM {table}"))}
        for urn in sorted(urn for urn in urns if removed(urn)):
            connection.execute(
                sa.text(f"UPDATE {table} SET {column} = :holder WHERE {column} = :urn"),
                {"holder": urn[: MAX_CHARS - len(mark)] + mark, "urn": urn},
            )
    events = connection.execute(sa.text("SELECT id, payload FROM notify_event WHERE slice_urn IS NOT NULL")).all()
    for row_id, stored in events:
        payload = json.loads(stored) if isinstance(stored, str) else dict(stored)
        named = [name for name in EVENT_USER_FIELDS if isinstance(payload.get(name), str) and removed(payload[name])]
        if named:
            payload.update({name: payload[name] + mark for name in named})
            connection.execute(
                sa.text("UPDATE notify_event SET payload = :payload WHERE id = :id").bindparams(
                    sa.bindparam("payload", type_=sa.JSON)
                ),
                {"payload": payload, "id": row_id},
            )


def _user_authority(urn: str) -> tuple[str, ...] | None:
    """The authority's parts (as in its HRN) of ``urn:publicid:IDN+<authority>+user+<name>``; None for anything else."""
    prefix = "urn:publicid:idn+"
    if not urn.lower().startswith(prefix):
        return None
    fields = urn[len(prefix) :].split("+")
    if len(fields) != 3 or fields[1].lower() != "user":
        return None
    return tuple(fields[0].split(":"))


def downgrade() -> None:
    pass  # the rows changed name nobody who is registered; the URNs are still in them, before the mark
