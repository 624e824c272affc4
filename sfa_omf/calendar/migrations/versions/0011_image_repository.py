"""The image repository (sfa_omf/images): one row per disk image in the data directory's image store.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repository_image",
        sa.Column("label", sa.String(100), primary_key=True),
        sa.Column("file_name", sa.String(100), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("os", sa.String(100), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("hardware_types", sa.JSON(), nullable=False),
        sa.Column("added_by", sa.String(300), nullable=False),
        sa.Column("added_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("repository_image")
