"""Registry records: a slice's expiry and an authority's PIs.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry_record") as table:  # batch: SQLite cannot alter columns in place
        table.add_column(sa.Column("expires_s", sa.BigInteger(), nullable=True))
        table.add_column(sa.Column("pis", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("registry_record") as table:
        table.drop_column("pis")
        table.drop_column("expires_s")
