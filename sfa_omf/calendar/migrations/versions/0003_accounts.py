"""Local accounts of federation users: which Unix login a user (or slice) maps to.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_mapping",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("urn", sa.String(300), nullable=False, unique=True),
        sa.Column("login", sa.String(32), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_account_mapping_login", "account_mapping", ["login"])


def downgrade() -> None:
    op.drop_index("ix_account_mapping_login", "account_mapping")
    op.drop_table("account_mapping")
