"""The local authority's registry records.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_record",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hrn", sa.String(300), nullable=False, unique=True),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("urn", sa.String(300), nullable=False),
        sa.Column("gid", sa.Text(), nullable=False),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("researchers", sa.JSON(), nullable=False),
        sa.Column("created_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registry_record")
