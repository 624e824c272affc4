"""The calendar's generation counter: one row, bumped by every unit of work that writes (caches key on it); indexes
for a slice's leases and a lease's slivers (Status, Describe, Renew and Delete read them on every call).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "calendar_generation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "value": 0}])
    op.create_index("ix_lease_slice_id", "lease", ["slice_id"])
    op.create_index("ix_sliver_lease_id", "sliver", ["lease_id"])


def downgrade() -> None:
    op.drop_index("ix_sliver_lease_id", "sliver")
    op.drop_index("ix_lease_slice_id", "lease")
    op.drop_table("calendar_generation")
