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

import functools
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
#: How many URNs one UPDATE marks (within SQLite's 999 parameters of old versions).
URNS_PER_UPDATE = 500
#: How many recorded events are read at a time.
EVENTS_PER_BATCH = 5000


def upgrade() -> None:
    connection = op.get_bind()
    authorities = [
        tuple(str(hrn).split("."))
        for (hrn,) in connection.execute(sa.text("SELECT hrn FROM registry_record WHERE type = 'authority'"))
    ]
    if not authorities:  # no registry in this database: nothing tells a removed user from a foreign one
        return
    recorded = {str(urn) for (urn,) in connection.execute(sa.text("SELECT urn FROM registry_record"))}

    @functools.cache  # events name the same few users again and again
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
    # Set-based: one UPDATE per chunk of URNs (lease.owner_urn has no index: one per URN scanned the table each time).
    for table, column in (("lease", "owner_urn"), ("repository_image", "added_by")):
        urns = {str(urn) for (urn,) in connection.execute(sa.text(f"SELECT DISTINCT {column} FROM {table}"))}
        marked = sa.text(
            f"UPDATE {table} SET {column} = substr({column}, 1, :keep) || :mark WHERE {column} IN :urns"
        ).bindparams(sa.bindparam("urns", expanding=True))
        removed_urns = sorted(urn for urn in urns if removed(urn))
        for first in range(0, len(removed_urns), URNS_PER_UPDATE):
            chunk = removed_urns[first : first + URNS_PER_UPDATE]
            connection.execute(marked, {"keep": MAX_CHARS - len(mark), "mark": mark, "urns": chunk})
    # Events in batches, only those whose JSON holds a local authority between a URN's separators (the database's
    # filter: its user URNs are "...IDN+<authority>+user+..." or "...IDN+<authority>:<sub-authority>+user+..."), and
    # their changes written a batch at a time.
    fragments = sorted(
        {
            _like_pattern(json.dumps(f"+{':'.join(parts)}{separator}", ensure_ascii=ascii)[1:-1])
            for parts in authorities
            for separator in ("+", ":")
            for ascii in (True, False)  # non-ASCII escaped as the JSON column writes it, or raw
        }
    )
    naming = " OR ".join(f"CAST(payload AS TEXT) LIKE :fragment{number} ESCAPE '!'" for number in range(len(fragments)))
    batch_query = sa.text(
        "SELECT id, CAST(payload AS TEXT) FROM notify_event "
        f"WHERE slice_urn IS NOT NULL AND id > :after AND ({naming}) ORDER BY id LIMIT :batch"
    )
    rewrite = sa.text("UPDATE notify_event SET payload = :payload WHERE id = :id").bindparams(
        sa.bindparam("payload", type_=sa.JSON)
    )
    patterns = {f"fragment{number}": fragment for number, fragment in enumerate(fragments)}
    after = -1
    while True:
        batch = connection.execute(batch_query, {**patterns, "after": after, "batch": EVENTS_PER_BATCH}).all()
        if not batch:
            break
        after = batch[-1][0]
        changes = []
        for row_id, stored in batch:
            payload = json.loads(stored)
            named = [
                name for name in EVENT_USER_FIELDS if isinstance(payload.get(name), str) and removed(payload[name])
            ]
            if named:
                payload.update({name: payload[name] + mark for name in named})
                changes.append({"payload": payload, "id": row_id})
        if changes:
            connection.execute(rewrite, changes)


def _like_pattern(fragment: str) -> str:
    """A LIKE pattern (ESCAPE '!') matching text that holds ``fragment``, its '%' and '_' taken literally."""
    escaped = fragment.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


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
