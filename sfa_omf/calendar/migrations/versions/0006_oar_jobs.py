"""The OAR backend's jobs: which OAR advance reservation makes which lease real.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oar_job",
        sa.Column("lease_id", sa.String(36), sa.ForeignKey("lease.id"), primary_key=True),
        sa.Column("job_id", sa.Integer(), nullable=True, index=True),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("updated_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("oar_job")
