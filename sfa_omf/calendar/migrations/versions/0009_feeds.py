"""The web calendar's iCal feeds: each lease's published revision (SEQUENCE) and the users' private feed tokens.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lease_revision",
        sa.Column("lease_id", sa.String(36), primary_key=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("stamp_s", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "feed_token",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("user_urn", sa.String(300), nullable=False, unique=True),
        sa.Column("created_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feed_token")
    op.drop_table("lease_revision")
