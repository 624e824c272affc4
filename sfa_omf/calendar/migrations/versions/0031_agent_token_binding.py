"""A join token's bound host name and its revocation (agent_token.bound_hostname, agent_token.revoked_s): a token made
with `sfa-omf node invite --hostname NAME` enrols that host name only, and only such a token re-binds an enrolled
node to a new key (calendar/agents.py); `sfa-omf node invite-revoke ID` revokes an unused one. Tokens made before are
bound to no host name: they enrol new host names only.

Revision ID: 0031
Revises: 0030
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_token") as table:  # batch: SQLite cannot alter tables in place
        table.add_column(sa.Column("bound_hostname", sa.String(length=200), nullable=True))
        table.add_column(sa.Column("revoked_s", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # The versions before know neither a binding nor a revocation: a revoked token would enrol again, and one made
    # for one host name would enrol any. Both end now, before the columns that say so go.
    op.execute(
        "UPDATE agent_token SET expires_s = CASE WHEN revoked_s IS NOT NULL AND revoked_s < expires_s THEN revoked_s "
        "ELSE expires_s END WHERE used_s IS NULL AND revoked_s IS NOT NULL"
    )
    op.execute(
        "UPDATE agent_token SET expires_s = created_s WHERE used_s IS NULL AND bound_hostname IS NOT NULL "
        "AND revoked_s IS NULL AND created_s < expires_s"
    )
    with op.batch_alter_table("agent_token") as table:
        table.drop_column("revoked_s")
        table.drop_column("bound_hostname")
