"""The image repository (sfa_omf/images): one row per disk image in the data directory's image store.

Numbered 0009 because 0007 and 0008 may be taken by other branches; when they land, set down_revision to the newest.

Revision ID: 0009
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0006"
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
