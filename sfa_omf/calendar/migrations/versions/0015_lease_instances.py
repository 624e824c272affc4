"""Containers inside a booking (sfa_omf/images/instances.py): one row per container a lease asked for, so that a
server restarted mid-lease still knows what to destroy at the slot's end.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lease_instance",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("lease_id", sa.String(36), sa.ForeignKey("lease.id"), nullable=False, index=True),
        sa.Column("sliver_urn", sa.String(300), nullable=False),
        sa.Column("node", sa.String(300), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(100), nullable=False),
        sa.Column("address", sa.String(50), nullable=True, unique=True),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("updated_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lease_instance")
