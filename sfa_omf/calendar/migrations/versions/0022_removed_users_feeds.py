"""A user removed from the registry keeps no private feed token, notification subscription or stored e-mail address:
whoever registers the name next (the same URN) must not have their leases read through the earlier holder's feed,
nor sent to the earlier holder's address or webhook. The registry's Remove now deletes them; this revision deletes
those of users removed before it: user URNs under one of the local registry's authorities that have no registry
record any more. Other authorities' users are left as they are (nothing here tells they were removed).

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

TABLES = ("feed_token", "notify_subscription", "user_contact")


def upgrade() -> None:
    connection = op.get_bind()
    authorities = [
        tuple(str(hrn).split("."))
        for (hrn,) in connection.execute(sa.text("SELECT hrn FROM registry_record WHERE type = 'authority'"))
    ]
    if not authorities:  # no registry in this database: nothing tells a removed user from a foreign one
        return
    recorded = {str(urn) for (urn,) in connection.execute(sa.text("SELECT urn FROM registry_record"))}
    for table in TABLES:
        urns = {str(urn) for (urn,) in connection.execute(sa.text(f"SELECT DISTINCT user_urn FROM {table}"))}
        for urn in sorted(urns - recorded):
            authority = _user_authority(urn)
            if authority is not None and any(authority[: len(parts)] == parts for parts in authorities):
                connection.execute(sa.text(f"DELETE FROM {table} WHERE user_urn = :urn"), {"urn": urn})


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
    pass  # the rows deleted belonged to nobody who is registered; nothing to put back
