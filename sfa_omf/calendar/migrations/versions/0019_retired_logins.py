"""Local accounts: the logins of users (and slices) removed from the registry (table retired_login). Such a login is
never given to anyone else: whoever registers the name next gets a login derived for them (registry/accounts.py).

Names removed before this revision left their mapping behind: a derived (not pinned) mapping of a user or slice URN
under one of the local registry's authorities that has no registry record any more is retired here, as the
registry's Remove now does. Mappings of other authorities' users and pinned ones are left as they are.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retired_login",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("urn", sa.String(300), nullable=False),
        sa.Column("login", sa.String(32), nullable=False),
        sa.Column("retired_s", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_retired_login_urn", "retired_login", ["urn"])
    op.create_index("ix_retired_login_login", "retired_login", ["login"])
    _retire_names_removed_before()


def _retire_names_removed_before() -> None:
    connection = op.get_bind()
    authorities = [
        tuple(str(hrn).split("."))
        for (hrn,) in connection.execute(sa.text("SELECT hrn FROM registry_record WHERE type = 'authority'"))
    ]
    if not authorities:  # no registry in this database: nothing tells a removed name from a foreign one
        return
    recorded = {str(urn) for (urn,) in connection.execute(sa.text("SELECT urn FROM registry_record"))}
    mappings = connection.execute(sa.text("SELECT id, urn, login FROM account_mapping WHERE NOT pinned")).all()
    now_s = int(time.time())
    for mapping_id, urn, login in mappings:
        named = _authority_and_type(str(urn))
        if named is None or urn in recorded:
            continue
        authority, kind = named
        if kind in ("user", "slice") and any(authority[: len(parts)] == parts for parts in authorities):
            connection.execute(
                sa.text("INSERT INTO retired_login (urn, login, retired_s) VALUES (:urn, :login, :now)"),
                {"urn": urn, "login": login, "now": now_s},
            )
            connection.execute(sa.text("DELETE FROM account_mapping WHERE id = :id"), {"id": mapping_id})


def _authority_and_type(urn: str) -> tuple[tuple[str, ...], str] | None:
    """The authority's parts (as in its HRN) and the type of ``urn:publicid:IDN+<authority>+<type>+<name>``; None for
    anything else (a mapping of the shared policy, say)."""
    prefix = "urn:publicid:idn+"
    if not urn.lower().startswith(prefix):
        return None
    fields = urn[len(prefix) :].split("+")
    if len(fields) != 3:
        return None
    return tuple(fields[0].split(":")), fields[1].lower()


def downgrade() -> None:
    # An older sfa-omf knows nothing of retired logins: it would give a removed user's login to the next holder of
    # the name again (the defect this revision fixes).
    op.drop_index("ix_retired_login_login", "retired_login")
    op.drop_index("ix_retired_login_urn", "retired_login")
    op.drop_table("retired_login")
