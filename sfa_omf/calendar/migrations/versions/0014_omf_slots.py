"""The OMF backend's slot work per lease: what was done on the testbed at the slot's start (image, power on) and end
(power off, keys removed), so a restart neither redoes nor loses it, and the controllers' reason when it failed.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "omf_slot",
        sa.Column("lease_id", sa.String(36), primary_key=True),
        sa.Column("phase", sa.String(20), nullable=False, index=True),
        sa.Column("accounts", sa.JSON(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("omf_slot")
